"""Markdown table of CIRR text-surrogate runs (metrics.json + traces.jsonl of `agent-cir eval` run folders).

Checks that every run evaluated the same query ids, so rows are comparable.

  .venv/bin/python benchmarks/surrogate_table.py runs/surrogate_modification_300 runs/surrogate_caption_300 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent_cir.trace.io import read_typed_traces

COLUMNS = ["recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "recall_subset@2", "recall_subset@3"]
HEADERS = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"]


def query_ids(run: Path) -> list[str]:
    return sorted(trace.query_id for trace in read_typed_traces(run / "traces.jsonl", salvage=True))


def loop_summary(run: Path) -> tuple[str, str]:
    """(queries refined at least once, mean model calls + cache hits per query) from the traces' rounds."""
    refined = total = calls = 0
    for trace in read_typed_traces(run / "traces.jsonl", salvage=True):
        total += 1
        refined += any(r.decision == "refine" for r in trace.rounds)
        calls += trace.totals.model_calls + trace.totals.cache_hits
    if not total:
        return "-", "-"
    return f"{100 * refined / total:.0f}%", f"{calls / total:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    reference_ids = None
    print("| run | recipe | queries | " + " | ".join(HEADERS)
          + " | refined | calls/query | model calls | cache hits | wall s/query |")
    print("|---|---|---|" + "---|" * len(HEADERS) + "---|---|---|---|---|")
    for run in args.runs:
        metrics = json.loads((run / "metrics.json").read_text())
        ids = query_ids(run)
        if reference_ids is None:
            reference_ids = ids
        elif ids != reference_ids:
            print(f"error: {run} evaluated other queries than {args.runs[0]}", file=sys.stderr)
            return 1
        wall = metrics.get("wall_seconds_per_query")
        if wall is None and metrics.get("wall_seconds") and metrics["queries"]["evaluated"]:
            wall = round(metrics["wall_seconds"] / metrics["queries"]["evaluated"], 4)  # runs before the field existed
        values = " | ".join(f"{metrics['metrics'][c]:.2f}" for c in COLUMNS)
        refined, per_query = loop_summary(run)
        print(
            f"| {run.name} | {metrics['recipe']['name']} | {metrics['queries']['evaluated']} | {values} | "
            f"{refined} | {per_query} | {metrics['model_calls']} | {metrics['cache_hits']} | {wall} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
