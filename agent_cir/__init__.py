"""agent_cir: training-free zero-shot composed image retrieval, every stage traceable.

``import agent_cir`` stays light (no torch, no faiss): the public names below are imported on first use.

    from agent_cir import Pipeline, Query, GalleryIndex
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY = {
    "Pipeline": "agent_cir.pipeline",
    "GalleryIndex": "agent_cir.index",
    "Query": "agent_cir.types",
    "Candidate": "agent_cir.types",
    "Result": "agent_cir.types",
    "StageRecord": "agent_cir.types",
    "Recipe": "agent_cir.config",
    "load_recipe": "agent_cir.config",
    "EncoderConfig": "agent_cir.config",
    "create_encoder": "agent_cir.encoders",
    "AgentCirError": "agent_cir.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from agent_cir.config import EncoderConfig, Recipe, load_recipe
    from agent_cir.encoders import create_encoder
    from agent_cir.errors import AgentCirError
    from agent_cir.index import GalleryIndex
    from agent_cir.pipeline import Pipeline
    from agent_cir.types import Candidate, Query, Result, StageRecord


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'agent_cir' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
