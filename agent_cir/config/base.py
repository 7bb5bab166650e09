"""What every recipe section shares: strict pydantic models (unknown keys are errors) and the error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agent_cir.errors import AgentCirError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ConfigError(AgentCirError, ValueError):
    """A recipe file is missing, unreadable or invalid. The message names the file and the bad key."""
