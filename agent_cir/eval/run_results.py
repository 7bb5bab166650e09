"""A run's results on disk: ``metrics.json`` over the selected queries (unfinished ones count as misses),
``failures.jsonl``, and the benchmark's submission files for a test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.config import Recipe
from agent_cir.eval.benchmarks import Benchmark
from agent_cir.eval.datasets import BenchmarkSplit
from agent_cir.eval.resume import write_failures
from agent_cir.eval.run_folder import now, write_json
from agent_cir.eval.submission import SubmissionError
from agent_cir.types import Query

SURROGATE_NOTE = (
    "CIRR text surrogate: gallery images are represented by their MLLM captions and the reference by its "
    "caption; these numbers measure the text part of the pipeline and are NOT comparable with image-based results"
)


def write_results(out: Path, benchmark: Benchmark, splits: Sequence[BenchmarkSplit],
                  selected: Mapping[str, list[Query]], finished: Mapping[str, dict[str, Any]],
                  failures: Mapping[str, str], recipe: Recipe, surrogate: bool,
                  manifest: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json, failures.jsonl and (test split) the submission; returns the metrics payload."""
    payload = metrics_payload(benchmark, splits, selected, finished, failures, recipe, surrogate, manifest)
    write_failures(out / "failures.jsonl", failures, finished)
    if splits[0].split == "test":
        part = splits[0]
        rankings = {q.id: finished[q.id]["eval"]["ranking"] for q in part.queries if q.id in finished}
        try:
            payload["submission"] = benchmark.write_submission(out, part, selected[part.name], rankings)
        except SubmissionError as err:
            # Refused, not written: a partial file would be scored as if the missing queries were misses.
            payload["submission"] = {"files": [], "complete": False, "refused": str(err)}
            payload["notes"].append(f"submission refused: {err}")
    write_json(out / "metrics.json", payload)
    return payload


def _rankings(queries: Sequence[Query], finished: Mapping[str, dict[str, Any]]) -> dict[str, list[str] | None]:
    return {q.id: (finished[q.id]["eval"]["ranking"] if q.id in finished else None) for q in queries}


def metrics_payload(benchmark, splits, selected, finished, failures, recipe, surrogate, manifest) -> dict[str, Any]:
    all_queries = [q for name in selected for q in selected[name]]
    done = [finished[q.id] for q in all_queries if q.id in finished]
    missing = [q.id for q in all_queries if q.id not in finished]
    payload: dict[str, Any] = {
        "dataset": splits[0].dataset,
        "split": splits[0].split,
        "categories": [s.category for s in splits if s.category] or None,
        "surrogate": surrogate,
        "recipe": {"name": recipe.name, "hash": recipe.hash},
        "protocol": manifest.get("protocol"),
        "queries": {"selected": len(all_queries), "evaluated": len(done), "not_evaluated": len(missing)},
        "metrics": {},
        "model_calls": sum(t.get("totals", {}).get("model_calls", 0) for t in done),
        "cache_hits": sum(t.get("totals", {}).get("cache_hits", 0) for t in done),
        "seconds_per_query": round(float(np.mean([t.get("totals", {}).get("seconds", 0.0) for t in done])), 4)
        if done else None,
        "wall_seconds": round(sum(s.get("seconds", 0.0) for s in manifest.get("sessions", [])), 3),
        "notes": [note for s in splits for note in s.notes] + list((manifest.get("protocol") or {}).get("notes", [])),
        "created": now(),
    }
    # seconds_per_query is each query's own latency (with concurrency, queries wait for one another);
    # wall_seconds_per_query is throughput: the run's wall time (model loading included) per query.
    payload["wall_seconds_per_query"] = round(payload["wall_seconds"] / len(done), 4) if done else None
    if surrogate:
        payload["surrogate_note"] = SURROGATE_NOTE
    if missing:
        payload["queries"]["not_evaluated_ids"] = missing[:50]
        payload["notes"].append(
            f"{len(missing)} selected queries have no result (failed: see failures.jsonl); they count as misses"
        )
    if failures:
        payload["failures"] = dict(list(failures.items())[:20])
    if not splits[0].has_ground_truth:
        return payload
    per_split = {}
    for part in splits:
        queries = selected[part.name]
        if queries:
            per_split[part.category or part.name] = benchmark.split_metrics(part, queries, _rankings(queries, finished))
    payload["metrics"] = benchmark.aggregate(per_split, payload["notes"])
    return payload
