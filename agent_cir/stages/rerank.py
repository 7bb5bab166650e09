"""Compatibility re-export: the rerank stage lives in the :mod:`agent_cir.rerank` package."""

from agent_cir.rerank import *  # noqa: F401,F403
from agent_cir.rerank import __all__  # noqa: F401
