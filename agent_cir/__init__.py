"""agent_cir: training-free zero-shot composed image retrieval, every stage traceable."""

from agent_cir._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"

from agent_cir.types import Candidate, Query, Result, StageRecord  # noqa: E402

__all__ = ["Candidate", "Query", "Result", "StageRecord", "__version__"]
