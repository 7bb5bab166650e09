"""Retrieve stage: target description(s) (+ reference image) -> query vector(s) -> top-k from the gallery.

Modes and their formulas are in ``agent_cir.config.RetrieveConfig`` and ``agent_cir.fusion``; the ranking is
done by ``agent_cir.retrieval.SearchEngine`` (faiss). ``run_batch`` embeds every query text of a chunk in
one encoder call, every external reference image in one image call, and searches every query in one faiss
call; ``run`` is a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent_cir.config import RetrieveConfig
from agent_cir.errors import AgentCirError
from agent_cir.fusion import (
    mean_embedding,
    mean_score_query,
    normalise,
    pdv_fused,
    sqaf_query,
    weighted_fusion,
    weimocir_query,
)
from agent_cir.retrieval.dual import check_dual_gallery, dual_query_rows, fuse_path_rankings
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.retrieval import composite_query
from agent_cir.retrieval.ranking import Ranking
from agent_cir.trace.outputs import RetrieveOutput
from agent_cir.types import QueryState, StageRecord

_IMAGE_MODES = ("image", "fusion", "pdv", "weimocir", "sqaf")


TRACE_HEAD = 50
"""How many entries of a ranking the trace keeps as rows (the record says how many the ranking has)."""


def _candidate_rows(ranking: Ranking, n: int) -> list[dict[str, Any]]:
    """The record's ranking rows for the first ``n`` entries, from the arrays."""
    ids = ranking.head_ids(n)
    scores = np.round(ranking.retrieval[: len(ids)], 6).tolist()
    return [{"rank": rank, "id": gallery_id, "score": score}
            for rank, (gallery_id, score) in enumerate(zip(ids, scores), start=1)]


class QueryInputError(AgentCirError):
    """A query cannot be run as given (missing reference image, no text)."""


def _join_caption_and_modification(caption: str, modification: str) -> str:
    return f"{caption.strip().rstrip('.')}. {modification.strip()}"


def _non_blank(texts: list[str]) -> list[str]:
    return [t for t in texts if t and t.strip()]


@dataclass
class _Plan:
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


