"""Caption stage: an image-capable chat model describes the reference image (optionally N sampled captions)."""

from __future__ import annotations

import time

from agent_cir.backends import ChatModelHandle, invoke
from agent_cir.backends.errors import ImageInputError
from agent_cir.cache import ModelCache
from agent_cir.config import CaptionConfig
from agent_cir.errors import AgentCirError
from agent_cir.hashing import content_hash
from agent_cir.parsing import parse_caption, worst_status
from agent_cir.prompts import load_prompt
from agent_cir.trace.outputs import CaptionOutput
from agent_cir.types import QueryState, StageRecord


class CaptionStage:
    """Fills ``state.captions``. A caption supplied with the query wins: no model call is made."""

    name = "caption"

    def __init__(self, config: CaptionConfig, model: ChatModelHandle, cache: ModelCache | None = None) -> None:
        self.config = config
        self.model = model
        self.cache = cache
        self.prompt = load_prompt(config.prompt)

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        query = state.query
        record = StageRecord(stage=self.name)
        if query.reference_caption:
            state.captions = [query.reference_caption.strip()]
            record.skipped = "reference caption supplied with the query"
            record.output = CaptionOutput(captions=list(state.captions))
            record.seconds = time.perf_counter() - started
            return record
        if not query.image:
            record.skipped = "no reference image and no reference caption"
            record.notes.append("retrieval will use the modification text without a caption")
            record.output = CaptionOutput(captions=list(state.captions))
            record.seconds = time.perf_counter() - started
            return record
        try:
            if state.image_hash is None:
                state.image_hash = content_hash(query.image)
        except OSError as err:
            raise ImageInputError(
                f"query {query.id}: reference image {query.image} cannot be read ({err.strerror or err})"
            ) from err

        num = self.config.num_captions
        # One caption: the model's own temperature. Several: sample them (each with its own seed and cache key).
        temperature = self.config.temperature if num > 1 else None
        messages = self.prompt.render_messages(modification=query.text)
        captions: list[str] = []
        for index in range(num):
            try:
                call = invoke(
                    self.model,
                    messages,
                    prompt=self.prompt,
                    images=[query.image],
                    cache=self.cache,
                    temperature=temperature,
                    n_sample_index=index,
                )
            except AgentCirError as err:
                raise type(err)(f"query {query.id}, caption stage: {err}") from err
            caption, status = parse_caption(call.raw)
            call.parse_status = status  # type: ignore[assignment]
            record.calls.append(call)
            if caption:
                captions.append(caption)
            else:
                record.notes.append(f"caption {index + 1}: the model returned no usable text ({call.raw[:80]!r})")
        unique = list(dict.fromkeys(captions))
        if len(unique) < len(captions):
            record.notes.append(f"{len(captions) - len(unique)} duplicate caption(s) dropped")
        state.captions = unique
        record.parse_status = worst_status([c.parse_status for c in record.calls]) if unique else "fallback"  # type: ignore[assignment]
        if not unique:
            record.notes.append("no caption: retrieval will use the modification text alone")
        record.output = CaptionOutput(captions=list(unique))
        record.seconds = time.perf_counter() - started
        return record
