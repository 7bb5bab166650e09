"""Query-vector arithmetic shared by the Python API and the retrieve stage. Rows are float32 embeddings."""

from __future__ import annotations

import numpy as np


def normalise(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise along the last axis (a zero vector stays zero instead of becoming NaN)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def mean_embedding(rows: np.ndarray) -> np.ndarray:
    """Ensemble of several normalised embeddings: the normalised mean of the normalised rows."""
    rows = normalise(np.atleast_2d(rows))
    return normalise(rows.mean(axis=0))


def weighted_fusion(image: np.ndarray, text: np.ndarray, alpha: float) -> np.ndarray:
    """q = normalise((1 - alpha) * img + alpha * txt)  (WeiMoCIR / SQUARE first stage)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return normalise((1.0 - alpha) * normalise(image) + alpha * normalise(text))


def pdv_fusion(image: np.ndarray, target_text: np.ndarray, caption_text: np.ndarray, a: float, b: float) -> np.ndarray:
    """Directional fusion: d = txt(target) - txt(caption); q = normalise((1-b)(img + a d) + b (txt(target) + a d))."""
    image, target_text, caption_text = normalise(image), normalise(target_text), normalise(caption_text)
    direction = target_text - caption_text
    return normalise((1.0 - b) * (image + a * direction) + b * (target_text + a * direction))
