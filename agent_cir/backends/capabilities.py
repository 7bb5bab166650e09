"""The vocabulary of the backend registry: what a backend can do (``BackendCapabilities``), what its factory
builds (``BuiltChatModel``) and one registry entry (``ChatBackend``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel

from agent_cir.config import ModelConfig


@dataclass(frozen=True)
class BackendCapabilities:
    """What a chat backend can do, declared once in ``CHAT_BACKENDS``; callers ask these instead of the spec prefix."""

    images: bool
    """Takes images in its messages (a text-only local LLM does not)."""
    structured_output: bool
    """Answers a JSON schema through LangChain's ``with_structured_output``."""
    logprobs: bool
    """Its answers can carry ``top_logprobs`` (the OpenAI chat-completions shape)."""
    next_token_logits: bool
    """In-process model whose next-token logits can be read (P(yes) for pointwise judging and verifying)."""
    batched_generation: bool
    """``chat.batch(inputs)`` is one padded ``generate`` per ``batch_size`` inputs (in-process models); otherwise
    a batch is concurrent requests."""
    remote: bool
    """Calls go to a server: ``timeout`` and the wall-clock call deadline apply."""
    invoke_retries: bool
    """``invoke`` adds ``max_retries`` retries (LangChain ``.with_retry``). False where the client retries by itself
    (ChatOpenAI ``max_retries``) or a retry could only repeat the answer (in-process and scripted models)."""


UNKNOWN_BACKEND = BackendCapabilities(images=True, structured_output=False, logprobs=False, next_token_logits=False,
                                      batched_generation=False, remote=False, invoke_retries=True)
"""An injected LangChain chat model of a kind not in ``CHAT_BACKENDS``: assume nothing beyond plain calls."""



@dataclass
class BuiltChatModel:
    """What a backend's factory returns; ``create_chat_model`` wraps it in a ``ChatModelHandle`` with the
    backend's declared capabilities (structured output, retries)."""

    chat: BaseChatModel
    model: str
    """Model id for traces and cache keys (``gpt-4o-mini``, a local path, ``fake``)."""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """What else decides the answers (endpoint, GGUF file, quantization): part of cache keys."""


@dataclass(frozen=True)
class ChatBackend:
    """One entry of the backend registry: how to build the chat model, and what the backend can do."""

    factory: Callable[[ModelConfig, str], BuiltChatModel]
    capabilities: BackendCapabilities
    failure_advice: str | None = None
    """What to check when a call fails (None: the server advice, with the retries)."""
