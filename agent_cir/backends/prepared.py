"""What a call needs before it reaches the model (encoded images, their hashes, the cache key), the cache lookup,
and the ``ModelCall`` record it leaves. Shared by chat answers (``invoke``) and backend-side scoring
(logit_scoring, the yes/no judge)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Sequence

from langchain_core.messages import BaseMessage

from agent_cir.backends.credentials import redact_url
from agent_cir.backends.handle import ChatModelHandle
from agent_cir.backends.messages import data_url, image_bytes, to_langchain_messages
from agent_cir.cache import ModelCache
from agent_cir.hashing import bytes_hash
from agent_cir.prompts import PromptTemplate
from agent_cir.types import ModelCall


def _render_prompt_text(messages: Sequence[tuple[str, str]]) -> str:
    return "\n\n".join(f"[{role}]\n{body}" for role, body in messages)


def _key_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    # Unchanged for ordinary fingerprints (so existing cache entries stay valid); credentials in a URL go.
    return {k: redact_url(v) if isinstance(v, str) and "://" in v else v for k, v in fingerprint.items()}



MAX_RAW_ANSWER_CHARS = 65_536
"""Longest model answer kept (the trace, the parsers and the report see at most this). Real answers are a
few KB; a server that streams megabytes of garbage must not turn into a trace line of that size."""


def cap_raw_answer(raw: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``raw`` cut to :data:`MAX_RAW_ANSWER_CHARS`, with ``params.raw_truncated`` recording the cut."""
    if not isinstance(raw, str) or len(raw) <= MAX_RAW_ANSWER_CHARS:
        return raw, params
    note = {"original_chars": len(raw), "kept_chars": MAX_RAW_ANSWER_CHARS}
    return raw[:MAX_RAW_ANSWER_CHARS], {**params, "raw_truncated": note}


@dataclass
class PreparedCall:
    """What a call needs before it reaches the model: encoded images, their hashes, the cache key."""

    handle: ChatModelHandle
    prompt: PromptTemplate
    messages: list[tuple[str, str]]
    encoded: list[tuple[bytes, str]]
    image_hashes: list[str]
    prompt_text: str
    key: str | None
    started: float
    miss_status: str = "miss"
    """How a call the store could not answer is traced (eval/answers.RunAnswers, a run's own store: "off")."""
    image_labels: list[str] | None = None

    def langchain_messages(self) -> list[BaseMessage]:
        return to_langchain_messages(self.messages, [data_url(data, mime) for data, mime in self.encoded],
                                     self.image_labels)

    def record(self, raw: str, cache: str, usage: dict[str, Any] | None, params: dict[str, Any]) -> ModelCall:
        cache = self.miss_status if cache == "miss" else cache
        raw, params = cap_raw_answer(raw, params)
        return ModelCall(
            backend=self.handle.backend,
            model=self.handle.model,
            prompt_name=self.prompt.name,
            prompt_hash=self.prompt.hash,
            raw=raw,
            cache=cache,  # type: ignore[arg-type]
            seconds=round(time.perf_counter() - self.started, 6),
            usage=usage,
            prompt=self.prompt_text,
            images=self.image_hashes,
            params=params,
        )


def prepare_call(
    handle: ChatModelHandle,
    messages: list[tuple[str, str]],
    *,
    prompt: PromptTemplate,
    images: Sequence[Any],
    cache: ModelCache | None,
    key_parts: dict[str, Any],
    image_labels: Sequence[str] | None = None,
) -> PreparedCall:
    started = time.perf_counter()
    if image_labels is not None:
        if len(image_labels) != len(images):
            raise ValueError(f"{len(image_labels)} image labels for {len(images)} images")
        key_parts = {**key_parts, "image_labels": list(image_labels)}
    encoded = [image_bytes(image) for image in images]
    image_hashes = [bytes_hash(data) for data, _ in encoded]
    key = None
    if cache is not None:
        key = cache.make_key(
            backend=handle.backend,
            model=handle.model,
            fingerprint=_key_fingerprint(handle.fingerprint),
            prompt_hash=prompt.hash,
            messages=[list(m) for m in messages],
            images=image_hashes,
            **key_parts,
        )
    return PreparedCall(handle, prompt, list(messages), encoded, image_hashes, _render_prompt_text(messages), key,
                        started, getattr(cache, "miss_status", "miss"),
                        list(image_labels) if image_labels is not None else None)


def lookup_cached(
    prepared: PreparedCall, cache: ModelCache | None, validate: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any] | None, str | None]:
    """(the cached value or None, a note when a damaged value was found: it counts as a miss)."""
    if cache is None or prepared.key is None:
        return None, None
    value, status = cache.lookup(prepared.key, validate)
    if status == "damaged":
        return None, "damaged cache entry (unreadable or wrong shape) ignored and replaced"
    return value, None
