"""``parse_spec``: a model spec string (``BACKEND:MODEL``) -> (backend, model), checked against the registry."""

from __future__ import annotations

from agent_cir.backends.errors import BackendError
from agent_cir.backends.registry import CHAT_BACKENDS


def parse_spec(spec: str) -> tuple[str, str]:
    backend, sep, model = spec.partition(":")
    backend = backend.strip().lower()
    if not sep or backend not in CHAT_BACKENDS:
        raise BackendError(
            f"model spec {spec!r}: expected BACKEND:MODEL with BACKEND one of {', '.join(CHAT_BACKENDS)} "
            "(e.g. openai:gpt-4o-mini, ollama:qwen2.5:7b, hf:Qwen/Qwen2.5-1.5B-Instruct, hf-vlm:./my-vlm, fake:)"
        )
    model = model.strip()
    if not model and backend != "fake":
        raise BackendError(f"model spec {spec!r}: the model name after '{backend}:' is empty")
    return backend, model or "fake"
