"""Judges: one interface, several ways of asking an MLLM to order candidates, chosen from a registry.

- ``grid``: listwise. Candidates tiled into numbered grids; the judge answers a ranking of cell numbers.
  ``passes`` > 1 shows the same candidates in other cell orders (pass 2 reversed, then seeded shuffles),
  maps each answer back and aggregates (Borda / RRF), recording agreement. k beyond one grid: sliding
  windows or a tournament (:mod:`agent_cir.rerank.windows`).
- ``pointwise``: one yes/no question per candidate, score = the parsed answer (1, 0, or 0.5 when
  unparsable).
- ``logits``: pointwise, score = P("yes") from the backend's next-token logits
  (:mod:`agent_cir.backends.logit_scoring`); ``method: logits`` requires them, ``method: pointwise`` uses
  this judge when the backend exposes them.

A judge returns (order, judge score per candidate in [0, 1]) and records its calls, grids, parsed answers
and repairs into the query's :class:`~agent_cir.rerank.context.RerankContext`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, Field

from agent_cir.config import JUDGE_METHODS, RerankConfig, check_registry
from agent_cir.errors import AgentCirError
from agent_cir.grid import render_grid
from agent_cir.parsing import extract_json
from agent_cir.prompts import PromptTemplate
from agent_cir.rerank.aggregate import aggregate_rankings, pass_agreement, rank_to_unit
from agent_cir.rerank.context import RerankContext
from agent_cir.rerank.judge_base import MethodJudge
from agent_cir.rerank.cotrr import CotrrJudge
from agent_cir.rerank.pairwise import PairwiseJudge
from agent_cir.rerank.parse import parse_ranking, parse_yes_no
from agent_cir.rerank.windows import listwise_order, pass_permutation
from agent_cir.types import ModelCall


class GridJudgement(BaseModel):
    """Structured-output schema of the grid judge."""

    ranking: list[int] = Field(description="Cell numbers, best match first, each exactly once.")
    reasons: dict[str, str] = Field(default_factory=dict, description="Cell number -> a few words.")


class Judge(Protocol):
    name: ClassVar[str]
    prompt: PromptTemplate

    def rank(self, ctx: RerankContext) -> tuple[list[int], list[float]]:
        """(indices into ctx.top, best first; judge score of each candidate in input order, in [0, 1])."""
        ...


class GridJudge(MethodJudge):
    name = "grid"

    def rank(self, ctx: RerankContext) -> tuple[list[int], list[float]]:
        n = len(ctx.top)
        order = listwise_order(n, ctx.capacity, self.config.overflow, self.config.window_step,
                               lambda items, kind, round_index: self._judge_window(ctx, items, kind, round_index))
        scores = rank_to_unit(n)
        judge_scores = [0.0] * n
        for position, index in enumerate(order):
            judge_scores[index] = scores[position]
        return order, judge_scores

    def _judge_window(self, ctx: RerankContext, items: list[int], kind: str, round_index: int = 0) -> list[int]:
        """Rank ``items`` (indices into ``ctx.top``) with P passes over one grid; returns window-local order."""
        window = ctx.window_counter
        ctx.window_counter += 1
        n = len(items)
        pass_rankings: list[list[int]] = []
        reference = ctx.grid_config.reference
        images_prefix = [ctx.reference_path] if (reference == "separate" and ctx.reference_path) else []
        prompt_reference = reference if (reference != "separate" or ctx.reference_path) else "none"
        use_schema = self.config.structured_output and bool(getattr(self.model, "supports_structured_output", False))
        for pass_index in range(self.config.passes):
            permutation = pass_permutation(n, pass_index, self.config.seed, window)
            shown = [items[local] for local in permutation]  # cell j+1 shows ctx.top[shown[j]]
            grid = render_grid(
                [ctx.top[index].path for index in shown],
                ctx.grid_config,
                captions=[ctx.captions[index] for index in shown] if ctx.captions else None,
                reference=ctx.reference_path,
            )
            cells = {str(j + 1): ctx.top[shown[j]].id for j in range(n)}
            entry: dict[str, Any] = {"path": None, "cells": cells, "pass": pass_index, "window": window,
                                     "kind": kind, "round": round_index}
            if ctx.state.artifacts_dir is not None:
                path = Path(ctx.state.artifacts_dir) / f"rerank_w{window:02d}_p{pass_index}{grid.suffix}"
                entry["path"] = str(grid.save(path))
            ctx.grids.append(entry)
            messages = self.prompt.render_messages(
                **ctx.variables, n_cells=n, reference=prompt_reference, has_captions=bool(ctx.captions)
            )
            call = self._invoke(ctx, messages, images_prefix + [grid.data], GridJudgement if use_schema else None)
            # Cells in retrieval order: the cell showing the best-retrieved item first.
            cell_of_local = {local: j + 1 for j, local in enumerate(permutation)}
            retrieval_cells = [cell_of_local[local] for local in range(n)]
            structured = extract_json(call.raw or "", prefer=dict) if call.params.get("structured") else None
            parsed = parse_ranking(call.raw, n, retrieval_cells, structured=structured)
            call.parse_status = parsed.status  # type: ignore[assignment]
            ctx.parsed.append({"window": window, "pass": pass_index, "status": parsed.status, **parsed.to_dict()})
            ctx.repairs.append({"window": window, "pass": pass_index, "repairs": parsed.repairs,
                                "out_of_range": parsed.out_of_range, "duplicates": parsed.duplicates,
                                "not_numbers": parsed.not_numbers, "appended": parsed.appended})
            pass_rankings.append([permutation[cell - 1] for cell in parsed.ranking])
        order, _ = aggregate_rankings(pass_rankings, self.config.aggregation, self.config.rrf_k)
        agreement = pass_agreement(pass_rankings, order)
        ctx.windows.append({"window": window, "kind": kind, "round": round_index,
                            "items": [ctx.top[i].id for i in items], "agreement": agreement,
                            "order": [ctx.top[items[local]].id for local in order]})
        return order


class PointwiseJudge(MethodJudge):
    """One yes/no call per candidate; score = the parsed answer (0.5 when unparsable)."""

    name = "pointwise"
    prompt_field = "pointwise_prompt"
    source = "text"

    def _score(self, ctx: RerankContext, messages: list[tuple[str, str]], images: list[Any]
               ) -> tuple[ModelCall, float, str]:
        call = self._invoke(ctx, messages, images, None)
        value, source = parse_yes_no(call.raw)
        return call, 0.5 if value is None else value, source

    def announce(self, ctx: RerankContext) -> None:
        ctx.notes.append(
            f"pointwise: backend {getattr(self.model, 'backend', '?')} exposes no logits; "
            "scores are parsed yes/no answers (1, 0, or 0.5 when unparsable)"
        )

    def rank(self, ctx: RerankContext) -> tuple[list[int], list[float]]:
        n = len(ctx.top)
        prefix = [ctx.reference_path] if ctx.reference_path and ctx.grid_config.reference != "none" else []
        messages = self.prompt.render_messages(**ctx.variables, has_reference=bool(prefix))
        self.announce(ctx)
        scores: list[float] = []
        for index, candidate in enumerate(ctx.top):
            if not candidate.path or not Path(candidate.path).is_file():
                # Nothing to show the judge: neutral score, recorded, instead of failing the query.
                ctx.parsed.append({"item": index, "id": candidate.id, "status": "fallback", "score": 0.5,
                                   "source": "missing_image"})
                ctx.repairs.append({"item": index, "repairs": ["missing_image_scored_0.5"]})
                scores.append(0.5)
                continue
            call, score, source = self._score(ctx, messages, prefix + [candidate.path])
            status = "ok" if source != "none" else "fallback"
            call.parse_status = status  # type: ignore[assignment]
            ctx.parsed.append({"item": index, "id": candidate.id, "status": status, "score": round(score, 6),
                               "source": source})
            ctx.repairs.append({"item": index, "repairs": [] if status == "ok" else ["unparsable_answer_scored_0.5"]})
            scores.append(score)
        order = sorted(range(n), key=lambda index: (-scores[index], index))
        ctx.windows.append({"window": 0, "kind": "pointwise", "items": [c.id for c in ctx.top],
                            "agreement": None, "order": [ctx.top[i].id for i in order]})
        return order, scores


class LogitJudge(PointwiseJudge):
    """Pointwise with score = P("yes") from the backend's next-token logits."""

    name = "logits"

    def announce(self, ctx: RerankContext) -> None:
        return None

    def _score(self, ctx: RerankContext, messages: list[tuple[str, str]], images: list[Any]
               ) -> tuple[ModelCall, float, str]:
        from agent_cir.backends.logit_scoring import yes_probability

        call, score = yes_probability(self.model, messages, prompt=self.prompt, images=images, cache=self.cache)
        ctx.add_call(call, len(images))
        return call, score, "logits"


