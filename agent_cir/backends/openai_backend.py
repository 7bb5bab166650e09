"""The ``openai:`` backend: ChatOpenAI for OpenAI or any OpenAI-compatible server (vLLM, SGLang, llama.cpp
server), a replica list through ``multi_endpoint.py``, and an HTTP client with a wall-clock deadline."""

from __future__ import annotations

import os
import time
from typing import Any

from agent_cir.backends.capabilities import BuiltChatModel
from agent_cir.backends.errors import BackendError
from agent_cir.backends.rate_limit import rate_limiter
from agent_cir.config import ModelConfig

LOCAL_KEY_PLACEHOLDER = "not-needed"


def _deadline_http_client(seconds: float) -> Any:
    """An httpx client whose every request (headers and body) must finish within ``seconds`` of wall-clock
    time. httpx's own timeout is per read, so a server that trickles a byte now and then never trips it;
    ``invoke`` enforces the same deadline from outside, and this stops the abandoned request too."""
    import httpx

    class _DeadlineStream(httpx.SyncByteStream):
        def __init__(self, inner: Any, deadline: float, url: str) -> None:
            self._inner, self._deadline, self._url = inner, deadline, url

        def __iter__(self) -> Any:
            for chunk in self._inner:
                if time.monotonic() > self._deadline:
                    raise httpx.ReadTimeout(f"{self._url}: no complete answer within {seconds:g} s")
                yield chunk

        def close(self) -> None:
            self._inner.close()

    class _DeadlineTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            deadline = time.monotonic() + seconds
            response = super().handle_request(request)
            response.stream = _DeadlineStream(response.stream, deadline, str(request.url.copy_with(query=None)))
            return response

    return httpx.Client(transport=_DeadlineTransport(), timeout=seconds)




def create_openai(config: ModelConfig, model: str) -> BuiltChatModel:
    from langchain_openai import ChatOpenAI

    api_key = config.api_key
    if api_key is None and config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if api_key is None:
            raise BackendError(
                f"{config.spec}: api_key_env names ${config.api_key_env}, which is not set; export it or set api_key"
            )
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if api_key is None:
        if not config.base_url:
            raise BackendError(
                f"{config.spec}: no API key; set $OPENAI_API_KEY (or api_key / api_key_env in the model's "
                "configuration), or give base_url of a local OpenAI-compatible server"
            )
        api_key = LOCAL_KEY_PLACEHOLDER  # ChatOpenAI insists on a key; local servers ignore it
    kwargs: dict[str, Any] = {
        "model": model,
        "api_key": api_key,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "timeout": config.timeout,
        "max_retries": config.max_retries,
        "rate_limiter": rate_limiter(config),
    }
    endpoints = [config.base_url] if isinstance(config.base_url, str) else list(config.base_url or [])
    if endpoints:
        kwargs["base_url"] = endpoints[0]
        # ChatOpenAI sends max_completion_tokens; some OpenAI-compatible servers (llama-cpp-python) only read
        # max_tokens and would otherwise generate until the context is full.
        kwargs["extra_body"] = {"max_tokens": config.max_tokens}
    if config.top_p is not None:
        kwargs["top_p"] = config.top_p
    if config.seed is not None:
        kwargs["seed"] = config.seed
    kwargs.update(config.extra)
    if len(endpoints) > 1:
        from agent_cir.backends.multi_endpoint import MultiEndpointChatOpenAI

        chat: Any = MultiEndpointChatOpenAI(
            **kwargs, endpoints=endpoints, cooldown=config.failover_cooldown,
            attempts=max(config.max_retries + 1, len(endpoints)),
        )
    else:
        if "http_client" not in kwargs:
            kwargs["http_client"] = _deadline_http_client(config.timeout)
        chat = ChatOpenAI(**kwargs)
    return BuiltChatModel(
        chat=chat,
        model=model,
        # Replicas serve the same model: the cache key must not change with the list of servers.
        fingerprint={"base_url": endpoints[0] if len(endpoints) == 1 else "replicas"},
    )
