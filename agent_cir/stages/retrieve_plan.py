"""Retrieve planning (no model calls): per query, the texts to embed, the reference's gallery positions, what
is excluded or restricted, and the mode actually used (with a note when it falls back).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent_cir.config import RetrieveConfig
from agent_cir.errors import AgentCirError
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.types import QueryState

IMAGE_MODES = ("image", "fusion", "pdv", "weimocir", "sqaf")
"""Modes whose query includes the reference image's vector."""


class QueryInputError(AgentCirError):
    """A query cannot be run as given (missing reference image, no text)."""


def join_caption_and_modification(caption: str, modification: str) -> str:
    return f"{caption.strip().rstrip('.')}. {modification.strip()}"


def non_blank(texts: list[str]) -> list[str]:
    return [t for t in texts if t and t.strip()]


@dataclass
class QueryPlan:
    """What one query needs before the batched encoder and search calls."""

    state: QueryState
    mode: str
    notes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    reference_texts: list[str] = field(default_factory=list)
    target_texts: list[str] = field(default_factory=list)
    reference_position: int | None = None
    image_file: str | None = None
    excluded: list[int] = field(default_factory=list)
    restrict: list[int] | None = None
    image_vector: np.ndarray | None = None
    query: np.ndarray | None = None
    average_reference: bool = False
    """Average the text query with the reference image feature (``retrieve.reference_average_tasks``)."""
    edited_vector: np.ndarray | None = None
    """mode dual: the embedding of the imagine stage's picture (a unit vector, like every query side here)."""
    description: str | None = None
    """mode dual with dual_image_text: the description of the edited picture."""


def query_texts(config: RetrieveConfig, state: QueryState, notes: list[str]) -> list[str]:
    """The texts the query embeds, by ``retrieve.text_source`` (a note when it falls back to the modification)."""
    query = state.query
    source = config.text_source
    captions = state.captions or ([query.reference_caption] if query.reference_caption else [])
    if source in ("target", "target+modification"):
        descriptions = non_blank(list(state.target_descriptions))
        if config.max_descriptions is not None:
            descriptions = descriptions[: config.max_descriptions]
        if descriptions:
            extra = [query.text] if source == "target+modification" and query.text.strip() else []
            return list(dict.fromkeys([*descriptions, *extra]))
        if not query.text.strip():
            return []
        notes.append("no target description was produced: retrieving with the modification text")
        # Kept for the trace readers that expect it (tests pin it); the pipeline owns this field.
        state.description_source = state.description_source or "modification"
        state.target_descriptions = [query.text]
        return [query.text]
    if source == "modification":
        return non_blank([query.text])
    if not captions:
        raise QueryInputError(
            f"query {query.id}: retrieve.text_source is {source!r} but the query has no caption "
            "(enable the caption stage or supply reference_caption)"
        )
    if source == "caption":
        return list(captions)
    if not query.text.strip():
        return list(captions)
    return [join_caption_and_modification(caption, query.text) for caption in captions]


def reference_positions(gallery: RetrievalGallery, state: QueryState) -> tuple[int | None, list[int]]:
    """The reference's gallery position (to reuse its embedding) and every position holding a copy."""
    query = state.query
    position = gallery.position(query.reference_id) if query.reference_id is not None else None
    copies = set(gallery.copies_of(position)) if position is not None else set()
    by_hash = gallery.positions_of_hash(state.image_hash)
    copies.update(by_hash)
    if position is None and by_hash:
        position = by_hash[0]
    return position, sorted(copies)


def restriction(gallery: RetrievalGallery, state: QueryState, notes: list[str]) -> list[int] | None:
    wanted = state.query.candidate_ids
    if wanted is None:
        return None
    positions = [gallery.position(gallery_id) for gallery_id in wanted]
    missing = [gallery_id for gallery_id, pos in zip(wanted, positions) if pos is None]
    if missing:
        notes.append(f"{len(missing)} candidate ids are not in the gallery: {', '.join(missing[:5])}")
    return [pos for pos in positions if pos is not None]


def plan_query(config: RetrieveConfig, gallery: RetrievalGallery, state: QueryState) -> QueryPlan:
    """What one query needs before the batched encoder and search calls; raises ``QueryInputError`` when it
    cannot be searched as given."""
    query = state.query
    plan = QueryPlan(state=state, mode=config.mode)
    plan.reference_position, copies = reference_positions(gallery, state)
    if config.exclude_reference:
        if config.exclude_reference_by == "id":
            by_id = gallery.position(query.reference_id) if query.reference_id is not None else None
            plan.excluded = [by_id] if by_id is not None else []
        else:
            plan.excluded = copies
    plan.restrict = restriction(gallery, state, plan.notes)
    has_image = (plan.reference_position is not None and gallery.has_images) or bool(query.image)
    if plan.mode in ("weimocir", "sqaf"):
        plan.texts = non_blank([query.text]) if plan.mode == "sqaf" else query_texts(config, state, plan.notes)
    elif plan.mode != "image":
        plan.texts = query_texts(config, state, plan.notes)
    if plan.mode != "image" and not plan.texts:
        if has_image and gallery.has_images:
            plan.notes.append("the modification text is empty: retrieving with the reference image alone")
            plan.mode = "image"
        else:
            raise QueryInputError(
                f"query {query.id}: no text to retrieve with (the modification text is empty and no target "
                "description exists); give a modification text, or a reference image"
            )
    captions = non_blank(state.captions or ([query.reference_caption] if query.reference_caption else []))
    if plan.mode == "pdv":
        if captions:
            plan.reference_texts = captions
        else:
            plan.notes.append("pdv needs a reference caption and none exists: used weighted fusion instead")
            plan.mode = "fusion"
    if plan.mode == "sqaf":
        plan.target_texts = non_blank(list(state.target_descriptions))[: config.max_descriptions]
        if not plan.target_texts:
            plan.notes.append("no target caption was produced: SQAF used the composed image+text query alone")
    if plan.mode == "weimocir":
        in_gallery = plan.reference_position is not None and len(gallery.caption_rows_of(plan.reference_position))
        if not in_gallery:
            if not captions:
                raise QueryInputError(
                    f"query {query.id}: mode weimocir builds its caption queries from the reference's captions, "
                    "and this reference has none in the gallery captions; enable the caption stage or supply "
                    "reference_caption"
                )
            plan.reference_texts = captions
    if plan.mode == "dual":
        edited = state.edited_image
        if edited is None:
            plan.notes.append("dual: no edited image (the imagine stage did not run for this query): "
                              "retrieving with the text path alone")
            plan.mode = "text"
        elif config.dual_image_text:
            plan.description = edited.description
            if not plan.description:
                plan.notes.append("dual: the edited image has no description: its image vector alone is the "
                                  "image path")
    plan.average_reference = plan.mode == "text" and query.meta.get("task") in config.reference_average_tasks
    if plan.mode in IMAGE_MODES or plan.average_reference:
        if plan.reference_position is None or not gallery.has_images:
            if not query.image:
                raise QueryInputError(
                    f"query {query.id}: retrieve.mode {plan.mode!r} needs a reference image; pass --image "
                    "or use mode: text"
                )
            plan.image_file = str(query.image)
    return plan
