"""One-stage mode (the OSrCIR idea): an MLLM reads the reference image and the modification directly and
reasons its way to the target description(s), with no separate caption step."""

from __future__ import annotations

import time

from agent_cir.backends import ChatModelHandle, invoke
from agent_cir.backends.errors import ImageInputError
from agent_cir.cache import ModelCache
from agent_cir.config import OneStageConfig
from agent_cir.errors import AgentCirError
from agent_cir.hashing import content_hash
from agent_cir.parsing import answer_schema, parse_target_descriptions, template_wants_list
from agent_cir.prompts import load_prompt
from agent_cir.trace.outputs import OneStageOutput
from agent_cir.types import QueryState, StageRecord


class OneStageStage:
    """Fills ``state.reasoning``, ``state.target_descriptions``, ``state.description_source`` and, when the model
    describes the reference image too, ``state.reference_description`` (the pipeline hands it on as the caption
    when no caption exists, so that PDV fusion and the judge have one)."""

    name = "one_stage"

    def __init__(self, config: OneStageConfig, model: ChatModelHandle, cache: ModelCache | None = None) -> None:
        self.config = config
        self.model = model
        self.cache = cache
        self.prompt = load_prompt(config.prompt)
        wants_list = config.num_descriptions > 1 or template_wants_list(self.prompt.source)
        self.schema = answer_schema(2 if wants_list else 1, one_stage=True) if config.structured_output else None

    def _fallback(self, state: QueryState, record: StageRecord, reason: str) -> None:
        # As OSrCIR's reference code does: without a usable answer the modification text is the query.
        modification = state.query.text.strip()
        state.target_descriptions = [modification] if modification else []
        state.description_source = "fallback"
        record.parse_status = "fallback"
        record.notes.append(f"{reason}; fell back to the modification text alone")

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        query = state.query
        record = StageRecord(stage=self.name)
        if not query.image:
            record.skipped = "no reference image: the one-stage model has nothing to look at"
            self._fallback(state, record, "no reference image")
        else:
            try:
                if state.image_hash is None:
                    state.image_hash = content_hash(query.image)
            except OSError as err:
                raise ImageInputError(
                    f"query {query.id}: reference image {query.image} cannot be read ({err.strerror or err})"
                ) from err
            messages = self.prompt.render_messages(
                modification=query.text,
                num_descriptions=self.config.num_descriptions,
                caption=query.reference_caption or "",
                captions=[query.reference_caption] if query.reference_caption else [],
            )
            try:
                call = invoke(
                    self.model, messages, prompt=self.prompt, images=[query.image], cache=self.cache, schema=self.schema
                )
            except AgentCirError as err:
                raise type(err)(f"query {query.id}, one_stage: {err}") from err
            parsed = parse_target_descriptions(call.raw, expected=self.config.num_descriptions)
            call.parse_status = parsed.status  # type: ignore[assignment]
            record.calls.append(call)
            if parsed.note:
                record.notes.append(parsed.note)
            if parsed.status == "fallback":
                record.notes.append(f"could not read a target description from: {call.raw[:160]!r}")
                self._fallback(state, record, "unusable answer")
            else:
                state.target_descriptions = parsed.descriptions
                state.description_source = "one_stage"
                state.reasoning = parsed.reasoning
                record.parse_status = parsed.status  # type: ignore[assignment]
                reference = parsed.fields.get("reference_description")
                state.reference_description = str(reference).strip() if reference else None
        record.output = OneStageOutput(
            target_descriptions=list(state.target_descriptions),
            reasoning=state.reasoning,
            reference_description=state.reference_description,
            description_source=state.description_source,
        )
        record.seconds = time.perf_counter() - started
        return record
