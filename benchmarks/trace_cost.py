"""What the per-query trace costs in an eval, on its own: the retrieve record's output, ``build_trace``, the eval
entry, the writer and the runner's slim copy, for CIRR-sized queries (a ranking of 2,297 items, a head of 50).

Prints CPU seconds (``time.process_time``: this process only, so a busy machine disturbs it less than wall time)
for ``--queries`` synthetic queries. It runs on the tree on PYTHONPATH, including trees from before the typed
trace (dict stage outputs), so that two trees can be compared run by run:

  PYTHONPATH=$PWD .venv/bin/python benchmarks/trace_cost.py
  PYTHONPATH=/path/to/older/tree .venv/bin/python benchmarks/trace_cost.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=3105)
    parser.add_argument("--ranked", type=int, default=2297)
    parser.add_argument("--head", type=int, default=50)
    args = parser.parse_args()

    from agent_cir.eval.run_folder import slim
    from agent_cir.retrieval.ranking import Ranking
    from agent_cir.stages import retrieve as retrieve_module
    from agent_cir.trace.build import build_trace
    from agent_cir.trace.io import TraceWriter
    from agent_cir.types import Query, QueryState, StageRecord

    typed = hasattr(retrieve_module, "RetrieveOutput")  # False on trees with dict stage outputs
    if typed:
        from agent_cir.trace.model import EvalRecord
        from agent_cir.trace.outputs import RetrieveOutput

    rng = np.random.default_rng(0)
    n, head = args.ranked, args.head
    ids = [f"dev-{i}-img" for i in range(n)]
    where = {gallery_id: i for i, gallery_id in enumerate(ids)}
    states = []
    for number in range(args.queries):  # built before timing: the ranking is the retrieval's work, not the trace's
        scores = rng.random(n).astype(np.float32)
        order = np.argsort(-scores)
        ranking = Ranking.from_arrays(order, scores[order], ids, [None] * n, where.get)
        state = QueryState(query=Query(id=f"q{number}", text="make it red", reference_id=ids[number % n],
                                       meta={"subset": ids[:5], "target": ids[7]}))
        state.captions, state.target_descriptions, state.description_source = ["a blue car"], ["make it red"], \
            "modification"
        state.ranking, state.candidates = ranking, ranking.head(head)
        states.append(state)

    def eval_entry(ranking: Ranking) -> dict:
        return {"dataset": "cirr", "split": "val", "category": None, "ranking": ranking.head_ids(50) + ids[:3],
                "kept_top": 50, "ranked": len(ranking), "target_rank": 8}

    finished, kept = [], []
    with tempfile.TemporaryDirectory() as tmp, TraceWriter(Path(tmp) / "traces.jsonl") as writer:
        started = time.process_time()
        for state in states:
            ranking = state.ranking
            output = {"mode": "text", "k": n, "query_texts": ["make it red"], "caption_weight": 1.0,
                      "excluded": [ids[0]], "candidates": retrieve_module._candidate_rows(ranking, head),
                      "candidates_total": len(ranking), "search": "IndexFlatIP"}
            state.records = [StageRecord(stage="retrieve",
                                         output=RetrieveOutput.model_validate(output) if typed else output)]
            trace = build_trace(state, "surrogate_modification", "ab" * 32, 0.01, encoder={"backend": "x", "dim": 384},
                                ranking=ranking, head=head, shown=state.candidates)
            if typed:  # as eval/runner.py does
                trace.eval = EvalRecord.model_construct(**eval_entry(ranking), identity="cd" * 8)
            else:
                trace["eval"] = eval_entry(ranking)
                trace["eval"]["identity"] = "cd" * 8
                kept.append(trace)  # the dict-trace runner's run_batch kept every Result (and its trace) to the end
            writer.write(trace)
            finished.append(slim(trace))
            state.records = []  # a chunk's states go once the chunk is done
        spent = time.process_time() - started
    print(f"{'typed' if typed else 'dict'} trace: {spent:.2f} s CPU for {args.queries} queries "
          f"({spent / args.queries * 1e6:.0f} us per query)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
