"""CoTMR's Multi-Grained Scoring (MGS): one score per gallery image from a target caption plus objects
that must be present and objects that must be absent.

CoTMR (Sun, Jing, Lu; ICCV 2025, arXiv 2502.20826) has one LVLM call produce an image-scale target
caption and object-scale predictions: existent objects (must appear) and nonexistent objects (must not).
MGS combines the CLIP similarities of these texts with each candidate image, rewarding the caption and the
must-have objects and penalising the must-not objects:

    S(v) = mean_c cos(c, v) + w_present * agg_{o in O+} cos(o, v) - w_absent * agg_{o in O-} cos(o, v)

Only the paper's abstract could be read (see docs/research/closed_loop_methods.md, section 4), so the
paper's equation numbers, its weights and its aggregation over objects are NOT verified here. Every such
choice is a parameter; the defaults (weights 1.0, mean over objects) are ours. An empty object list adds 0.
Several caption embeddings (e.g. an ensemble of captions) are averaged at the similarity level.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from agent_cir.errors import AgentCirError

Aggregate = Literal["mean", "sum", "max"]
_AGGREGATES = ("mean", "sum", "max")
# CLIP embeddings are float32; a unit vector stored in float16 is still within this of norm 1.
_NORM_TOLERANCE = 1e-2


class MultigrainError(AgentCirError, ValueError):
    """The inputs of multi-grained scoring are malformed (shape, dimension, normalisation, weights)."""


def _as_matrix(name: str, value: object, *, allow_empty: bool) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise MultigrainError(
            f"multigrain: {name} must be a vector or a (count, dim) matrix of embeddings, got shape {array.shape}"
        )
    if array.size == 0:
        if not allow_empty:
            raise MultigrainError(f"multigrain: {name} is empty; give at least one embedding")
        return np.zeros((0, array.shape[1]))
    if not np.isfinite(array).all():
        raise MultigrainError(f"multigrain: {name} contains NaN or infinite values; re-encode those texts/images")
    norms = np.linalg.norm(array, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE)
    if bad.size:
        raise MultigrainError(
            f"multigrain: {name} row {int(bad[0])} has norm {norms[bad[0]]:.4f}, not 1; "
            "L2-normalise the embeddings before scoring (cosine similarity is assumed)"
        )
    return array


def _aggregate(similarities: np.ndarray, how: str, gallery_size: int) -> np.ndarray:
    """(objects, gallery) similarities -> one value per gallery image; no objects -> zeros."""
    if similarities.shape[0] == 0:
        return np.zeros(gallery_size)
    if how == "mean":
        return similarities.mean(axis=0)
    if how == "sum":
        return similarities.sum(axis=0)
    return similarities.max(axis=0)


def multigrain_scores(
    caption_embeddings: np.ndarray,
    present_embeddings: np.ndarray,
    absent_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray,
    *,
    present_weight: float = 1.0,
    absent_weight: float = 1.0,
    aggregate: Aggregate = "mean",
) -> np.ndarray:
    """Score every gallery image; higher is better. Returns float64 of shape (gallery_size,).

    caption_embeddings: (dim,) or (captions, dim), L2-normalised CLIP text embeddings of the target caption(s).
    present_embeddings / absent_embeddings: (objects, dim), possibly (0, dim) or an empty list; the
        must-have and must-not-have objects' text embeddings.
    gallery_embeddings: (gallery_size, dim), L2-normalised image embeddings.
    """
    if aggregate not in _AGGREGATES:
        raise MultigrainError(f"multigrain: aggregate must be one of {', '.join(_AGGREGATES)}, got {aggregate!r}")
    for name, weight in (("present_weight", present_weight), ("absent_weight", absent_weight)):
        if not np.isfinite(weight) or weight < 0:
            raise MultigrainError(
                f"multigrain: {name} must be a finite number >= 0 (its sign is fixed by the formula), got {weight!r}"
            )
    captions = _as_matrix("caption_embeddings", caption_embeddings, allow_empty=False)
    dim = captions.shape[1]
    gallery = _as_matrix("gallery_embeddings", _empty_if_none(gallery_embeddings, dim), allow_empty=True)
    present = _as_matrix("present_embeddings", _empty_if_none(present_embeddings, dim), allow_empty=True)
    absent = _as_matrix("absent_embeddings", _empty_if_none(absent_embeddings, dim), allow_empty=True)
    for name, matrix in (("gallery_embeddings", gallery), ("present_embeddings", present), ("absent_embeddings", absent)):
        if matrix.shape[1] != dim:
            raise MultigrainError(
                f"multigrain: {name} has dimension {matrix.shape[1]} but the caption embeddings have {dim}; "
                "encode texts and images with the same CLIP model"
            )
    gallery_size = gallery.shape[0]
    caption_term = (captions @ gallery.T).mean(axis=0)
    present_term = _aggregate(present @ gallery.T, aggregate, gallery_size)
    absent_term = _aggregate(absent @ gallery.T, aggregate, gallery_size)
    return caption_term + present_weight * present_term - absent_weight * absent_term


def _empty_if_none(value: object, dim: int) -> object:
    """An empty list or None means "none" (no objects, an empty gallery): a (0, dim) matrix."""
    if value is None:
        return np.zeros((0, dim))
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, dim))
    return array
