"""Chat-model backends: a spec string -> a LangChain chat model (``create_chat_model``), and ``invoke``,
the one cached, traced call every stage makes. See ``chat.py`` for the spec strings."""

from agent_cir.backends.chat import (
    CHAT_BACKENDS,
    UNKNOWN_BACKEND,
    BackendCapabilities,
    BackendError,
    ChatBackend,
    ChatModelHandle,
    ScriptedChatModel,
    as_handle,
    create_chat_model,
    parse_spec,
)
from agent_cir.backends.invoke import (
    ImageInputError,
    ModelCallError,
    data_url,
    image_bytes,
    invoke,
    to_langchain_messages,
)

__all__ = [
    "CHAT_BACKENDS",
    "UNKNOWN_BACKEND",
    "BackendCapabilities",
    "BackendError",
    "ChatBackend",
    "ChatModelHandle",
    "ImageInputError",
    "ModelCallError",
    "ScriptedChatModel",
    "as_handle",
    "create_chat_model",
    "data_url",
    "image_bytes",
    "invoke",
    "parse_spec",
    "to_langchain_messages",
]
