"""``ChatModelHandle``: a chat model plus what the pipeline needs to call, cache and trace it (its capabilities
from the registry, its concurrency slot, its sampling parameters and sampling copies)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel

from agent_cir.backends.capabilities import UNKNOWN_BACKEND, BackendCapabilities
from agent_cir.backends.registry import CHAT_BACKENDS
from agent_cir.config import ModelConfig


@dataclass
class ChatModelHandle:
    """A chat model plus what the pipeline needs to call, cache and trace it."""

    chat: BaseChatModel
    backend: str
    model: str
    """Model id for traces and cache keys (``gpt-4o-mini``, a local path, ``fake``)."""
    config: ModelConfig
    supports_structured_output: bool
    retry_attempts: int = 0
    """Extra attempts ``invoke`` adds with ``.with_retry`` (0 where the client retries by itself)."""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """What else decides the answers (endpoint, GGUF file, quantization): part of cache keys."""
    structured_disabled: bool = False
    """Set after the backend rejected structured output once; later calls go straight to plain text."""
    _semaphore: threading.BoundedSemaphore = field(init=False, repr=False)
    _variants: dict[tuple[Any, ...], BaseChatModel] = field(init=False, repr=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._semaphore = threading.BoundedSemaphore(self.config.max_concurrency)

    @property
    def id(self) -> str:
        return f"{self.backend}:{self.model}"

    @property
    def capabilities(self) -> BackendCapabilities:
        """What this model's backend can do (``CHAT_BACKENDS``; an unknown injected model: ``UNKNOWN_BACKEND``)."""
        entry = CHAT_BACKENDS.get(self.backend)
        return entry.capabilities if entry is not None else UNKNOWN_BACKEND

    @property
    def failure_advice(self) -> str | None:
        """What to check when a call fails, from the backend registry (None: a server's advice)."""
        entry = CHAT_BACKENDS.get(self.backend)
        return entry.failure_advice if entry is not None else None

    @property
    def batches_natively(self) -> bool:
        """True for in-process models (hf:, hf-vlm:), whose ``chat.batch(inputs)`` is one padded generate per
        ``config.batch_size`` inputs; servers answer ``chat.batch(inputs, config={"max_concurrency": ...})``
        with concurrent requests instead."""
        return self.capabilities.batched_generation

    @property
    def slot(self) -> threading.BoundedSemaphore:
        """Held while a call runs: at most ``max_concurrency`` calls at once for this model."""
        return self._semaphore

    def sampling_params(self, temperature: float | None = None, sample_index: int = 0) -> dict[str, Any]:
        """The parameters that decide an answer; a distinct seed per sample so that N samples differ."""
        seed = self.config.seed
        if seed is not None and sample_index:
            seed = seed + sample_index
        return {
            "temperature": self.config.temperature if temperature is None else float(temperature),
            "top_p": self.config.top_p,
            "max_tokens": self.config.max_tokens,
            "seed": seed,
            "sample_index": sample_index,
        }

    def variant(self, temperature: float, seed: int | None) -> BaseChatModel:
        """The chat model with another temperature/seed (a shallow copy; clients and weights are shared)."""
        update: dict[str, Any] = {}
        fields = type(self.chat).model_fields
        if "temperature" in fields and getattr(self.chat, "temperature", None) != temperature:
            update["temperature"] = temperature
        if "seed" in fields and getattr(self.chat, "seed", None) != seed:
            update["seed"] = seed
        if not update:
            return self.chat
        key = tuple(sorted(update.items()))
        with self._lock:
            if key not in self._variants:
                self._variants[key] = self.chat.model_copy(update=update)
            return self._variants[key]
