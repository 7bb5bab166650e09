"""Rewrite stage: a text LLM turns caption + modification into target description(s), reasoning first.

An answer no parser can read falls back to the modification text alone (description_source ``fallback``), as
the CIReVL and OSrCIR reference code do.

Templates (``prompts/rewrite_*.j2``) receive ``caption`` (the caption this call rewrites), ``captions`` (all of
them), ``modification`` and ``num_descriptions``. With several captions (an ensemble) each caption is
rewritten by its own call (``per_caption``), and retrieval gets every resulting description.
"""

from __future__ import annotations

import time

from agent_cir.backends import ChatModelHandle, invoke
from agent_cir.cache import ModelCache
from agent_cir.config import RewriteConfig
from agent_cir.errors import AgentCirError
from agent_cir.parsing import answer_schema, parse_target_descriptions, template_wants_list
from agent_cir.prompts import load_prompt
from agent_cir.trace.outputs import RewriteOutput
from agent_cir.types import ModelCall, QueryState, StageRecord


class RewriteStage:
    """Fills ``state.reasoning``, ``state.target_descriptions`` and ``state.description_source``."""

    name = "rewrite"

    def __init__(self, config: RewriteConfig, model: ChatModelHandle, cache: ModelCache | None = None) -> None:
        self.config = config
        self.model = model
        self.cache = cache
        self.prompt = load_prompt(config.prompt)
        wants_list = config.num_descriptions > 1 or template_wants_list(self.prompt.source)
        self.schema = answer_schema(2 if wants_list else 1) if config.structured_output else None

    def _call(self, state: QueryState, caption: str, captions: list[str]) -> ModelCall:
        messages = self.prompt.render_messages(
            caption=caption,
            captions=captions,
            modification=state.query.text,
            num_descriptions=self.config.num_descriptions,
        )
        try:
            return invoke(self.model, messages, prompt=self.prompt, cache=self.cache, schema=self.schema)
        except AgentCirError as err:
            raise type(err)(f"query {state.query.id}, rewrite stage: {err}") from err

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name)
        captions = list(state.captions)
        if not captions:
            record.notes.append("no caption: the rewrite sees the modification text only")
        groups = captions if (self.config.per_caption and len(captions) > 1) else [captions[0] if captions else ""]

        descriptions: list[str] = []
        reasonings: list[str] = []
        statuses: list[str] = []
        for caption in groups:
            call = self._call(state, caption, captions)
            parsed = parse_target_descriptions(call.raw, expected=self.config.num_descriptions)
            call.parse_status = parsed.status  # type: ignore[assignment]
            record.calls.append(call)
            statuses.append(parsed.status)
            if parsed.note:
                record.notes.append(parsed.note)
            if parsed.status == "fallback":
                record.notes.append(f"could not read a target description from: {call.raw[:160]!r}")
                continue
            descriptions.extend(parsed.descriptions)
            if parsed.reasoning:
                reasonings.append(parsed.reasoning)

        descriptions = list(dict.fromkeys(descriptions))
        if descriptions:
            state.target_descriptions = descriptions
            state.description_source = "rewrite"
            if "fallback" in statuses:
                record.parse_status = "repaired"
                record.notes.append(f"{statuses.count('fallback')} of {len(statuses)} rewrite answers were unusable")
            else:
                record.parse_status = "repaired" if "repaired" in statuses else "ok"
        else:
            # As CIReVL and OSrCIR do: an unreadable rewrite leaves the modification text as the query
            # (ImageScope: the reference caption, config.fallback).
            use_caption = self.config.fallback == "reference_caption" and bool(captions and captions[0].strip())
            fallback_text = captions[0].strip() if use_caption else state.query.text.strip()
            state.target_descriptions = [fallback_text] if fallback_text else []
            state.description_source = "fallback"
            record.parse_status = "fallback"
            what = "the reference caption" if use_caption else "the modification text alone"
            record.notes.append(f"fell back to {what} as the target description")
        state.reasoning = "\n\n".join(reasonings) if reasonings else None
        record.output = RewriteOutput(
            target_descriptions=list(state.target_descriptions),
            reasoning=state.reasoning,
            description_source=state.description_source,
        )
        record.seconds = time.perf_counter() - started
        return record
