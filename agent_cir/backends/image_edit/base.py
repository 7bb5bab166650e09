"""The image-edit vocabulary every backend shares: the request, the editor interface, the error. A module of its
own so that backends import it without importing the registry that loads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_cir.errors import AgentCirError


class ImageEditError(AgentCirError, RuntimeError):
    """An image-edit backend cannot be created, loaded or called (names the model and what to do)."""


@dataclass(frozen=True)
class EditRequest:
    """One edit: the instruction, the reference picture (encoded bytes; None: generate from text) and settings."""

    prompt: str
    reference: bytes | None = None
    seed: int = 0
    steps: int = 30
    guidance: float = 7.5
    image_guidance: float | None = None
    strength: float | None = None
    negative_prompt: str | None = None
    size: int | None = 512
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """Everything but the prompt and the reference that decides the picture (part of the cache key)."""
        return {"seed": self.seed, "steps": self.steps, "guidance": self.guidance,
                "image_guidance": self.image_guidance, "strength": self.strength,
                "negative_prompt": self.negative_prompt, "size": self.size, "extra": self.extra}


class ImageEditor(Protocol):
    spec: str

    @property
    def info(self) -> dict[str, Any]:
        """{"backend": ..., "model": ...} and whatever else identifies the weights (in cache keys and traces)."""
        ...

    def edit(self, request: EditRequest) -> bytes:
        """The edited (or generated) picture as PNG bytes."""
        ...
