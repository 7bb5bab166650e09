"""Building a ``ChatModelHandle``: from a spec string or ``models:`` entry (``create_chat_model``), or from
whatever a user passes as a model (``as_handle``: a handle, any LangChain chat model, a config, a spec)."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from agent_cir.backends.capabilities import UNKNOWN_BACKEND
from agent_cir.backends.errors import BackendError
from agent_cir.backends.fake_backend import ScriptedChatModel
from agent_cir.backends.handle import ChatModelHandle
from agent_cir.backends.registry import CHAT_BACKENDS
from agent_cir.backends.spec import parse_spec
from agent_cir.config import ModelConfig


def create_chat_model(config: ModelConfig | str) -> ChatModelHandle:
    """Build the chat model a ``models:`` entry (or a bare spec string) describes."""
    if isinstance(config, str):
        config = ModelConfig(spec=config)
    backend, model = parse_spec(config.spec)
    entry = CHAT_BACKENDS[backend]
    built = entry.factory(config, model)
    return ChatModelHandle(
        chat=built.chat,
        backend=backend,
        model=built.model,
        config=config,
        supports_structured_output=entry.capabilities.structured_output,
        # openai: the client retries itself (max_retries); in-process and scripted models: a retry repeats the answer
        retry_attempts=config.max_retries if entry.capabilities.invoke_retries else 0,
        fingerprint=built.fingerprint,
    )


def _guess_backend(chat: BaseChatModel) -> str:
    kind = type(chat).__name__
    if kind == "ChatOpenAI" or kind.startswith("AzureChatOpenAI"):
        return "openai"
    if kind == "ChatOllama":
        return "ollama"
    if kind == "TransformersVLMChatModel":
        return "hf-vlm"
    if kind == "TransformersChatModel":
        return "hf"
    if isinstance(chat, ScriptedChatModel) or "Fake" in kind:
        return "fake"
    return getattr(chat, "_llm_type", kind)


def as_handle(
    model: ChatModelHandle | BaseChatModel | ModelConfig | str,
    config: ModelConfig | None = None,
    *,
    name: str = "model",
) -> ChatModelHandle:
    """Accept what a user passes as a model: a handle, any LangChain chat model, a ModelConfig or a spec string.

    ``config`` (the recipe's ``models:`` entry, when there is one) supplies sampling, concurrency and retry
    settings for an injected LangChain model; without it they come from the model's own attributes.
    """
    if isinstance(model, ChatModelHandle):
        return model
    if isinstance(model, (ModelConfig, str)):
        return create_chat_model(model)
    if not isinstance(model, BaseChatModel):
        raise BackendError(
            f"models[{name!r}]: expected a LangChain chat model, a ModelConfig or a spec string, "
            f"got {type(model).__name__}"
        )
    backend = _guess_backend(model)
    known = CHAT_BACKENDS.get(backend)
    capabilities = known.capabilities if known is not None else UNKNOWN_BACKEND
    model_id = str(
        getattr(model, "model_name", None) or getattr(model, "model", None) or getattr(model, "model_path", None)
        or type(model).__name__
    )
    if config is None:
        seed = getattr(model, "seed", 0)
        config = ModelConfig(
            spec=f"{backend}:{model_id}",
            temperature=float(getattr(model, "temperature", 0.0) or 0.0),
            seed=seed if isinstance(seed, int) else None,
        )
    # A model whose class implements structured output itself (ChatOpenAI, ChatAnthropic, ...) gets it asked.
    own_structured = type(model).with_structured_output is not BaseChatModel.with_structured_output
    own_tools = type(model).bind_tools is not BaseChatModel.bind_tools
    return ChatModelHandle(
        chat=model,
        backend=backend,
        model=model_id,
        config=config,
        supports_structured_output=capabilities.structured_output or own_structured or own_tools,
        retry_attempts=config.max_retries if capabilities.invoke_retries else 0,
        fingerprint={"class": type(model).__name__, "base_url": getattr(model, "openai_api_base", None)},
    )
