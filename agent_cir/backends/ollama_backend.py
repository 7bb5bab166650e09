"""The ``ollama:`` backend: ChatOllama (``pip install 'agent-cir[ollama]'``)."""

from __future__ import annotations

from typing import Any

from agent_cir.backends.capabilities import BuiltChatModel
from agent_cir.backends.errors import BackendError
from agent_cir.backends.rate_limit import rate_limiter
from agent_cir.config import ModelConfig


def create_ollama(config: ModelConfig, model: str) -> BuiltChatModel:
    try:
        from langchain_ollama import ChatOllama
    except ImportError as err:
        raise BackendError(f"{config.spec} needs langchain-ollama: pip install 'agent-cir[ollama]'") from err
    kwargs: dict[str, Any] = {
        "model": model,
        "temperature": config.temperature,
        "num_predict": config.max_tokens,
        "client_kwargs": {"timeout": config.timeout},
        "rate_limiter": rate_limiter(config),
    }
    if isinstance(config.base_url, list):
        raise BackendError(
            f"{config.spec}: base_url lists several servers, which only the openai: backend balances; "
            "give one Ollama URL (or serve the model through an OpenAI-compatible server)"
        )
    if config.base_url:
        kwargs["base_url"] = config.base_url
    if config.top_p is not None:
        kwargs["top_p"] = config.top_p
    if config.seed is not None:
        kwargs["seed"] = config.seed
    kwargs.update(config.extra)
    chat = ChatOllama(**kwargs)
    return BuiltChatModel(chat=chat, model=model, fingerprint={"base_url": config.base_url})
