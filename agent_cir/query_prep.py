"""Query preparation: a user's query made ready for the stages, and the hand-over from the description stages
to retrieval (where ``QueryState.description_source`` becomes manual or modification).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from agent_cir.config import RetrieveConfig
from agent_cir.engine import Job
from agent_cir.index.image_memo import image_file
from agent_cir.index.reasons import BadImageError
from agent_cir.query_text import repair_text, safe_name
from agent_cir.stages.retrieve_plan import QueryInputError
from agent_cir.types import Query, QueryState

DESCRIPTION_STAGES = ("caption", "rewrite", "one_stage")
"""Stages that write the target description (skipped when the user set it by hand)."""

_TARGET_TEXT_SOURCES = ("target", "target+modification")


def needs_modification(stage_names: Sequence[str], retrieve: RetrieveConfig) -> bool:
    """Whether a query's modification text is what gets embedded or rewritten (an empty one would then
    become an embedding of ""). Caption-based text sources embed the caption, image mode no text."""
    if any(name in DESCRIPTION_STAGES for name in stage_names):
        return True
    return retrieve.mode != "image" and retrieve.text_source not in ("caption", "caption+modification")


def prepare_job(query: Query, position: int, *, modification_needed: bool, artifacts_dir: Path | None) -> Job:
    """The query with repaired text, checked, its reference image read once, and its hand-set fields in the
    state; raises ``QueryInputError`` saying what to give instead."""
    query = replace(
        query,
        text=repair_text(query.text) or "",
        reference_caption=repair_text(query.reference_caption),
        # a blank intervention is no intervention (it would be an embedding of whitespace)
        target_text=repair_text(query.target_text) if query.target_text and query.target_text.strip() else None,
    )
    if not query.text.strip() and not query.target_text and query.image is None and not query.reference_caption:
        raise QueryInputError(f"query {query.id}: empty query: give a modification text, an image or both")
    image_only = False
    if not query.text.strip() and not query.target_text and modification_needed:
        if query.image is None:
            raise QueryInputError(
                f"query {query.id}: the modification text is empty; give one (what should change in the "
                "reference), or a reference image to search with the image alone"
            )
        image_only = True  # never embed "": the reference image alone is the query
    state = QueryState(query=query)
    if query.image is not None:
        image_path = Path(query.image).expanduser()
        if not image_path.is_file():
            raise QueryInputError(f"query {query.id}: reference image {image_path} does not exist")
        try:  # read once for every stage of the query (index.image_memo)
            state.image_hash = image_file(image_path).sha256
        except BadImageError as err:
            raise QueryInputError(f"query {query.id}: reference image {image_path} cannot be read ({err})") from err
    if query.reference_caption:
        state.captions = [query.reference_caption]
    if query.target_text:
        state.target_descriptions = [query.target_text]
        state.description_source = "manual"
    if artifacts_dir is not None:
        state.artifacts_dir = artifacts_dir / safe_name(query.id)
    return Job(position=position, query=query, state=state, image_only=image_only)


def hand_over_to_retrieval(job: Job, retrieve: RetrieveConfig) -> None:
    """Between the description stages and retrieval: the one-stage model's reference description serves as
    the caption when there is none, and a query left without a target description retrieves with its
    modification text (description_source: modification)."""
    state = job.state
    if not state.captions and state.reference_description:
        state.captions = [state.reference_description]
    if job.image_only or retrieve.mode == "image" or retrieve.text_source not in _TARGET_TEXT_SOURCES:
        return
    if not state.target_descriptions:
        state.target_descriptions = [state.query.text]
        state.description_source = "modification"
