"""Fake chat models: a ``fake:`` handle answering scripted responses (for tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_cir.backends import ChatModelHandle, create_chat_model
from agent_cir.config import ModelConfig


def fake_model(responses: list[str] | None = None, respond: Callable[..., str] | None = None,
               name: str = "fake", **config: Any) -> ChatModelHandle:
    """A ``fake:`` handle answering ``responses`` in order (cycling) or ``respond(messages)``."""
    extra: dict[str, Any] = {"respond": respond} if respond is not None else {"responses": list(responses or [])}
    return create_chat_model(ModelConfig(spec=f"fake:{name}", extra=extra, **config))
