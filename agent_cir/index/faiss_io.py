"""faiss for the gallery index: make an index from a factory string, train and fill it, tune its search."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent_cir.errors import AgentCirError

DEFAULT_INDEX_TYPE = "Flat"


def make_faiss_index(dim: int, factory: str) -> Any:
    """An empty inner-product index; a bad factory string is an AgentCirError (checked before any encoding)."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise AgentCirError(
            f"--index-type {factory!r} is not a valid faiss index_factory string ({first_line}). "
            "Examples: Flat (exact, default), HNSW32, IVF256,Flat, IVF1024,PQ32"
        ) from err


def build_faiss_index(embeddings: np.ndarray, factory: str) -> Any:
    """faiss index over the rows (ids = row numbers), trained first when the factory needs it."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count, dim = embeddings.shape
    index = make_faiss_index(dim, factory)
    if not index.is_trained:
        if count == 0:
            raise AgentCirError(f"--index-type {factory!r} needs training vectors, but the gallery has no images")
        try:
            index.train(embeddings)
        except RuntimeError as err:
            raise AgentCirError(
                f"--index-type {factory!r} could not be trained on {count} vectors "
                f"({' '.join(str(err).split())[-200:]}). Use fewer clusters / PQ centroids, or Flat for a "
                "gallery this small."
            ) from err
    if count:
        if factory.replace(" ", "").upper().startswith("IDMAP"):
            index.add_with_ids(embeddings, np.arange(count, dtype=np.int64))
        else:
            index.add(embeddings)
    tune_search(index)
    return index


def tune_search(index: Any) -> None:
    """IVF indexes probe one list by default, which loses most neighbours; probe a few more."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return
    ivf.nprobe = min(ivf.nlist, max(8, ivf.nlist // 16))
