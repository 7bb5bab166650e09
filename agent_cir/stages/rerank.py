"""Rerank stage: the top-k candidates, tiled into numbered grids, ordered by an MLLM judge.

One grid image holds up to rows x cols candidates; the judge sees the reference (as its own first image by
default) and the grid, reasons briefly per cell and answers ``{"ranking": [...], "reasons": {...}}``.
Everything the model says goes through :func:`parse_ranking`, which never raises: out-of-range numbers
and duplicates are dropped, left-out cells are appended in retrieval order, and an answer with no usable
ranking keeps the retrieval order; each repair is recorded.

Beyond one call:
- position bias: ``passes`` > 1 shows the same candidates in other cell orders (pass 2 reversed, then
  seeded shuffles), maps each answer back to candidates and aggregates (Borda or reciprocal rank);
  agreement between passes (mean Kendall tau, top-1 agreement) goes into the trace;
- k beyond one grid: sliding windows from the bottom of the list up (RankGPT) or a tournament of grids;
- fusion: final score = w * retrieval + (1 - w) * judge, so that a weak judge cannot throw away a
  confident retrieval (w = 0: the judge's order);
- ``method: pointwise``: one call per candidate, score = P("yes") from the logits when the backend is a
  local transformers model that exposes them, else the parsed yes/no answer.

Candidates beyond k keep their retrieval order below the reranked ones. ``Candidate.score`` stays the
retrieval score; the judge and fused scores are in the trace (``output["scores"]``).
"""

from __future__ import annotations

import itertools
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent_cir.config import GridConfig, RerankConfig
from agent_cir.grid import grid_capacity, render_grid
from agent_cir.parsing import extract_json
from agent_cir.prompts import load_prompt
from agent_cir.types import Candidate, ModelCall, QueryState, StageRecord

# ----------------------------------------------------------------------------------------------------
# Parsing a judge's answer into a full ranking of cells
# ----------------------------------------------------------------------------------------------------

_RANKING_KEYS = ("ranking", "rank", "ranks", "order", "final_ranking", "final_order", "answer", "result")
_NUMBER_ITEM = re.compile(r"^\s*(?:cell|image|candidate|img|no\.?|#)?\s*#?\s*(\d+)\s*[.)]?\s*$", re.IGNORECASE)
_NUM = r"(?:(?:cell|image|candidate|#)\s*)?\d+"
_SEP = r"\s*(?:>>?|->|→|,|;|\s)\s*"
_SEQUENCE = re.compile(rf"^\s*[\[(]?\s*({_NUM}(?:{_SEP}{_NUM})*)\s*[\])]?\s*\.?\s*$", re.IGNORECASE)
_FINAL_ANSWER = re.compile(
    r"(?:final\s+answer|final\s+ranking|ranking|answer|order)\s*(?:is)?\s*[:=\-]\s*(.+)", re.IGNORECASE
)
_ARROW_CHAIN = re.compile(rf"{_NUM}(?:\s*(?:>>?|->|→)\s*{_NUM})+", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


@dataclass
class ParsedRanking:
    """A judge answer turned into a full ranking of cell numbers, and how it got there."""

    ranking: list[int]
    """Every cell number 1..n exactly once, best first."""
    source: str
    """Where the ranking came from: structured | json | fenced_json | embedded_json | final_answer |
    arrow_chain | number_list | none (nothing usable: retrieval order)."""
    given: list[Any] = field(default_factory=list)
    """The items the model gave, before repair."""
    out_of_range: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    not_numbers: list[str] = field(default_factory=list)
    appended: list[int] = field(default_factory=list)
    """Cells the model left out, appended in retrieval order."""
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def fallback(self) -> bool:
        return self.source == "none"

    @property
    def repairs(self) -> list[str]:
        """Names of the repairs made, in the order they were applied (empty: the answer was used as given)."""
        done: list[str] = []
        if self.not_numbers:
            done.append("dropped_not_numbers")
        if self.out_of_range:
            done.append("dropped_out_of_range")
        if self.duplicates:
            done.append("dropped_duplicates")
        if self.fallback:
            done.append("fallback_retrieval_order")
        elif self.appended:
            done.append("appended_missing")
        return done

    @property
    def status(self) -> str:
        if self.fallback:
            return "fallback"
        return "repaired" if self.repairs else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": self.ranking,
            "source": self.source,
            "given": self.given,
            "repairs": self.repairs,
            "out_of_range": self.out_of_range,
            "duplicates": self.duplicates,
            "not_numbers": self.not_numbers,
            "appended": self.appended,
            "reasons": self.reasons,
        }


