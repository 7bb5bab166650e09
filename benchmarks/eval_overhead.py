"""Eval overhead: `agent-cir eval` (run_eval, in-process) with the ``surrogate_modification`` recipe on the CIRR
val dev subset, against a plain batched computation of the same rankings in the same process.

The reference does what a one-off research script would: read the official files, encode all query texts in
one batch, one matrix product against the gallery caption embeddings, mean over each image's captions, remove
the reference, sort, and the same CIRR metrics. Both sides use the same encoder object (loaded once, not timed)
and the same gallery caption embeddings (read from the embedding cache, which a warm-up fills before timing).

Rankings are compared query by query. Exact float equality is not expected (one batch vs one query at a time
changes the last bits of an embedding), so two rankings count as the same when they differ only by swapping
items whose reference scores are within ``--tie-tolerance``; the script reports how many queries are
bit-identical and fails if any ranking differs by more than that.

  PYTHONPATH=$PWD .venv/bin/python benchmarks/eval_overhead.py            # all 3,105 queries
  PYTHONPATH=$PWD .venv/bin/python benchmarks/eval_overhead.py --breakdown --profile /tmp/eval.prof
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "benchmarks"
KEEP_TOP = 50  # the eval's kept ranking: the top 50 plus the subset members, reference removed


def reference_rankings(encoder, annotations: Path, captions_file: Path, limit: int | None):
    """The plain batched computation: (rankings {query id: [ids]}, metrics, per-query score rows for checks)."""
    from agent_cir.eval.metrics import cirr_metrics
    from agent_cir.retrieval.gallery import embed_texts_cached

    records = json.loads((annotations / "captions" / "cap.rc2.val.json").read_text(encoding="utf-8"))
    records = records[:limit] if limit else records
    gallery_ids = list(json.loads((annotations / "image_splits" / "split.rc2.val.json").read_text(encoding="utf-8")))
    table: dict[str, list[str]] = {}
    for entry in json.loads(captions_file.read_text(encoding="utf-8")):
        texts = entry["captions"] if isinstance(entry["captions"], list) else [entry["captions"]]
        table.setdefault(str(entry["candidate"]), []).extend(t.strip() for t in texts if t.strip())
    texts, counts = [], []
    for gallery_id in gallery_ids:
        texts += table.get(gallery_id, [])
        counts.append(len(table.get(gallery_id, [])))
    caption_vectors = embed_texts_cached(encoder, texts)  # the same cached gallery the eval reads

    queries = np.asarray(encoder.encode_texts([str(r["caption"]) for r in records]), dtype=np.float32)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    per_caption = queries @ caption_vectors.T  # (queries, captions), captions grouped by gallery item
    counts = np.asarray(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    scores = np.zeros((len(records), len(gallery_ids)), dtype=np.float64)
    scores[:, has] = np.add.reduceat(per_caption, starts[has], axis=1) / counts[has]
    position = {gallery_id: i for i, gallery_id in enumerate(gallery_ids)}
    rows = np.arange(len(records))
    scores[rows, [position[str(r["reference"])] for r in records]] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(gallery_ids)), scores.shape), -scores), axis=-1)

    rankings, references, targets, subsets = {}, {}, {}, {}
    for row, record in enumerate(records):
        query_id, reference = str(record["pairid"]), str(record["reference"])
        ranked = [gallery_ids[i] for i in order[row] if gallery_ids[i] != reference]
        members = {str(m) for m in record["img_set"]["members"]}
        rankings[query_id] = [item for rank, item in enumerate(ranked) if rank < KEEP_TOP or item in members]
        references[query_id], targets[query_id] = reference, str(record["target_hard"])
        subsets[query_id] = [str(m) for m in record["img_set"]["members"]]
    metrics = cirr_metrics(rankings, references, targets, subsets)
    return rankings, metrics, scores, position


def run_agent_cir_eval(encoder, annotations: Path, captions_file: Path, out: Path, limit: int | None, chunk: int | None):
    from agent_cir.eval.runner import run_eval
    from agent_cir.trace.io import read_traces

    overrides = {"chunk_size": chunk} if chunk else None
    outcome = run_eval(
        "cirr", "val", None, "surrogate_modification", out, limit=limit, gallery_captions=captions_file,
        annotations=annotations, encoder=encoder, progress=False, overrides=overrides,
    )
    rankings = {t["query_id"]: t["eval"]["ranking"] for t in read_traces(out / "traces.jsonl")}
    return rankings, outcome.metrics["metrics"]


def cost_breakdown(encoder, annotations: Path, captions_file: Path, out: Path, limit: int | None) -> dict:
    """Where the eval's time goes, one query at a time (max_concurrency 1, so the parts add up): wall-clock
    seconds inside each stage, trace building, and the eval runner's per-query bookkeeping."""
    import agent_cir.eval.runner as runner
    import agent_cir.pipeline as pipeline
    from agent_cir.eval.runner import run_eval
    from agent_cir.stages.retrieve import RetrieveStage
    from agent_cir.trace.io import TraceWriter

    spent: dict[str, float] = {}
    patched: list[tuple[object, str, object]] = []

    def timed(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # this version of the code has no such part
            return

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        patched.append((owner, name, original))
        setattr(owner, name, wrapper)

    timed(RetrieveStage, "run", "retrieve stage (encode 1 text, score, rank the gallery)")
    if hasattr(RetrieveStage, "run_batch"):
        timed(RetrieveStage, "run_batch", "retrieve stage (batched)")
    timed(pipeline, "build_trace", "pipeline: build the typed trace (validated once)")
    from agent_cir.eval.benchmarks import Benchmark

    timed(runner, "trim_trace", "eval runner: trim the trace (engines before the column-wise Ranking)")
    timed(Benchmark, "eval_record", "eval record (kept ranking, target rank from the Ranking arrays)")
    timed(TraceWriter, "write", "trace writer: json + write + flush")
    try:
        started = time.perf_counter()
        run_eval("cirr", "val", None, "surrogate_modification", out, limit=limit, gallery_captions=captions_file,
                 annotations=annotations, encoder=encoder, progress=False, max_concurrency=1)
        total = time.perf_counter() - started
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
    spent["everything else (setup, engine, metrics, run.json)"] = total - sum(spent.values())
    return {"total": total, "parts": spent}


def compare(ours: dict, reference: dict, scores: np.ndarray, position: dict, tolerance: float) -> dict:
    """Same rankings up to swaps of near-tied items (scores within ``tolerance`` under the reference)."""
    assert set(ours) == set(reference), f"query ids differ: {len(set(ours) ^ set(reference))} not in both"
    ids = list(reference)
    identical, near_tie, worst = 0, 0, 0.0
    for row, query_id in enumerate(ids):
        a, b = ours[query_id], reference[query_id]
        if a == b:
            identical += 1
            continue
        # sorted by (nearly) the same scores, rank r holds items of (nearly) the same score in both
        assert len(a) == len(b), f"query {query_id}: {len(a)} kept items vs {len(b)}"
        score = scores[row]
        gap = float(np.max(np.abs(np.array([score[position[i]] - score[position[j]] for i, j in zip(a, b)]))))
        worst = max(worst, gap)
        assert gap <= tolerance, f"query {query_id}: rankings differ beyond near-ties (score gap {gap:.2e})"
        near_tie += 1
    return {"queries": len(ids), "identical": identical, "near_tie_swaps": near_tie, "worst_gap": worst}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with cirr/ and cirr_gallery_captions/")
    parser.add_argument("--limit", type=int, default=None, help="first N queries (default: all)")
    parser.add_argument("--chunk-size", type=int, default=None, help="Pipeline chunk size (default: the recipe's)")
    parser.add_argument("--profile", type=Path, default=None, help="also run the eval under cProfile, save stats here")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads for both sides (1 avoids OpenMP oversubscription on a busy machine)")
    parser.add_argument("--breakdown", action="store_true", help="also time the eval's parts, one query at a time")
    parser.add_argument("--tie-tolerance", type=float, default=1e-5)
    args = parser.parse_args()

    from agent_cir.config import load_recipe
    from agent_cir.encoders import create_encoder
    from agent_cir.retrieval.gallery import RetrievalGallery

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    annotations = args.data / "cirr"
    captions_file = args.data / "cirr_gallery_captions" / "cirr_labeled_images_cir_cleaned.json"
    encoder = create_encoder(load_recipe("surrogate_modification").encoder)
    # warm-up, not timed: fills the embedding cache with the gallery captions both sides read
    gallery_ids = list(json.loads((annotations / "image_splits" / "split.rc2.val.json").read_text()))
    RetrievalGallery.from_captions(captions_file, encoder, ids=gallery_ids)
    encoder.encode_texts(["warm up the encoder"])

    with tempfile.TemporaryDirectory(prefix="eval_overhead_") as tmp:
        started = time.perf_counter()
        ours, our_metrics = run_agent_cir_eval(encoder, annotations, captions_file, Path(tmp) / "run", args.limit,
                                               args.chunk_size)
        eval_seconds = time.perf_counter() - started

        started = time.perf_counter()
        reference, ref_metrics, scores, position = reference_rankings(encoder, annotations, captions_file, args.limit)
        reference_seconds = time.perf_counter() - started

        check = compare(ours, reference, scores, position, args.tie_tolerance)
        for name, value in ref_metrics.items():
            assert abs(our_metrics[name] - value) < 0.05, f"{name}: eval {our_metrics[name]} vs reference {value}"

        print(f"queries: {check['queries']}")
        print(f"agent-cir eval (run_eval): {eval_seconds:.2f} s")
        print(f"plain batched reference:   {reference_seconds:.2f} s")
        print(f"ratio: {eval_seconds / reference_seconds:.2f} (goal <= 1.2, issue 16)")
        print(f"rankings: {check['identical']} identical, {check['near_tie_swaps']} differ only by near-tie swaps "
              f"(worst score gap {check['worst_gap']:.1e})")
        print("metrics: " + ", ".join(f"{k}={v:.2f}" for k, v in our_metrics.items()))

        if args.breakdown:
            parts = cost_breakdown(encoder, annotations, captions_file, Path(tmp) / "breakdown", args.limit)
            print(f"cost breakdown, one query at a time: {parts['total']:.2f} s")
            for label, seconds in sorted(parts["parts"].items(), key=lambda item: -item[1]):
                print(f"  {seconds:8.2f} s  {seconds / parts['total'] * 100:5.1f} %  {label}")

        if args.profile is not None:
            profiler = cProfile.Profile()
            profiler.enable()
            run_agent_cir_eval(encoder, annotations, captions_file, Path(tmp) / "profiled", args.limit, args.chunk_size)
            profiler.disable()
            profiler.dump_stats(str(args.profile))
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            print(text.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
