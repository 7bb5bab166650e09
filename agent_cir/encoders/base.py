"""The one encoder interface every retrieval path uses."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from agent_cir.errors import AgentCirError


class ModelWeightsError(AgentCirError, RuntimeError):
    """Weights are not on disk and cannot be downloaded. The message says which model and how to fix it."""


class Encoder(Protocol):
    """Maps images and texts into one space. Every output row is L2-normalised float32."""

    dim: int
    info: dict[str, Any]
    """What produced the embeddings: backend, model, pretrained tag or path, preprocessing. Stored in index metadata."""

    def preprocess(self, image: Image.Image) -> Any:
        """PIL image -> model input tensor (runs in data-loading workers)."""
        ...

    def encode_images(self, images: Sequence[Image.Image] | Any, batch_size: int | None = None) -> np.ndarray:
        """PIL images, or an already preprocessed batch tensor -> (n, dim) float32."""
        ...

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray: ...