def _coerce_item(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str):
        match = _NUMBER_ITEM.match(item)
        if match:
            return int(match.group(1))
    if isinstance(item, Mapping):  # [{"cell": 3, ...}, ...]
        for key in ("cell", "id", "number", "index", "candidate"):
            if key in item:
                return _coerce_item(item[key])
    return None


def _ranking_from_json(value: Any) -> tuple[list[Any] | None, dict[str, str]]:
    """The ranking list (and reasons) inside a parsed JSON value, searching nested objects."""
    if isinstance(value, list):
        return value, {}
    if not isinstance(value, Mapping):
        return None, {}
    reasons_raw = value.get("reasons") or value.get("reasoning") or {}
    reasons = (
        {str(k): str(v) for k, v in reasons_raw.items()} if isinstance(reasons_raw, Mapping) else {}
    )
    lowered = {str(k).lower(): v for k, v in value.items()}
    for key in _RANKING_KEYS:
        found = lowered.get(key)
        if isinstance(found, list):
            return found, reasons
        if isinstance(found, str) and _DIGITS.search(found):
            return _split_sequence(found), reasons
        if isinstance(found, (int, float)) and not isinstance(found, bool):
            return [found], reasons
    for nested in value.values():
        if isinstance(nested, Mapping):
            items, nested_reasons = _ranking_from_json(nested)
            if items is not None:
                return items, reasons or nested_reasons
    return None, reasons


def _split_sequence(text: str) -> list[Any]:
    return [int(d) for d in _DIGITS.findall(text)]


def _find_items(text: str, structured: Any = None) -> tuple[list[Any] | None, str, dict[str, str]]:
    """Locate the ranking in a model answer: the first form that yields one wins."""
    if structured is not None:
        items, reasons = _ranking_from_json(structured if not isinstance(structured, BaseModel)
                                            else structured.model_dump())
        if items:
            return items, "structured", reasons
    stripped = (text or "").strip()
    if not stripped:
        return None, "none", {}
    whole = extract_json(stripped, prefer=None) if stripped[:1] in "[{" else None
    if whole is not None and stripped[:1] in "[{":
        items, reasons = _ranking_from_json(whole)
        if items:
            return items, "json", reasons
    for fenced in _FENCE.findall(stripped):
        value = extract_json(fenced.strip(), prefer=None)
        items, reasons = _ranking_from_json(value)
        if items:
            return items, "fenced_json", reasons
    embedded = extract_json(stripped, prefer=dict)
    if isinstance(embedded, Mapping):
        items, reasons = _ranking_from_json(embedded)
        if items:
            return items, "embedded_json", reasons
    # "Final answer: 3 > 1 > 7" (the last such line wins: models restate their answer at the end)
    for line in reversed(stripped.splitlines()):
        match = _FINAL_ANSWER.search(line)
        if match:
            sequence = _SEQUENCE.match(match.group(1).strip().rstrip("."))
            if sequence:
                return _split_sequence(sequence.group(1)), "final_answer", {}
    chains = _ARROW_CHAIN.findall(stripped)
    if chains:
        return _split_sequence(chains[-1]), "arrow_chain", {}
    # A bare list of numbers: the whole answer, or its last line.
    lines = [line for line in stripped.splitlines() if line.strip()]
    for candidate in (stripped, lines[-1] if lines else ""):
        sequence = _SEQUENCE.match(candidate)
        if sequence:
            return _split_sequence(sequence.group(1)), "number_list", {}
    return None, "none", {}