class RetrieveStage:
    name = "retrieve"

    def __init__(self, config: RetrieveConfig, encoder: Any, gallery: RetrievalGallery, *,
                 head: int | None = None) -> None:
        self.config = config
        self.head = head
        """Entries of the ranking built as objects (and written to the record): the most any later stage reads
        (the pipeline sets it); None: all k."""
        self.encoder = encoder
        self.gallery = gallery
        captions_config = config.gallery_captions
        if captions_config is not None:
            self.caption_weight = captions_config.weight
        else:
            # A captions-only gallery can only be scored through its captions.
            self.caption_weight = 0.0 if gallery.has_images else 1.0
        if config.mode == "weimocir" and captions_config is None:
            raise AgentCirError(
                "retrieve.mode 'weimocir' scores gallery captions: set retrieve.gallery_captions (its weight is "
                "WeiMoCIR's beta, 0.1 in the paper's CLIP setting) and pass the captions file"
            )
        if self.caption_weight > 0 and not gallery.has_captions:
            raise AgentCirError(
                "retrieve.gallery_captions is set but the gallery has no captions attached; "
                "build the gallery with its captions file (RetrievalGallery.with_captions)"
            )
        if self.caption_weight < 1.0 and not gallery.has_images:
            raise AgentCirError(
                f"the gallery ({gallery.source or 'captions only'}) has no image embeddings, so "
                f"retrieve.gallery_captions.weight must be 1.0 (it is {self.caption_weight}); "
                "or index the images with `agent-cir index` and pass --index"
            )
        if config.mode in _IMAGE_MODES and config.mode != "weimocir" and not gallery.has_images:
            # Caption-only galleries live in a text space: there is no reference image vector to fuse.
            raise AgentCirError(
                f"retrieve.mode {config.mode!r} needs image embeddings, but this gallery is captions only; "
                "use mode: text"
            )
        paired = config.mode == "weimocir" or (captions_config is not None and captions_config.pairing == "paired")
        self.paired_slots: int | None = None
        if paired and gallery.has_captions:
            self.paired_slots = (captions_config.per_item if captions_config else None) or gallery.captions_per_item
        if config.mode == "dual":
            check_dual_gallery(gallery.has_images, self.caption_weight, self.paired_slots)
        self.search_settings: dict[str, float] = {}
        if gallery.has_images and (config.nprobe or config.ef_search or config.faiss_params):
            self.search_settings = gallery.engine.configure(config.nprobe, config.ef_search, config.faiss_params)

    # ---------- query texts ----------
    def _query_texts(self, state: QueryState, notes: list[str]) -> list[str]:
        query = state.query
        source = self.config.text_source
        captions = state.captions or ([query.reference_caption] if query.reference_caption else [])
        if source in ("target", "target+modification"):
            descriptions = _non_blank(list(state.target_descriptions))
            if self.config.max_descriptions is not None:
                descriptions = descriptions[: self.config.max_descriptions]
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
            return _non_blank([query.text])
        if not captions:
            raise QueryInputError(
                f"query {query.id}: retrieve.text_source is {source!r} but the query has no caption "
                "(enable the caption stage or supply reference_caption)"
            )
        if source == "caption":
            return list(captions)
        if not query.text.strip():
            return list(captions)
        return [_join_caption_and_modification(caption, query.text) for caption in captions]

    # ---------- planning (no model calls) ----------
    def _reference_positions(self, state: QueryState) -> tuple[int | None, list[int]]:
        """The reference's gallery position (to reuse its embedding) and every position holding a copy."""
        gallery = self.gallery
        query = state.query
        position = gallery.position(query.reference_id) if query.reference_id is not None else None
        copies = set(gallery.copies_of(position)) if position is not None else set()
        by_hash = gallery.positions_of_hash(state.image_hash)
        copies.update(by_hash)
        if position is None and by_hash:
            position = by_hash[0]
        return position, sorted(copies)

    def _restriction(self, state: QueryState, notes: list[str]) -> list[int] | None:
        wanted = state.query.candidate_ids
        if wanted is None:
            return None
        positions = [self.gallery.position(gallery_id) for gallery_id in wanted]
        missing = [gallery_id for gallery_id, pos in zip(wanted, positions) if pos is None]
        if missing:
            notes.append(f"{len(missing)} candidate ids are not in the gallery: {', '.join(missing[:5])}")
        return [pos for pos in positions if pos is not None]

    def _plan(self, state: QueryState) -> _Plan:
        config = self.config
        query = state.query
        plan = _Plan(state=state, mode=config.mode)
        plan.reference_position, copies = self._reference_positions(state)
        if config.exclude_reference:
            if config.exclude_reference_by == "id":
                by_id = self.gallery.position(query.reference_id) if query.reference_id is not None else None
                plan.excluded = [by_id] if by_id is not None else []
            else:
                plan.excluded = copies
        plan.restrict = self._restriction(state, plan.notes)
        has_image = (plan.reference_position is not None and self.gallery.has_images) or bool(query.image)
        if plan.mode in ("weimocir", "sqaf"):
            plan.texts = _non_blank([query.text]) if plan.mode == "sqaf" else self._query_texts(state, plan.notes)
        elif plan.mode != "image":
            plan.texts = self._query_texts(state, plan.notes)
        if plan.mode != "image" and not plan.texts:
            if has_image and self.gallery.has_images:
                plan.notes.append("the modification text is empty: retrieving with the reference image alone")
                plan.mode = "image"
            else:
                raise QueryInputError(
                    f"query {query.id}: no text to retrieve with (the modification text is empty and no target "
                    "description exists); give a modification text, or a reference image"
                )
        captions = _non_blank(state.captions or ([query.reference_caption] if query.reference_caption else []))
        if plan.mode == "pdv":
            if captions:
                plan.reference_texts = captions
            else:
                plan.notes.append("pdv needs a reference caption and none exists: used weighted fusion instead")
                plan.mode = "fusion"
        if plan.mode == "sqaf":
            plan.target_texts = _non_blank(list(state.target_descriptions))[: config.max_descriptions]
            if not plan.target_texts:
                plan.notes.append("no target caption was produced: SQAF used the composed image+text query alone")
        if plan.mode == "weimocir":
            in_gallery = plan.reference_position is not None and len(self.gallery.caption_rows_of(plan.reference_position))
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
        if plan.mode in _IMAGE_MODES or plan.average_reference:
            if plan.reference_position is None or not self.gallery.has_images:
                if not query.image:
                    raise QueryInputError(
                        f"query {query.id}: retrieve.mode {plan.mode!r} needs a reference image; pass --image "
                        "or use mode: text"
                    )
                plan.image_file = str(query.image)
        return plan

    # ---------- batched encoding ----------
    def _encode_texts(self, strings: list[str]) -> dict[str, np.ndarray]:
        """One encoder call for every string of the batch."""
        if not strings:
            return {}
        rows = np.asarray(self.encoder.encode_texts(strings), dtype=np.float32)
        return dict(zip(strings, rows))

    def _encode_images(self, plans: list[_Plan], failures: dict[int, BaseException]) -> None:
        from agent_cir.index.image_memo import image_file
        from agent_cir.index.reasons import BadImageError

        pictures, owners = [], []
        for position, plan in enumerate(plans):
            if plan.image_file is None or position in failures:
                continue
            try:
                pictures.append(image_file(plan.image_file).rgb())  # the query's one decode, shared
            except BadImageError as err:
                failures[position] = QueryInputError(
                    f"query {plan.state.query.id}: cannot read reference image {plan.image_file}: {err}"
                )
                failures[position].__cause__ = err
                continue
            owners.append(position)
        if not pictures:
            return
        vectors = np.asarray(self.encoder.encode_images(pictures), dtype=np.float32)
        for position, vector in zip(owners, vectors):
            plans[position].image_vector = vector

    def _gallery_image(self, plan: _Plan) -> np.ndarray:
        # A twins gallery searches real + twin vectors, but a reference image is its real picture.
        real = getattr(self.gallery, "real_embeddings", None)
        source = real if real is not None else self.gallery.image_embeddings
        return np.asarray(source[plan.reference_position], dtype=np.float32)

    # ---------- query vectors ----------
    def _text_query(self, vectors: np.ndarray) -> np.ndarray:
        if self.config.description_scoring == "mean_score":
            return mean_score_query(vectors)
        return mean_embedding(vectors)

    def _query_vector(self, plan: _Plan, text: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        """The search row for one plan, laid out for the engine's structure; plus record fields."""
        config = self.config
        extra: dict[str, Any] = {}
        image = plan.image_vector
        if (plan.mode in _IMAGE_MODES or plan.average_reference) and image is None:
            image = self._gallery_image(plan)
        stack = (lambda strings: np.stack([text[s] for s in strings])) if text else None
        if plan.mode == "weimocir":
            # The official code fuses raw CLIP projections; encoders and indexes here hold unit vectors, so
            # both sides are unit vectors (the recipe's declared difference; the record says raw_projections).
            modification = mean_embedding(stack(plan.texts))
            image_query = weimocir_query(normalise(image), modification, config.alpha)
            slots = self.paired_slots or 1
            if plan.reference_texts:
                reference_captions = normalise(stack(plan.reference_texts))
            else:
                reference_captions = normalise(self.gallery.caption_rows_of(plan.reference_position))
            # Slot j pairs the reference's j-th caption with each item's j-th caption (official
            # validate_clip.py:107-123); a reference with fewer captions reuses the mean of its own.
            fill = reference_captions.mean(axis=0)
            rows = [reference_captions[j] if j < len(reference_captions) else fill for j in range(slots)]
            caption_queries = np.stack([weimocir_query(row, modification, config.alpha) for row in rows])
            query = composite_query(image_query, caption_queries, self.caption_weight, self.gallery.has_images)
            extra.update({"alpha": config.alpha, "pairing": "paired", "captions_per_item": slots,
                          "raw_projections": False})
            return query, extra
        if plan.mode == "dual":
            return self._dual_query(plan, text, stack)
        if plan.mode == "image":
            query = normalise(image if image is not None else self._gallery_image(plan))
        elif plan.mode == "text":
            query = self._text_query(stack(plan.texts))
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
        if self.paired_slots is not None:
            # A paired gallery layout: the same query scores every caption slot.
            query = composite_query(query, np.repeat(query[None, :], self.paired_slots, axis=0),
                                    self.caption_weight, self.gallery.has_images)
        return query, extra

    # ---------- dual paths (formulas: agent_cir.retrieval.dual) ----------
    def _encode_edited(self, plans: list[_Plan], failures: dict[int, BaseException]) -> None:
        """One encoder call for every edited picture of the batch (mode dual), with the index's encoder."""
        owners = [i for i, plan in enumerate(plans)
                  if plan.mode == "dual" and i not in failures and plan.state.edited_image is not None]
        if not owners:
            return
        pictures = [plans[i].state.edited_image.picture() for i in owners]
        vectors = np.asarray(self.encoder.encode_images(pictures), dtype=np.float32)
        for i, vector in zip(owners, vectors):
            plans[i].edited_vector = vector

    def _dual_query(self, plan: _Plan, text: dict[str, np.ndarray], stack: Any) -> tuple[np.ndarray, dict]:
        config = self.config
        description = text[plan.description] if plan.description else None
        rows = dual_query_rows(mean_embedding(stack(plan.texts)), plan.edited_vector, description,
                               config.dual_fusion, config.dual_weight)
        extra: dict[str, Any] = {"dual_weight": config.dual_weight, "dual_fusion": config.dual_fusion}
        if plan.description:
            extra["edited_description"] = plan.description
        return rows, extra

    def _fuse_paths(self, plans: list[_Plan], searched: list[int], rankings: list[Ranking],
                    extras: dict[int, dict[str, Any]]) -> tuple[list[int], list[Ranking]]:
        """One ranking per query: the two path rankings of an rrf / wiser dual query fused into one."""
        config = self.config
        owners: list[int] = []
        fused: list[Ranking] = []
        position = 0
        while position < len(searched):
            i = searched[position]
            two = position + 1 < len(searched) and searched[position + 1] == i
            if not two:
                owners.append(i)
                fused.append(rankings[position])
                position += 1
                continue
            ranking, paths = fuse_path_rankings(rankings[position], rankings[position + 1], config.dual_fusion,
                                                config.dual_weight, config.dual_rrf_k)
            fused.append(ranking)
            extras[i]["paths"] = {name: ids[: TRACE_HEAD] for name, ids in paths.items()}
            if config.dual_fusion == "wiser":
                plans[i].state.dual_paths.append({"round": plans[i].state.round, **paths})
            owners.append(i)
            position += 2
        return owners, fused

    # ---------- run ----------
    def run(self, state: QueryState) -> StageRecord:
        outcome = self.run_batch([state])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def run_batch(self, states: list[QueryState]) -> list[StageRecord | BaseException]:
        """One record per state (same order), or the exception that made that query fail. All query texts go
        to the encoder in one call, all external reference images in one call, all searches in one faiss call."""
        failures: dict[int, BaseException] = {}
        plans: list[_Plan] = []
        for position, state in enumerate(states):
            try:
                plans.append(self._plan(state))
            except AgentCirError as err:
                failures[position] = err
                plans.append(_Plan(state=state, mode=self.config.mode))
        live = [i for i in range(len(states)) if i not in failures]
        strings = list(dict.fromkeys(
            s for i in live for s in (*plans[i].texts, *plans[i].reference_texts, *plans[i].target_texts,
                                      *([plans[i].description] if plans[i].description else []))
        ))
        text = self._encode_texts(strings)
        self._encode_images(plans, failures)
        self._encode_edited(plans, failures)
        extras: dict[int, dict[str, Any]] = {}
        rows: list[np.ndarray] = []
        searched: list[int] = []
        for i in live:
            if i in failures:
                continue
            try:
                query, extras[i] = self._query_vector(plans[i], text)
            except (AgentCirError, ValueError) as err:
                failures[i] = err if isinstance(err, AgentCirError) else QueryInputError(
                    f"query {plans[i].state.query.id}: {err}"
                )
                continue
            for row in np.atleast_2d(query):  # a dual rrf / wiser query searches two rows, one per path
                rows.append(row)
                searched.append(i)
        rankings = []
        if searched:
            rankings = self.gallery.engine.search(
                np.stack(rows),
                self.config.k,
                caption_weight=self.caption_weight,
                paired_slots=self.paired_slots,
                exclude=[plans[i].excluded for i in searched],
                restrict=[plans[i].restrict for i in searched],
            )
            searched, rankings = self._fuse_paths(plans, searched, rankings, extras)
        structure = self.gallery.engine.describe(self.caption_weight, self.paired_slots) if searched else ""
        outcomes: list[StageRecord | BaseException] = [failures.get(i) for i in range(len(states))]  # type: ignore[misc]
        for i, ranking in zip(searched, rankings):
            plan = plans[i]
            plan.state.ranking = ranking
            plan.state.candidates = ranking.head(self.head)
            output: dict[str, Any] = {
                "mode": plan.mode,
                "k": self.config.k,
                "query_texts": plan.texts,
                "caption_weight": self.caption_weight,
                "excluded": [self.gallery.ids[p] for p in plan.excluded],
                "candidates": _candidate_rows(ranking, len(ranking) if self.head is None else self.head),
                "candidates_total": len(ranking),
                "search": structure,
            }
            if self.search_settings:
                output["search_settings"] = dict(self.search_settings)
            if plan.restrict is not None:
                output["restricted_to"] = len(plan.restrict)
            if plan.mode == "text" and len(plan.texts) > 1:
                output["description_scoring"] = self.config.description_scoring
            output.update(extras.get(i, {}))
            if plan.mode == "weimocir":
                plan.notes.append("WeiMoCIR fuses raw CLIP projections; agent_cir fuses unit vectors (the recipe's "
                                  "declared difference)")
            outcomes[i] = StageRecord(stage=self.name, output=RetrieveOutput.model_validate(output), notes=plan.notes)
        return outcomes
