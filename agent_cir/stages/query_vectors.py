"""Query vectors per retrieve mode (text, image, fusion, pdv, sqaf, weimocir, dual), from a plan and the batch's
text embeddings; the formulas are in ``agent_cir.fusion`` and ``agent_cir.retrieval.dual``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent_cir.config import RetrieveConfig
from agent_cir.fusion import (
    mean_embedding,
    mean_score_query,
    normalise,
    pdv_fused,
    sqaf_query,
    weighted_fusion,
    weimocir_query,
)
from agent_cir.retrieval import composite_query
from agent_cir.retrieval.dual import dual_query_rows
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.stages.retrieve_plan import IMAGE_MODES, QueryPlan


def _gallery_image(gallery: RetrievalGallery, plan: QueryPlan) -> np.ndarray:
    # A twins gallery searches real + twin vectors, but a reference image is its real picture.
    real = getattr(gallery, "real_embeddings", None)
    source = real if real is not None else gallery.image_embeddings
    return np.asarray(source[plan.reference_position], dtype=np.float32)


def _text_query(config: RetrieveConfig, vectors: np.ndarray) -> np.ndarray:
    if config.description_scoring == "mean_score":
        return mean_score_query(vectors)
    return mean_embedding(vectors)


def query_vector(plan: QueryPlan, text: dict[str, np.ndarray], config: RetrieveConfig, gallery: RetrievalGallery,
                 caption_weight: float, paired_slots: int | None) -> tuple[np.ndarray, dict]:
    """The search row for one plan, laid out for the engine's structure (caption weight, paired caption
    slots); plus record fields. ``text``: every embedded string of the batch."""
    extra: dict[str, Any] = {}
    image = plan.image_vector
    if (plan.mode in IMAGE_MODES or plan.average_reference) and image is None:
        image = _gallery_image(gallery, plan)
    stack = (lambda strings: np.stack([text[s] for s in strings])) if text else None
    if plan.mode == "weimocir":
        # The official code fuses raw CLIP projections; encoders and indexes here hold unit vectors, so
        # both sides are unit vectors (the recipe's declared difference; the record says raw_projections).
        modification = mean_embedding(stack(plan.texts))
        image_query = weimocir_query(normalise(image), modification, config.alpha)
        slots = paired_slots or 1
        if plan.reference_texts:
            reference_captions = normalise(stack(plan.reference_texts))
        else:
            reference_captions = normalise(gallery.caption_rows_of(plan.reference_position))
        # Slot j pairs the reference's j-th caption with each item's j-th caption (official
        # validate_clip.py:107-123); a reference with fewer captions reuses the mean of its own.
        fill = reference_captions.mean(axis=0)
        rows = [reference_captions[j] if j < len(reference_captions) else fill for j in range(slots)]
        caption_queries = np.stack([weimocir_query(row, modification, config.alpha) for row in rows])
        query = composite_query(image_query, caption_queries, caption_weight, gallery.has_images)
        extra.update({"alpha": config.alpha, "pairing": "paired", "captions_per_item": slots,
                      "raw_projections": False})
        return query, extra
    if plan.mode == "dual":
        return _dual_query(plan, text, stack, config)
    if plan.mode == "image":
        query = normalise(image if image is not None else _gallery_image(gallery, plan))
    elif plan.mode == "text":
        query = _text_query(config, stack(plan.texts))
        if plan.average_reference:
            # normalise((q + normalise(r)) / 2): the fusion formula with equal weights
            query = weighted_fusion(image, query, 0.5)
            extra["reference_averaged"] = True
    elif plan.mode == "fusion":
        query = weighted_fusion(image, mean_embedding(stack(plan.texts)), config.alpha)
        extra["alpha"] = config.alpha
    elif plan.mode == "pdv":
        query = pdv_fused(
            image, mean_embedding(stack(plan.reference_texts)), mean_embedding(stack(plan.texts)),
            config.pdv_alpha_t, config.pdv_alpha_i, config.pdv_beta,
        )
        extra.update({"pdv_alpha_t": config.pdv_alpha_t, "pdv_alpha_i": config.pdv_alpha_i,
                      "pdv_beta": config.pdv_beta, "reference_texts": plan.reference_texts})
    else:  # sqaf
        modification = mean_embedding(stack(plan.texts))
        if plan.target_texts:
            query = sqaf_query(image, modification, mean_embedding(stack(plan.target_texts)), config.alpha,
                               config.sqaf_weight)
        else:
            query = weighted_fusion(image, modification, config.alpha)
        extra.update({"alpha": config.alpha, "sqaf_weight": config.sqaf_weight, "target_texts": plan.target_texts})
    if paired_slots is not None:
        # A paired gallery layout: the same query scores every caption slot.
        query = composite_query(query, np.repeat(query[None, :], paired_slots, axis=0),
                                caption_weight, gallery.has_images)
    return query, extra


def _dual_query(plan: QueryPlan, text: dict[str, np.ndarray], stack: Any, config: RetrieveConfig) -> tuple[np.ndarray, dict]:
    description = text[plan.description] if plan.description else None
    rows = dual_query_rows(mean_embedding(stack(plan.texts)), plan.edited_vector, description,
                           config.dual_fusion, config.dual_weight)
    extra: dict[str, Any] = {"dual_weight": config.dual_weight, "dual_fusion": config.dual_fusion}
    if plan.description:
        extra["edited_description"] = plan.description
    return rows, extra