def parse_ranking(
    text: str | None,
    n_cells: int,
    retrieval_order: Sequence[int] | None = None,
    structured: Any = None,
) -> ParsedRanking:
    """Turn a judge's answer into a full ranking of cells ``1..n_cells``; never raises.

    ``retrieval_order``: the cell numbers ordered by their candidates' retrieval rank (default 1..n);
    cells the model leaves out are appended in this order, and it is the whole answer when nothing in the
    text is usable. ``structured``: a parsed structured-output object, tried first.
    """
    order = list(retrieval_order) if retrieval_order is not None else list(range(1, n_cells + 1))
    try:
        items, source, reasons = _find_items(text or "", structured)
    except Exception:  # a parser bug must never fail a query: treat the answer as unusable
        items, source, reasons = None, "none", {}
    parsed = ParsedRanking(ranking=[], source=source, reasons=reasons)
    if items is None:
        parsed.source = "none"
        parsed.ranking = order
        return parsed
    parsed.given = [item if isinstance(item, (int, float, str)) else str(item) for item in items]
    seen: set[int] = set()
    for item in items:
        number = _coerce_item(item)
        if number is None:
            parsed.not_numbers.append(str(item))
        elif not 1 <= number <= n_cells:
            parsed.out_of_range.append(number)
        elif number in seen:
            parsed.duplicates.append(number)
        else:
            seen.add(number)
            parsed.ranking.append(number)
    if not parsed.ranking:
        parsed.source = "none"
        parsed.ranking = order
        return parsed
    parsed.appended = [cell for cell in order if cell not in seen]
    parsed.ranking.extend(parsed.appended)
    return parsed


# ----------------------------------------------------------------------------------------------------
# Aggregating passes, agreement, windows, fusion
# ----------------------------------------------------------------------------------------------------


def aggregate_rankings(
    rankings: Sequence[Sequence[int]], method: str = "borda", rrf_k: int = 60
) -> tuple[list[int], dict[int, float]]:
    """Combine full rankings of the items ``0..n-1`` (best first) into one.

    borda: an item at 0-based position p of n earns n - 1 - p points per ranking.
    rrf: an item at 1-based rank r earns 1 / (rrf_k + r) per ranking.
    Ties go to the item with the smaller index (the retrieval order). Returns (order, scores).
    """
    if not rankings:
        raise ValueError("aggregate_rankings needs at least one ranking")
    n = len(rankings[0])
    scores = {item: 0.0 for item in range(n)}
    for ranking in rankings:
        if sorted(ranking) != list(range(n)):
            raise ValueError(f"not a full ranking of 0..{n - 1}: {list(ranking)}")
        for position, item in enumerate(ranking):
            if method == "borda":
                scores[item] += n - 1 - position
            elif method == "rrf":
                scores[item] += 1.0 / (rrf_k + position + 1)
            else:
                raise ValueError(f"unknown aggregation {method!r} (borda or rrf)")
    order = sorted(range(n), key=lambda item: (-scores[item], item))
    return order, scores


def kendall_tau(first: Sequence[int], second: Sequence[int]) -> float:
    """Kendall rank correlation of two full rankings of the same items: 1 same order, -1 reversed."""
    if sorted(first) != sorted(second):
        raise ValueError("kendall_tau needs two rankings of the same items")
    n = len(first)
    if n < 2:
        return 1.0
    position = {item: index for index, item in enumerate(second)}
    concordant = discordant = 0
    for a, b in itertools.combinations(first, 2):  # a before b in ``first``
        if position[a] < position[b]:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / (n * (n - 1) / 2)


def pass_agreement(rankings: Sequence[Sequence[int]], aggregated: Sequence[int]) -> dict[str, float] | None:
    """How much the passes agree: mean pairwise Kendall tau and the share of passes whose top-1 is the
    aggregated top-1. None with a single pass."""
    if len(rankings) < 2:
        return None
    taus = [kendall_tau(a, b) for a, b in itertools.combinations(rankings, 2)]
    top1 = sum(1 for ranking in rankings if ranking[0] == aggregated[0]) / len(rankings)
    return {"kendall_tau_mean": round(sum(taus) / len(taus), 6), "top1_agreement": round(top1, 6)}


