"""Compare two run folders: metrics side by side, and the queries whose target rank moved most."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.trace import read_traces


class CompareError(AgentCirError):
    """A run folder cannot be compared (missing metrics.json or traces.jsonl)."""


def _load_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    if not path.is_file():
        raise CompareError(f"{run} has no metrics.json; is it an `agent-cir eval` output folder (finished)?")
    return json.loads(path.read_text(encoding="utf-8"))


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"dress": {"recall@10": x}}`` -> ``{"dress/recall@10": x}``; plain metrics keep their names."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


def target_ranks(run: Path) -> dict[str, dict[str, Any]]:
    path = run / "traces.jsonl"
    if not path.is_file():
        raise CompareError(f"{run} has no traces.jsonl")
    ranks = {}
    for record in read_traces(path):
        evaluation = record.get("eval")
        if evaluation is not None:
            ranks[str(record["query_id"])] = {
                "rank": evaluation.get("target_rank"),
                "ranked": evaluation.get("ranked"),
                "text": (record.get("query") or {}).get("text"),
            }
    return ranks


def _log_rank(rank: int | None, ranked: int | None) -> float:
    # An unranked target sits just below the end of the ranking.
    return math.log((rank if rank is not None else (ranked or 0) + 1))


def compare_runs(run_a: str | Path, run_b: str | Path, top: int = 10) -> dict[str, Any]:
    """Metrics of both runs (same keys, with B - A), and the ``top`` queries whose target rank changed most
    (by the change of log rank: 1 -> 5 counts more than 101 -> 105)."""
    run_a, run_b = Path(run_a), Path(run_b)
    metrics_a, metrics_b = _load_metrics(run_a), _load_metrics(run_b)
    flat_a, flat_b = flatten_metrics(metrics_a.get("metrics", {})), flatten_metrics(metrics_b.get("metrics", {}))
    rows = []
    for name in list(dict.fromkeys([*flat_a, *flat_b])):
        a, b = flat_a.get(name), flat_b.get(name)
        rows.append({"metric": name, "a": a, "b": b, "delta": (b - a) if a is not None and b is not None else None})
    ranks_a, ranks_b = target_ranks(run_a), target_ranks(run_b)
    common = [q for q in ranks_a if q in ranks_b]
    changes = []
    for query_id in common:
        ra, rb = ranks_a[query_id], ranks_b[query_id]
        if ra["rank"] == rb["rank"]:
            continue
        shift = _log_rank(rb["rank"], rb["ranked"]) - _log_rank(ra["rank"], ra["ranked"])
        changes.append(
            {"query_id": query_id, "rank_a": ra["rank"], "rank_b": rb["rank"], "text": ra["text"], "log_shift": shift}
        )
    changes.sort(key=lambda change: (-abs(change["log_shift"]), change["query_id"]))
    improved = sum(1 for c in changes if c["log_shift"] < 0)
    return {
        "a": {"path": str(run_a), "recipe": metrics_a.get("recipe"), "dataset": metrics_a.get("dataset"),
              "surrogate": metrics_a.get("surrogate")},
        "b": {"path": str(run_b), "recipe": metrics_b.get("recipe"), "dataset": metrics_b.get("dataset"),
              "surrogate": metrics_b.get("surrogate")},
        "metrics": rows,
        "common_queries": len(common),
        "improved": improved,
        "worsened": len(changes) - improved,
        "changes": changes[:top],
    }


def format_comparison(comparison: dict[str, Any]) -> str:
    a, b = comparison["a"], comparison["b"]
    lines = [
        f"A: {a['path']}  ({(a['recipe'] or {}).get('name')}, {a['dataset']}{', surrogate' if a['surrogate'] else ''})",
        f"B: {b['path']}  ({(b['recipe'] or {}).get('name')}, {b['dataset']}{', surrogate' if b['surrogate'] else ''})",
        "",
        f"{'metric':<28}{'A':>10}{'B':>10}{'B-A':>10}",
    ]
    for row in comparison["metrics"]:
        cells = [f"{v:>10.2f}" if v is not None else f"{'-':>10}" for v in (row["a"], row["b"], row["delta"])]
        lines.append(f"{row['metric']:<28}{''.join(cells)}")
    lines += [
        "",
        f"{comparison['common_queries']} queries in both runs: target rank better in B for {comparison['improved']}, "
        f"worse for {comparison['worsened']}",
    ]
    if comparison["changes"]:
        lines.append(f"largest target-rank changes (rank in A -> rank in B; '-' = not in the kept ranking):")
        for change in comparison["changes"]:
            ra = change["rank_a"] if change["rank_a"] is not None else "-"
            rb = change["rank_b"] if change["rank_b"] is not None else "-"
            text = (change["text"] or "")[:60]
            lines.append(f"  {change['query_id']:<20}{ra!s:>6} -> {rb!s:<6} {text}")
    return "\n".join(lines)
