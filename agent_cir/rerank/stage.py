"""The rerank stage: the top-k candidates reordered by a judge, fused with retrieval, written to the trace.

Candidates beyond k keep their retrieval order below the reranked ones. Each reranked ``Candidate`` carries
its retrieval ``score``, ``judge_score`` and ``final_score`` (the ranking's ``judge`` / ``final`` columns), and the
ranking says it is ordered by the ``judge`` or, with fusion, the ``fused`` score. Fusion: final score
= w * retrieval + (1 - w) * judge, so that a weak judge cannot throw away a confident retrieval (w = 0:
the judge's order).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent_cir.config import RerankConfig
from agent_cir.retrieval.gallery import captions_of
from agent_cir.grid import grid_capacity
from agent_cir.rerank.aggregate import fuse_scores
from agent_cir.rerank.context import RerankContext
from agent_cir.rerank.judges import make_judge
from agent_cir.rerank.windows import check_can_progress
from agent_cir.retrieval.ranking import Ranking
from agent_cir.trace.outputs import RerankOutput
from agent_cir.types import QueryState, StageRecord


class RerankStage:
    """Reorder the top ``config.k`` candidates with an MLLM judge (grid-listwise, pointwise or logits)."""

    name = "rerank"

    def __init__(
        self,
        config: RerankConfig,
        model: Any = None,
        cache: Any = None,
        *,
        candidate_captions: Mapping[str, Any] | Callable[[str], str | None] | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.cache = cache
        self.candidate_captions = candidate_captions
        self.capacity = grid_capacity(config.grid)
        if config.method == "grid":
            grid = config.grid
            check_can_progress(self.capacity, config.k, rows=grid.rows, cols=grid.cols, reference=grid.reference)
        self.judge = make_judge(config, model, cache)

    def _caption_of(self, candidate_id: str) -> str | None:
        return next(iter(captions_of(self.candidate_captions, candidate_id, 1)), None)

    @staticmethod
    def _reference_caption(state: QueryState) -> str | None:
        if state.captions:
            return state.captions[0]
        return state.query.reference_caption

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name, output=RerankOutput())
        candidates = list(state.candidates)
        top = candidates[: self.config.k]
        if not top:
            record.skipped = "no candidates to rerank (retrieval returned none)"
            return record
        if self.model is None:
            record.skipped = f"no judge model: rerank.model {self.config.model!r} was not created"
            return record
        if all(candidate.path is None for candidate in top):
            record.skipped = (
                "candidates have no image files (caption-only gallery); the judge needs images: "
                "index an image folder with `agent-cir index` to rerank"
            )
            return record
        missing = [c.id for c in top if c.path is None or not Path(c.path).is_file()]
        if missing:
            record.notes.append(f"{len(missing)} candidate image(s) missing, shown as grey cells: {missing[:5]}")
        ctx = RerankContext(
            self.config, state, top,
            candidate_captions=[self._caption_of(c.id) for c in top] if self.config.grid.caption_strip else None,
            reference_caption=self._reference_caption(state),
        )
        order, judge_scores = self.judge.rank(ctx)

        # judge_scores are per candidate (input order), in [0, 1]; order is the judge's ranking.
        if self.config.fusion_weight > 0:
            fused = fuse_scores([c.score for c in top], judge_scores, self.config.fusion_weight)
            judge_rank = {index: position for position, index in enumerate(order)}
            final = sorted(range(len(top)), key=lambda index: (-fused[index], judge_rank[index]))
        else:
            fused, final = judge_scores, order
        reranked = [top[index] for index in final]
        ranking = state.ranking if state.ranking is not None else Ranking.from_candidates(candidates)
        state.ranking = ranking.with_head(
            final, "fused" if self.config.fusion_weight > 0 else "judge",
            judge=[float(judge_scores[index]) for index in final], final=[float(fused[index]) for index in final],
        )
        state.candidates = state.ranking.head(len(candidates))
        record.calls = ctx.calls
        statuses = {entry["status"] for entry in ctx.parsed}
        record.parse_status = (
            "fallback" if "fallback" in statuses else "repaired" if "repaired" in statuses else "ok"
        )
        grid_method = self.config.method == "grid"
        record.output = RerankOutput.model_validate({
            "method": self.config.method,
            "judge": self.judge.name,
            "k": len(top),
            "input_order": [c.id for c in top],
            "final_order": [c.id for c in reranked],
            "grids": ctx.grids,
            "parsed": ctx.parsed,
            "repairs": ctx.repairs,
            "passes": self.config.passes if grid_method else 1,
            "aggregation": self.config.aggregation if grid_method else None,
            "agreement": ctx.agreement_summary(),
            "windows": ctx.windows,
            "fusion_weight": self.config.fusion_weight,
            "scores": [
                {"id": top[index].id, "retrieval": float(top[index].score),
                 "judge": round(float(judge_scores[index]), 6), "final": round(float(fused[index]), 6)}
                for index in final
            ],
            "calls": len(ctx.calls),
            "images_sent": ctx.images_sent,
            "seconds": round(time.perf_counter() - started, 6),
        })
        record.notes.extend(ctx.notes)
        return record
