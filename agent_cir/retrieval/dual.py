"""Dual-path retrieval: the text path (the target description) beside the image path (the imagine stage's edited
picture), and Paracosm's synthetic gallery twins. Formulas, with w = ``retrieve.dual_weight`` (the image path's
weight) and every query and gallery vector of unit length:

- mix      score(g) = (1 - w) cos(q_txt, g) + w cos(q_img, g). Linear in the query, so it is ONE exact search
           with the row (1 - w) q_txt + w q_img (:func:`mix_query`) and its scores are exactly the mix.
           Paracosm's retrieval is this mix with w = lambda = 0.3, q_img = normalise(f(mental image) +
           f(its description)) and q_txt = the modification text (leowangtong/Paracosm test_cirr_circo.py:126-129,
           193-196, 220-222).
- rrf      score(g) = (1 - w) / (k + rank_txt(g)) + w / (k + rank_img(g)) over each path's top list (a path that
           did not return g adds 0); ranks 1-based, k = ``dual_rrf_k`` (60). Ties: the better of the two ranks,
           then gallery position (:func:`rrf_fuse`).
- wiser    the union of both top lists (in rrf order, w = 0.5) is what the verifier judges; the final order sums
           each path's confidence, c_txt(g) + c_img(g) (0 for a path that did not retrieve g), ties by the larger
           of the two, then c_txt, then the gallery id (Physicsmile/WISER src/compute_results.py:121-132, 341-352;
           :func:`wiser_fusion`). Across loop rounds each path keeps g's best confidence.

Twins (:func:`twin_vectors`): gallery feature = normalise(normalise(real) + normalise(twin)), Paracosm's
``F.normalize(img) + F.normalize(synthetic)`` (src/utils.py:49, 90, 127) normalised again before scoring
(test_cirr_circo.py:65, 217).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from agent_cir.fusion import normalise
from agent_cir.retrieval.ranking import Ranking
from agent_cir.retrieval.round_fusion import FusedItem


def _check_weight(weight: float) -> float:
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"dual_weight must be in [0, 1], got {weight}")
    return float(weight)


def mix_query(text_query: np.ndarray, image_query: np.ndarray, weight: float) -> np.ndarray:
    """(1 - w) q_txt + w q_img of the two unit queries: its inner product with g is the score mix."""
    w = _check_weight(weight)
    return ((1.0 - w) * normalise(text_query) + w * normalise(image_query)).astype(np.float32)


def paracosm_image_query(image_vector: np.ndarray, description_vector: np.ndarray | None) -> np.ndarray:
    """normalise(f(mental image) + f(description)): Paracosm's image-side query (on unit vectors: no encoder here
    gives raw projections)."""
    image_vector = np.asarray(image_vector, dtype=np.float32)
    if description_vector is None:
        return normalise(image_vector)
    return normalise(image_vector + np.asarray(description_vector, dtype=np.float32))


def rrf_fuse(text: Ranking, image: Ranking, weight: float, rrf_k: int = 60) -> Ranking:
    """The weighted reciprocal-rank fusion of two rankings of one gallery (see the module docstring); the fused
    score is the ranking's score column."""
    w = _check_weight(weight)
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking, share in ((text, 1.0 - w), (image, w)):
        for rank, position in enumerate(ranking.positions.tolist(), start=1):
            scores[position] = scores.get(position, 0.0) + share / (rrf_k + rank)
            best[position] = min(best.get(position, rank), rank)
    order = sorted(scores, key=lambda p: (-scores[p], best[p], p))
    return Ranking.from_arrays(np.asarray(order, dtype=np.int64), np.asarray([scores[p] for p in order]),
                               text.ids, text.paths, text.lookup)


def dual_query_rows(text_query: np.ndarray, image_vector: np.ndarray, description_vector: np.ndarray | None,
                    fusion: str, weight: float) -> np.ndarray:
    """The search rows of one dual query: the mixed row for ``mix`` (its scores are the mix), else the two unit
    path queries [q_txt, q_img] whose rankings :func:`fuse_path_rankings` fuses."""
    image_query = paracosm_image_query(image_vector, description_vector)
    if fusion == "mix":
        return mix_query(text_query, image_query, weight)
    return np.stack([normalise(text_query), image_query])