def pass_permutation(n: int, pass_index: int, seed: int, window: int) -> list[int]:
    """Display order for a pass: item shown in cell j+1 is ``perm[j]``. Pass 0 keeps retrieval order,
    pass 1 reverses it (the strongest position-bias contrast), later passes are seeded shuffles."""
    order = list(range(n))
    if pass_index == 0:
        return order
    if pass_index == 1:
        return order[::-1]
    rng = random.Random(f"agent_cir-rerank:{seed}:{window}:{pass_index}")  # str seeds are stable across runs
    rng.shuffle(order)
    return order


def sliding_windows(n: int, size: int, step: int) -> list[tuple[int, int]]:
    """RankGPT windows ``[start, end)`` from the bottom of a list of n up to the top; the last starts at 0."""
    if size < 1 or step < 1:
        raise ValueError("window size and step must be at least 1")
    if n <= size:
        return [(0, n)]
    windows: list[tuple[int, int]] = []
    end = n
    while True:
        start = max(0, end - size)
        windows.append((start, end))
        if start == 0:
            return windows
        end -= step


def fuse_scores(
    retrieval: Sequence[float], judge: Sequence[float], weight: float
) -> list[float]:
    """w * minmax(retrieval) + (1 - w) * judge, with judge scores already in [0, 1]."""
    low, high = min(retrieval), max(retrieval)
    spread = high - low
    scaled = [(score - low) / spread if spread > 0 else 1.0 for score in retrieval]
    return [weight * r + (1.0 - weight) * j for r, j in zip(scaled, judge)]


def rank_to_unit(n: int) -> list[float]:
    """Judge scores for ranks 1..n: 1 for the best, 0 for the worst (1 for a single item)."""
    if n == 1:
        return [1.0]
    return [1.0 - position / (n - 1) for position in range(n)]


_YES = re.compile(r"\b(yes|true|match(?:es)?)\b", re.IGNORECASE)
_NO = re.compile(r"\b(no|false|not?\s+a\s+match|does\s+not)\b", re.IGNORECASE)


def parse_yes_no(text: str | None) -> tuple[float | None, str]:
    """1.0 for yes, 0.0 for no, None when neither (or both, ambiguously) appears; and where it was found."""
    stripped = (text or "").strip()
    if not stripped:
        return None, "none"
    value = extract_json(stripped, prefer=dict)
    if isinstance(value, Mapping):
        for key in ("answer", "match", "matches", "is_match", "verdict"):
            if key in value:
                found = value[key]
                if isinstance(found, bool):
                    return (1.0 if found else 0.0), "json"
                if isinstance(found, str):
                    word = found.strip().lower()
                    if word.startswith("yes"):
                        return 1.0, "json"
                    if word.startswith("no"):
                        return 0.0, "json"
    first_word = re.match(r"\W*(\w+)", stripped)
    if first_word:
        word = first_word.group(1).lower()
        if word in ("yes", "true"):
            return 1.0, "first_word"
        if word in ("no", "false"):
            return 0.0, "first_word"
    yes, no = _YES.search(stripped), _NO.search(stripped)
    if yes and not no:
        return 1.0, "text"
    if no and not yes:
        return 0.0, "text"
    return None, "none"


# ----------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------


class GridJudgement(BaseModel):
    """Structured-output schema of the grid judge."""

    ranking: list[int] = Field(description="Cell numbers, best match first, each exactly once.")
    reasons: dict[str, str] = Field(default_factory=dict, description="Cell number -> a few words.")


