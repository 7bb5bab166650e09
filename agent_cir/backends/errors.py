"""The error types of the chat backends (each says what was wrong and what to do)."""

from __future__ import annotations

from agent_cir.errors import AgentCirError


class BackendError(AgentCirError, ValueError):
    """A model spec or its options are invalid, or the backend's package is missing."""


class ModelCallError(AgentCirError, RuntimeError):
    """A model call failed after its retries (server down, bad credentials, model missing)."""


class ImageInputError(AgentCirError, ValueError):
    """An image handed to a model call cannot be read."""


class LocalModelError(AgentCirError, RuntimeError):
    """A local transformers model could not be loaded or cannot do what was asked."""
