"""create_chat_model wraps what a backend's factory builds with what the registry declares for that backend:
structured output and invoke's retries follow ``CHAT_BACKENDS``, the model id and fingerprint follow the factory."""

import dataclasses

from agent_cir.backends.capabilities import BuiltChatModel, ChatBackend
from agent_cir.backends.create import create_chat_model
from agent_cir.backends.registry import CHAT_BACKENDS
from agent_cir.config import ModelConfig


def _fake_config(**overrides) -> ModelConfig:
    return ModelConfig(spec="fake:wired", extra={"responses": ["ok"]}, max_retries=4, **overrides)


def test_the_declared_capabilities_decide_structured_output_and_retries(monkeypatch):
    plain = create_chat_model(_fake_config())
    assert plain.supports_structured_output is False and plain.retry_attempts == 0
    declared = dataclasses.replace(CHAT_BACKENDS["fake"].capabilities, structured_output=True, invoke_retries=True)
    monkeypatch.setitem(CHAT_BACKENDS, "fake", ChatBackend(CHAT_BACKENDS["fake"].factory, declared))
    wired = create_chat_model(_fake_config())
    assert wired.supports_structured_output is True and wired.retry_attempts == 4
    assert wired.backend == "fake" and wired.capabilities is declared


def test_the_factory_decides_the_model_id_and_the_cache_fingerprint(monkeypatch):
    built_for: list[tuple[str, str]] = []
    scripted = CHAT_BACKENDS["fake"].factory

    def factory(config: ModelConfig, model: str) -> BuiltChatModel:
        built_for.append((config.spec, model))
        chat = scripted(config, model).chat
        return BuiltChatModel(chat=chat, model=f"{model}@v2", fingerprint={"revision": "v2"})

    monkeypatch.setitem(CHAT_BACKENDS, "fake", ChatBackend(factory, CHAT_BACKENDS["fake"].capabilities))
    handle = create_chat_model(_fake_config())
    assert built_for == [("fake:wired", "wired")]
    assert handle.model == "wired@v2" and handle.id == "fake:wired@v2" and handle.fingerprint == {"revision": "v2"}