JUDGES: dict[str, type[Any]] = {
    judge.name: judge for judge in (GridJudge, PointwiseJudge, LogitJudge, PairwiseJudge, CotrrJudge)}
"""Judge name (``rerank.method``) -> class; the names are declared in ``agent_cir/config/names.py`` JUDGE_METHODS,
which the recipe schema validates against (checked equal on import). ``pointwise`` asks for P(yes) from
next-token logits when the backend exposes them (the ``logits`` judge), else parses the answer; ``logits``
requires them. ``pairwise`` (ImageScope's evaluator) and ``cotrr`` (CoTRR's listwise call) live in their own
modules (``rerank/pairwise.py``, ``rerank/cotrr.py``)."""
check_registry("rerank judges", JUDGE_METHODS, JUDGES, "agent_cir/rerank/judges.py JUDGES")


class JudgeBackendError(AgentCirError, ValueError):
    """The judge a recipe names cannot run on the model it gives the judge."""


def judge_name(config: RerankConfig, model: Any) -> str:
    """The judge that runs ``config.method`` on ``model`` (``pointwise`` becomes ``logits`` where it can)."""
    from agent_cir.backends.logit_scoring import supports_yes_probability

    if config.method == "pointwise":
        return "logits" if supports_yes_probability(model) else "pointwise"
    if config.method == "logits" and not supports_yes_probability(model):
        raise JudgeBackendError(
            f"rerank.method logits reads P(yes) from next-token logits, which model "
            f"{getattr(model, 'id', type(model).__name__)} does not expose (a local hf: or hf-vlm: model does); "
            "use rerank.method: pointwise (parsed yes/no answers) or grid"
        )
    return config.method


def judge_prompt_name(config: RerankConfig) -> str:
    """The template the judge of ``config.method`` renders (pointwise judges: ``pointwise_prompt``)."""
    return getattr(config, JUDGES[config.method].prompt_field)


def make_judge(config: RerankConfig, model: Any, cache: Any) -> Any:
    return JUDGES[judge_name(config, model)](config, model, cache)
