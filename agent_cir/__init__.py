"""agent_cir: training-free zero-shot composed image retrieval, every stage traceable."""

__version__ = "0.1.0"

from agent_cir.types import Candidate, Query, Result, StageRecord

__all__ = ["Candidate", "Query", "Result", "StageRecord", "__version__"]
