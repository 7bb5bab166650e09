"""Chat-model backends: a spec string -> a LangChain chat model (``create_chat_model``), and ``invoke``,
the one cached, traced call every stage makes. See ``registry.py`` for the spec strings."""

from agent_cir.backends.capabilities import UNKNOWN_BACKEND, BackendCapabilities, ChatBackend
from agent_cir.backends.create import as_handle, create_chat_model
from agent_cir.backends.errors import BackendError, ImageInputError, ModelCallError
from agent_cir.backends.fake_backend import ScriptedChatModel
from agent_cir.backends.handle import ChatModelHandle
from agent_cir.backends.invoke import invoke
from agent_cir.backends.messages import data_url, image_bytes, to_langchain_messages
from agent_cir.backends.registry import CHAT_BACKENDS
from agent_cir.backends.spec import parse_spec

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