class RerankStage:
    """Reorder the top ``config.k`` candidates with an MLLM judge (grid-listwise or pointwise)."""

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
        self.grid_prompt = load_prompt(config.prompt)
        self.pointwise_prompt = load_prompt(config.pointwise_prompt)
        capacity = grid_capacity(config.grid)
        if capacity < 1:
            raise ValueError("rerank.grid: a 1x1 grid with reference='cell' leaves no cell for candidates")
        self.capacity = capacity

    # ----- helpers -----
    def _caption_of(self, candidate_id: str) -> str | None:
        source = self.candidate_captions
        if source is None:
            return None
        value = source(candidate_id) if callable(source) else source.get(candidate_id)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return str(value) if value else None

    @staticmethod
    def _reference_caption(state: QueryState) -> str | None:
        if state.captions:
            return state.captions[0]
        return state.query.reference_caption

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name)
        candidates = list(state.candidates)
        top, rest = candidates[: self.config.k], candidates[self.config.k :]
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
        run = _RerankRun(self, state, top)
        if self.config.method == "pointwise":
            order, judge_scores = run.pointwise()
        else:
            order, judge_scores = run.listwise()

        # judge_scores are per candidate (input order), in [0, 1]; order is the judge's ranking.
        if self.config.fusion_weight > 0:
            fused = fuse_scores([c.score for c in top], judge_scores, self.config.fusion_weight)
            judge_rank = {index: position for position, index in enumerate(order)}
            final = sorted(range(len(top)), key=lambda index: (-fused[index], judge_rank[index]))
        else:
            fused, final = judge_scores, order
        reranked = [top[index] for index in final]
        state.candidates = [
            Candidate(id=c.id, score=c.score, path=c.path, rank=rank)
            for rank, c in enumerate(reranked + rest, start=1)
        ]
        record.calls = run.calls
        statuses = {entry["status"] for entry in run.parsed}
        record.parse_status = (
            "fallback" if "fallback" in statuses else "repaired" if "repaired" in statuses else "ok"
        )
        record.output = {
            "method": self.config.method,
            "k": len(top),
            "input_order": [c.id for c in top],
            "final_order": [c.id for c in reranked],
            "grids": run.grids,
            "raw": [call.raw for call in run.calls],
            "parsed": run.parsed,
            "repairs": run.repairs,
            "passes": self.config.passes if self.config.method == "grid" else 1,
            "aggregation": self.config.aggregation if self.config.method == "grid" else None,
            "agreement": run.agreement_summary(),
            "windows": run.windows,
            "fusion_weight": self.config.fusion_weight,
            "scores": [
                {"id": top[index].id, "retrieval": float(top[index].score),
                 "judge": round(float(judge_scores[index]), 6), "final": round(float(fused[index]), 6)}
                for index in final
            ],
            "calls": len(run.calls),
            "images_sent": run.images_sent,
            "seconds": round(time.perf_counter() - started, 6),
        }
        record.notes.extend(run.notes)
        return record


