"""Retrieve stage: target description(s) (+ reference image) -> query vector(s) -> top-k from the gallery.

Modes and their formulas are in ``agent_cir.config.RetrieveConfig`` and ``agent_cir.fusion``; the ranking is
done by ``agent_cir.retrieval.SearchEngine`` (faiss). ``run_batch`` embeds every query text of a chunk in
one encoder call, every external reference image in one image call, and searches every query in one faiss
call; ``run`` is a batch of one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent_cir.config import RetrieveConfig
from agent_cir.errors import AgentCirError
from agent_cir.retrieval.dual import check_dual_gallery, fuse_path_rankings
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.retrieval.ranking import Ranking
from agent_cir.stages.query_vectors import query_vector
from agent_cir.stages.retrieve_plan import IMAGE_MODES, QueryInputError, QueryPlan, plan_query
from agent_cir.trace.outputs import RetrieveOutput
from agent_cir.types import QueryState, StageRecord

TRACE_HEAD = 50
"""How many entries of a ranking the trace keeps as rows (the record says how many the ranking has)."""


def _candidate_rows(ranking: Ranking, n: int) -> list[dict[str, Any]]:
    """The record's ranking rows for the first ``n`` entries, from the arrays."""
    ids = ranking.head_ids(n)
    scores = np.round(ranking.retrieval[: len(ids)], 6).tolist()
    return [{"rank": rank, "id": gallery_id, "score": score}
            for rank, (gallery_id, score) in enumerate(zip(ids, scores), start=1)]


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
        if config.mode in IMAGE_MODES and config.mode != "weimocir" and not gallery.has_images:
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

    # ---------- batched encoding ----------
    def _encode_texts(self, strings: list[str]) -> dict[str, np.ndarray]:
        """One encoder call for every string of the batch."""
        if not strings:
            return {}
        rows = np.asarray(self.encoder.encode_texts(strings), dtype=np.float32)
        return dict(zip(strings, rows))

    def _encode_images(self, plans: list[QueryPlan], failures: dict[int, BaseException]) -> None:
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

    # ---------- dual paths (formulas: agent_cir.retrieval.dual) ----------
    def _encode_edited(self, plans: list[QueryPlan], failures: dict[int, BaseException]) -> None:
        """One encoder call for every edited picture of the batch (mode dual), with the index's encoder."""
        owners = [i for i, plan in enumerate(plans)
                  if plan.mode == "dual" and i not in failures and plan.state.edited_image is not None]
        if not owners:
            return
        pictures = [plans[i].state.edited_image.picture() for i in owners]
        vectors = np.asarray(self.encoder.encode_images(pictures), dtype=np.float32)
        for i, vector in zip(owners, vectors):
            plans[i].edited_vector = vector

    def _fuse_paths(self, plans: list[QueryPlan], searched: list[int], rankings: list[Ranking],
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

    # ---------- planning and query vectors (retrieve_plan.py, query_vectors.py) ----------
    def _plan(self, state: QueryState) -> QueryPlan:
        return plan_query(self.config, self.gallery, state)

    def _query_vector(self, plan: QueryPlan, text: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        return query_vector(plan, text, self.config, self.gallery, self.caption_weight, self.paired_slots)

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
        plans: list[QueryPlan] = []
        for position, state in enumerate(states):
            try:
                plans.append(self._plan(state))
            except AgentCirError as err:
                failures[position] = err
                plans.append(QueryPlan(state=state, mode=self.config.mode))
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
