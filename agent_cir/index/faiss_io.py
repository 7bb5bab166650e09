"""faiss for the gallery index: make an index from a factory string, train and fill it, tune its search."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent_cir.errors import AgentCirError

DEFAULT_INDEX_TYPE = "Flat"
REFINE_K_FACTOR = 4
"""With --refine: the compressed index fetches 4 x k candidates, which the exact vectors then re-score."""

# What each choice costs and finds, measured by benchmarks/search_scale.py (1M clustered unit vectors,
# d = 512, recall@50 against exact search; see benchmarks/RESULTS.md). Shown by `agent-cir index --help`.
INDEX_TYPE_GUIDE = (
    "Flat: exact; 4d bytes/vector (2,048 at d=512); ~84 ms/query at 1M. "
    "HNSW32: recall@50 0.96 (efSearch 64); ~4d+256 bytes/vector; ~3 ms/query; slow to build. "
    "IVF1024,PQ64x4fs: 43 bytes/vector; recall@50 only ~0.64 (codes alone). "
    "IVF1024,PQ64x4fs with --refine: recall@50 0.97 at ~1 ms/query; keeps the exact vectors too (4d+43 bytes/vector). "
    "Galleries that do not fit in RAM: agent_cir.index.sharded (on-disk IVF-PQ, 72 bytes/vector; "
    "benchmarks/index_scale.py)."
)


def with_refine(factory: str) -> str:
    """The factory string whose short list is re-scored with exact vectors (faiss ``RFlat``)."""
    compact = factory.replace(" ", "")
    if compact.upper() in ("FLAT", "IDMAP,FLAT", "IDMAP2,FLAT") or compact.upper().endswith(",RFLAT"):
        return factory  # already exact
    return f"{compact},RFlat"


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
    """IVF indexes probe one list by default, which loses most neighbours; probe a few more. A refine
    stage (RFlat) re-scores REFINE_K_FACTOR x k candidates instead of exactly k (which would refine nothing)."""
    import faiss

    refine = faiss.try_extract_index_refine(index) if hasattr(faiss, "try_extract_index_refine") else None
    if refine is None and type(faiss.downcast_index(index)).__name__.startswith("IndexRefine"):
        refine = faiss.downcast_index(index)
    if refine is not None:
        refine.k_factor = REFINE_K_FACTOR

    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return
    ivf.nprobe = min(ivf.nlist, max(8, ivf.nlist // 16))