class _RerankRun:
    """The work of one query: windows, passes, calls, and what goes into the trace."""

    def __init__(self, stage: RerankStage, state: QueryState, top: list[Candidate]) -> None:
        self.stage = stage
        self.config = stage.config
        self.state = state
        self.top = top
        self.calls: list[ModelCall] = []
        self.grids: list[dict[str, Any]] = []
        self.parsed: list[dict[str, Any]] = []
        self.repairs: list[dict[str, Any]] = []
        self.windows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.images_sent = 0
        self._window_counter = 0
        query = state.query
        reference_path = query.image if query.image and Path(query.image).is_file() else None
        self.reference_path = reference_path
        grid_config = self.config.grid
        if grid_config.reference == "cell" and reference_path is None:
            # No reference image: the R cell would be empty, so the candidates get all cells.
            grid_config = grid_config.model_copy(update={"reference": "none"})
            self.notes.append("grid.reference='cell' but the query has no reference image: grid without R cell")
        self.grid_config: GridConfig = grid_config
        self.capacity = grid_capacity(grid_config)
        self.captions = [stage._caption_of(c.id) for c in top] if grid_config.caption_strip else None
        if grid_config.caption_strip and not any(self.captions or []):
            self.notes.append("grid.caption_strip is on but no candidate captions were given: strip left empty")
            self.grid_config = grid_config.model_copy(update={"caption_strip": False})
            self.captions = None
        variables = {
            "modification": query.text or "",
            "target_descriptions": list(state.target_descriptions),
            "reference_caption": stage._reference_caption(state) if self.config.include_caption else None,
        }
        self.variables = variables

    # ----- judging -----
    def agreement_summary(self) -> dict[str, Any] | None:
        per_window = [w["agreement"] for w in self.windows if w.get("agreement")]
        if not per_window:
            return None
        return {
            "kendall_tau_mean": round(sum(a["kendall_tau_mean"] for a in per_window) / len(per_window), 6),
            "top1_agreement": round(sum(a["top1_agreement"] for a in per_window) / len(per_window), 6),
            "windows": len(per_window),
        }

    def _invoke(self, prompt: Any, messages: list[tuple[str, str]], images: list[Any], schema: Any) -> ModelCall:
        from agent_cir.backends import invoke

        call = invoke(
            self.stage.model,
            messages,
            prompt=prompt,
            images=images,
            cache=self.stage.cache,
            schema=schema,
            temperature=self.config.temperature,
        )
        self.calls.append(call)
        self.images_sent += len(images)
        return call

    def _judge_window(self, items: list[int], kind: str, round_index: int = 0) -> list[int]:
        """Rank ``items`` (indices into ``self.top``) with P passes over one grid; returns window-local order."""
        window = self._window_counter
        self._window_counter += 1
        n = len(items)
        pass_rankings: list[list[int]] = []
        reference = self.grid_config.reference
        images_prefix = [self.reference_path] if (reference == "separate" and self.reference_path) else []
        prompt_reference = reference if (reference != "separate" or self.reference_path) else "none"
        use_schema = self.config.structured_output and bool(getattr(self.stage.model, "supports_structured_output", False))
        for pass_index in range(self.config.passes):
            permutation = pass_permutation(n, pass_index, self.config.seed, window)
            shown = [items[local] for local in permutation]  # cell j+1 shows self.top[shown[j]]
            grid = render_grid(
                [self.top[index].path for index in shown],
                self.grid_config,
                captions=[self.captions[index] for index in shown] if self.captions else None,
                reference=self.reference_path,
            )
            cells = {str(j + 1): self.top[shown[j]].id for j in range(n)}
            entry: dict[str, Any] = {"path": None, "cells": cells, "pass": pass_index, "window": window,
                                     "kind": kind, "round": round_index}
            if self.state.artifacts_dir is not None:
                path = Path(self.state.artifacts_dir) / f"rerank_w{window:02d}_p{pass_index}.png"
                entry["path"] = str(grid.save(path))
            self.grids.append(entry)
            messages = self.stage.grid_prompt.render_messages(
                **self.variables, n_cells=n, reference=prompt_reference, has_captions=bool(self.captions)
            )
            call = self._invoke(self.stage.grid_prompt, messages, images_prefix + [grid.png],
                                GridJudgement if use_schema else None)
            # Cells in retrieval order: the cell showing the best-retrieved item first.
            cell_of_local = {local: j + 1 for j, local in enumerate(permutation)}
            retrieval_cells = [cell_of_local[local] for local in range(n)]
            structured = extract_json(call.raw or "", prefer=dict) if call.params.get("structured") else None
            parsed = parse_ranking(call.raw, n, retrieval_cells, structured=structured)
            call.parse_status = parsed.status  # type: ignore[assignment]
            self.parsed.append({"window": window, "pass": pass_index, "status": parsed.status, **parsed.to_dict()})
            self.repairs.append({"window": window, "pass": pass_index, "repairs": parsed.repairs,
                                 "out_of_range": parsed.out_of_range, "duplicates": parsed.duplicates,
                                 "not_numbers": parsed.not_numbers, "appended": parsed.appended})
            pass_rankings.append([permutation[cell - 1] for cell in parsed.ranking])
        order, _ = aggregate_rankings(pass_rankings, self.config.aggregation, self.config.rrf_k)
        agreement = pass_agreement(pass_rankings, order)
        self.windows.append({"window": window, "kind": kind, "round": round_index,
                             "items": [self.top[i].id for i in items], "agreement": agreement,
                             "order": [self.top[items[local]].id for local in order]})
        return order

    def listwise(self) -> tuple[list[int], list[float]]:
        n = len(self.top)
        if n <= self.capacity:
            order = self._judge_window(list(range(n)), "single")
        elif self.config.overflow == "tournament":
            order = self._tournament(list(range(n)), 0)
        else:
            order = self._sliding(n)
        scores = rank_to_unit(n)
        judge_scores = [0.0] * n
        for position, index in enumerate(order):
            judge_scores[index] = scores[position]
        return order, judge_scores

    def _sliding(self, n: int) -> list[int]:
        size = self.capacity
        step = self.config.window_step or max(1, size // 2)
        step = min(step, size)
        current = list(range(n))
        for start, end in sliding_windows(n, size, step):
            items = current[start:end]
            local = self._judge_window(items, "sliding")
            current[start:end] = [items[i] for i in local]
        return current

    def _tournament(self, items: list[int], round_index: int) -> list[int]:
        """Round-robin groups (each group gets a share of the strong and the weak), the top of each group
        advances to the next round, the rest follow by their rank in their group."""
        size = self.capacity
        if len(items) <= size:
            local = self._judge_window(items, "final" if round_index else "single", round_index)
            return [items[i] for i in local]
        n_groups = -(-len(items) // size)
        groups = [items[g::n_groups] for g in range(n_groups)]
        advance_per_group = max(1, size // n_groups)
        advancing: list[tuple[int, int, int]] = []  # (rank in group, input position, item)
        staying: list[tuple[int, int, int]] = []
        position_of = {item: position for position, item in enumerate(items)}
        for group in groups:
            local = self._judge_window(group, "group", round_index)
            for rank, index in enumerate(local):
                item = group[index]
                (advancing if rank < advance_per_group else staying).append((rank, position_of[item], item))
        advancing.sort()
        staying.sort()
        winners = self._tournament([item for _, _, item in advancing], round_index + 1)
        return winners + [item for _, _, item in staying]

    # ----- pointwise -----
    def pointwise(self) -> tuple[list[int], list[float]]:
        n = len(self.top)
        prefix = [self.reference_path] if self.reference_path and self.grid_config.reference != "none" else []
        messages = self.stage.pointwise_prompt.render_messages(**self.variables, has_reference=bool(prefix))
        local = local_yes_scorer(self.stage.model)
        if local is None:
            self.notes.append(
                f"pointwise: backend {getattr(self.stage.model, 'backend', '?')} exposes no logits; "
                "scores are parsed yes/no answers (1, 0, or 0.5 when unparsable)"
            )
        scores: list[float] = []
        for index, candidate in enumerate(self.top):
            if not candidate.path or not Path(candidate.path).is_file():
                # Nothing to show the judge: neutral score, recorded, instead of failing the query.
                self.parsed.append({"item": index, "id": candidate.id, "status": "fallback", "score": 0.5,
                                    "source": "missing_image"})
                self.repairs.append({"item": index, "repairs": ["missing_image_scored_0.5"]})
                scores.append(0.5)
                continue
            images = prefix + [candidate.path]
            if local is not None:
                call, score = local(messages, images, self.stage.pointwise_prompt, self.stage.cache)
                self.calls.append(call)
                self.images_sent += len(images)
                source = "logits"
            else:
                call = self._invoke(self.stage.pointwise_prompt, messages, images, None)
                value, source = parse_yes_no(call.raw)
                score = 0.5 if value is None else value
            status = "ok" if source != "none" else "fallback"
            call.parse_status = status  # type: ignore[assignment]
            self.parsed.append({"item": index, "id": candidate.id, "status": status, "score": round(score, 6),
                                "source": source})
            self.repairs.append({"item": index, "repairs": [] if status == "ok" else ["unparsable_answer_scored_0.5"]})
            scores.append(score)
        order = sorted(range(n), key=lambda index: (-scores[index], index))
        self.windows.append({"window": 0, "kind": "pointwise", "items": [c.id for c in self.top],
                             "agreement": None, "order": [self.top[i].id for i in order]})
        return order, scores


_YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes")
_NO_WORDS = ("no", "No", "NO", " no", " No")


def _first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    ids: set[int] = set()
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if encoded:
            ids.add(int(encoded[0]))
    return sorted(ids)


def local_yes_scorer(handle: Any) -> Callable[..., tuple[ModelCall, float]] | None:
    """For a local transformers VLM (``hf-vlm:``): a function that scores P("yes") from the next-token logits.

    P(yes) = sum of the probabilities of the "yes" spellings' first tokens divided by that of "yes" and
    "no" together. Returns None for any other backend (servers do not give logits uniformly), where the
    caller parses the yes/no text instead.
    """
    chat = getattr(handle, "chat", None)
    prepare = getattr(chat, "prepare_inputs", None) or getattr(chat, "_prepare_inputs", None)
    if getattr(handle, "backend", None) != "hf-vlm" or prepare is None or not hasattr(chat, "weights"):
        return None

    def score(messages: list[tuple[str, str]], images: list[Any], prompt: Any, cache: Any) -> tuple[ModelCall, float]:
        import torch

        from agent_cir.backends.invoke import data_url, image_bytes, to_langchain_messages
        from agent_cir.hashing import bytes_hash

        started = time.perf_counter()
        encoded = [image_bytes(image) for image in images]
        hashes = [bytes_hash(data) for data, _ in encoded]
        prompt_text = "\n\n".join(f"[{role}]\n{body}" for role, body in messages)
        key = None
        if cache is not None:
            key = cache.make_key(kind="yes_probability", backend=handle.backend, model=handle.model,
                                 fingerprint=handle.fingerprint, prompt_hash=prompt.hash,
                                 messages=[list(m) for m in messages], images=hashes)
            cached = cache.get(key)
            if cached is not None:
                return ModelCall(backend=handle.backend, model=handle.model, prompt_name=prompt.name,
                                 prompt_hash=prompt.hash, raw=cached["raw"], cache="hit",
                                 seconds=round(time.perf_counter() - started, 6), prompt=prompt_text,
                                 images=hashes, params={"scoring": "yes_probability"}), float(cached["p_yes"])
        lc_messages = to_langchain_messages(messages, [data_url(data, mime) for data, mime in encoded])
        weights = chat.weights
        tokenizer = getattr(weights.processor, "tokenizer", weights.processor)
        yes_ids, no_ids = _first_token_ids(tokenizer, _YES_WORDS), _first_token_ids(tokenizer, _NO_WORDS)
        with handle.slot, weights.lock:
            inputs = prepare(lc_messages)
            device = getattr(weights.model, "device", None)
            if device is not None:
                inputs = inputs.to(device)
            with torch.inference_mode():
                logits = weights.model(**inputs).logits[0, -1].float()
        probabilities = torch.softmax(logits, dim=-1)
        p_yes = float(probabilities[yes_ids].sum())
        p_no = float(probabilities[no_ids].sum())
        p = p_yes / (p_yes + p_no) if (p_yes + p_no) > 0 else 0.5
        raw = f"{'yes' if p >= 0.5 else 'no'} (P(yes)={p:.4f} from next-token logits)"
        if cache is not None and key is not None:
            cache.put(key, {"raw": raw, "p_yes": p})
        usage = {"input_tokens": int(inputs["input_ids"].shape[1]), "output_tokens": 0,
                 "total_tokens": int(inputs["input_ids"].shape[1])}
        return ModelCall(backend=handle.backend, model=handle.model, prompt_name=prompt.name,
                         prompt_hash=prompt.hash, raw=raw, cache="miss" if cache is not None else "off",
                         seconds=round(time.perf_counter() - started, 6), usage=usage, prompt=prompt_text,
                         images=hashes, params={"scoring": "yes_probability", "p_yes_raw": p_yes, "p_no_raw": p_no}), p

    return score
