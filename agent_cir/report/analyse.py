"""What the report derives from each trace: the query's status, the ground truth's rank after each stage,
and per-stage totals over the run.

Query status, decided from the ground truth in the query's meta:

- ``lost``: no ground-truth item is in the retrieval list the trace kept;
- ``improved``: rerank moved the best-placed ground-truth item up;
- ``hurt``: rerank moved it down;
- ``hit``: it is in the retrieval list and rerank (if any) kept its rank;
- ``unknown``: the query has no ground truth.

A benchmark run keeps only the top of each ranking in the trace; its ``eval`` entry still has the official
rank of the target, which the report shows where the kept list ends ("rank 73, outside the top 50 kept").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from agent_cir.trace.load import salvage_trace
from agent_cir.trace.model import Trace

STATUSES = ("lost", "improved", "hurt", "hit", "unknown")
STATUS_LABELS = {
    "lost": "target lost at retrieval",
    "improved": "improved by rerank",
    "hurt": "hurt by rerank",
    "hit": "target in top-k, rank kept",
    "unknown": "no ground truth",
}
FILTERS = ("all",) + STATUSES


@dataclass
class StagePoint:
    stage: str
    rank: int | None
    """1-based rank of the best-placed ground-truth item after this stage; None when it is not in the list."""
    depth: int
    """How many items of the stage's ranking the trace holds."""


@dataclass
class QueryView:
    """One trace plus what the report derives from it."""

    trace: Trace
    number: int
    query_id: str
    page: str
    ground_truth: list[str]
    subset: list[str]
    status: str
    retrieve_rank: int | None
    final_rank: int | None
    reranked: bool
    points: list[StagePoint] = field(default_factory=list)
    kept: int = 0
    """How many retrieval rows the trace kept (the list ``retrieve_rank`` is looked up in)."""
    official_rank: int | None = None
    """The benchmark's rank of the target (the eval entry), when the run is a benchmark run."""

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]

    @property
    def retrieve_rank_text(self) -> str:
        if self.retrieve_rank:
            return str(self.retrieve_rank)
        return f"not in top {self.kept}" if self.ground_truth else "–"

    @property
    def final_rank_text(self) -> str:
        """The final rank; past the kept list, the official rank when the benchmark recorded one."""
        if self.final_rank:
            return str(self.final_rank)
        if self.official_rank:
            return f"rank {self.official_rank} (outside the top {self.kept} kept)"
        if self.ground_truth:
            return f"not in top {len(self.trace.results)}" if self.trace.results else "not ranked"
        return "–"


def _best_rank(ranking: list[str] | None, targets: set[str]) -> int | None:
    if not ranking or not targets:
        return None
    for position, item in enumerate(ranking, start=1):
        if item in targets:
            return position
    return None


def page_name(query_id: str) -> str:
    """A file name safe on every file system, unique per id even when two ids slugify alike."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", query_id).strip("._")[:60] or "query"
    digest = hashlib.sha1(query_id.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}.html"


def analyse(trace: Trace | dict[str, Any], number: int = 0) -> QueryView:
    """Status and rank by stage of one trace (see the module docstring for the statuses); a plain record is read
    for display (``salvage_trace``)."""
    data = trace if isinstance(trace, Trace) else salvage_trace(trace)[0]
    targets = set(data.ground_truth)
    final_list = [row.id for row in data.results]
    retrieval = data.retrieval
    retrieve_list = [row.id for row in retrieval.output.rows] if retrieval is not None else final_list
    reranked = data.reranked
    retrieve_rank = _best_rank(retrieve_list, targets)
    final_rank = _best_rank(final_list, targets)
    points = [StagePoint("retrieve", retrieve_rank, len(retrieve_list))]
    if reranked:
        points.append(StagePoint("rerank", final_rank, len(final_list)))
    if not targets:
        status = "unknown"
    elif retrieve_rank is None:
        status = "lost"
    elif reranked and final_rank is not None and final_rank < retrieve_rank:
        status = "improved"
    elif reranked and (final_rank is None or final_rank > retrieve_rank):
        status = "hurt"
    else:
        status = "hit"
    official = data.eval.target_rank if data.eval is not None else None
    return QueryView(data, number, data.query_id, page_name(data.query_id), data.ground_truth, data.subset, status,
                     retrieve_rank, final_rank, reranked, points, kept=len(retrieve_list), official_rank=official)


def stage_summary(traces: list[Trace]) -> list[dict[str, Any]]:
    """Per stage, in pipeline order: runs, skips, seconds, model calls, cache hits, parse statuses."""
    rows: dict[str, dict[str, Any]] = {}
    for trace in traces:
        for record in trace.stages:
            name = record.stage or "?"
            row = rows.setdefault(name, {"stage": name, "ran": 0, "skipped": 0, "seconds": 0.0, "model_calls": 0,
                                         "cache_hits": 0, "parse": {}})
            row["skipped" if record.skipped else "ran"] += 1
            row["seconds"] += record.seconds
            row["model_calls"] += record.model_calls
            row["cache_hits"] += record.cache_hits
            if record.parse_status and record.parse_status != "not_applicable":
                row["parse"][record.parse_status] = row["parse"].get(record.parse_status, 0) + 1
    for row in rows.values():
        row["mean_seconds"] = row["seconds"] / row["ran"] if row["ran"] else 0.0
    return list(rows.values())


def random_encoder_traces(traces: list[Trace]) -> list[str]:
    """Query ids whose trace says the encoder had random (untrained) weights."""
    return [t.query_id for t in traces if t.encoder is not None and t.encoder.random_weights]


def split_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """metrics.json -> the metric values (its ``metrics`` block when it has one), other facts, notes."""
    if not metrics:
        return {"scores": None, "facts": {}, "notes": []}
    values = metrics.get("metrics") if isinstance(metrics.get("metrics"), dict) else None
    facts: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in metrics.items():
        if key == "metrics" and values is not None:
            continue
        if isinstance(value, list):
            notes.extend(str(item) for item in value if key == "notes")
            if key != "notes" and value:
                facts[key] = ", ".join(map(str, value))
        elif isinstance(value, str) and key.endswith("note"):
            notes.append(value)
        elif value is not None:
            facts[key] = value
    if values is None:  # a flat metrics file: numbers are the metrics
        values = {k: v for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        facts = {k: v for k, v in facts.items() if k not in values}
    return {"scores": values, "facts": facts, "notes": notes}


__all__ = ["FILTERS", "STATUSES", "STATUS_LABELS", "QueryView", "StagePoint", "analyse", "page_name",
           "random_encoder_traces", "split_metrics", "stage_summary"]