def fuse_path_rankings(text: Ranking, image: Ranking, fusion: str, weight: float,
                       rrf_k: int = 60) -> tuple[Ranking, dict[str, list[str]]]:
    """(the fused ranking, each path's own top ids). ``wiser``: the pool in equal-weight rrf order (the verifier's
    confidences make the final order); ``rrf``: weighted by ``weight``."""
    fused = rrf_fuse(text, image, 0.5 if fusion == "wiser" else weight, rrf_k)
    return fused, {"text": text.head_ids(), "image": image.head_ids()}


def path_confidences(rounds: Sequence[Sequence[tuple[str, float | None, float]]],
                     paths: Sequence[Mapping[str, Sequence[str]]]) -> tuple[dict[str, float], dict[str, float],
                                                                             dict[str, float]]:
    """Per path, each verified id's best confidence over the rounds in which that path retrieved it; and each
    id's best retrieval score. ``rounds[r]``: the verified head of round r; ``paths[r]``: {"text": ids, "image": ids}."""
    text: dict[str, float] = {}
    image: dict[str, float] = {}
    retrieval: dict[str, float] = {}
    for items, members in zip(rounds, paths):
        in_text, in_image = set(members.get("text", ())), set(members.get("image", ()))
        for gallery_id, confidence, score in items:
            retrieval[gallery_id] = max(retrieval.get(gallery_id, float("-inf")), float(score))
            value = 0.0 if confidence is None else float(confidence)
            if gallery_id in in_text:
                text[gallery_id] = max(text.get(gallery_id, 0.0), value)
            if gallery_id in in_image:
                image[gallery_id] = max(image.get(gallery_id, 0.0), value)
    return text, image, retrieval


def wiser_fusion(rounds: Sequence[Sequence[tuple[str, float | None, float]]],
                 paths: Sequence[Mapping[str, Sequence[str]]]) -> list[FusedItem]:
    """WISER's two-path order of the verified candidates: c_txt + c_img, then max, then c_txt, then id."""
    text, image, retrieval = path_confidences(rounds, paths)
    verified = [gallery_id for items in rounds for gallery_id, _c, _s in items]
    ids = [gallery_id for gallery_id in dict.fromkeys(verified) if gallery_id in text or gallery_id in image]

    def key(gallery_id: str) -> tuple[float, float, float, str]:
        t, i = text.get(gallery_id, 0.0), image.get(gallery_id, 0.0)
        return (-(t + i), -max(t, i), -t, gallery_id)

    ordered = sorted(ids, key=key)
    return [FusedItem(g, max(text.get(g, 0.0), image.get(g, 0.0)), retrieval[g], text.get(g, 0.0) + image.get(g, 0.0))
            for g in ordered]


def twin_vectors(real: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    """normalise(normalise(real) + normalise(synthetic)), row by row."""
    real = np.asarray(real, dtype=np.float32)
    synthetic = np.asarray(synthetic, dtype=np.float32)
    if real.shape != synthetic.shape:
        raise ValueError(f"real {real.shape} and synthetic {synthetic.shape} vectors must have one shape")
    return normalise(normalise(real) + normalise(synthetic))


def with_twins(gallery: Any, index: Any) -> Any:
    """The gallery scored by real + twin features: a copy whose image vectors are :func:`twin_vectors` and whose
    search is exact over them (the index's own faiss structure holds the real vectors only)."""
    from agent_cir.index.twins import load_twins

    synthetic = load_twins(index)
    real = np.asarray(gallery.image_embeddings, dtype=np.float32)
    if len(gallery.paths) != len(index.paths) or list(map(str, gallery.paths)) != list(map(str, index.paths)):
        from agent_cir.errors import AgentCirError

        raise AgentCirError("with_twins needs the gallery of the index itself (the same items in the same order)")
    twin_gallery = replace(gallery, image_embeddings=twin_vectors(real, synthetic), index=None,
                           source=f"{gallery.source} + synthetic twins")
    twin_gallery.real_embeddings = real  # what a reference that is a gallery item is embedded as
    return twin_gallery


def check_dual_gallery(has_images: bool, caption_weight: float, paired_slots: int | None) -> None:
    """Dual retrieval compares pictures with pictures: the gallery needs image embeddings, scored alone."""
    from agent_cir.errors import AgentCirError

    if not has_images:
        raise AgentCirError("retrieve.mode 'dual' embeds the edited image, but this gallery is captions only; index "
                            "the images with `agent-cir index` and pass --index, or use mode: text")
    if caption_weight > 0 or paired_slots is not None:
        raise AgentCirError("retrieve.mode 'dual' scores image embeddings alone; remove retrieve.gallery_captions "
                            "(or set its weight to 0)")
