"""10M-vector sharded compressed index: build time, bytes/vector, search RSS, ms/query, recall@50.

    .venv/bin/python benchmarks/index_scale.py --n 10000000 --dir /data/index_scale     # the full run (~12 GB of disk)
    .venv/bin/python benchmarks/index_scale.py --n 200000 --nlist 256 --dir /tmp/scale   # a 1-minute check

Data: synthetic unit vectors, d = 512, shaped like CLIP embeddings rather than isotropic noise (whose
nearest neighbours are meaningless in 512-d): 100 topics x 100 sub-topics = 10,000 cluster centres (a
sub-topic is its topic plus a smaller offset, so nearby clusters exist, as with real concepts); each vector
is its centre plus an offset in a 16-d subspace of its topic (embeddings have a low local intrinsic
dimension) plus small full-rank noise, normalised. Written as
fp16 shards of 500k rows (the "exact vectors" that ``--refine`` re-scores with). Queries: 1,000 fresh draws
of the same distribution. Ground truth: exact inner-product top-50, streamed over the shards.

Phases (each skipped when its output exists): generate shards -> build (train on a 200k sample, add each
shard, merge into on-disk inverted lists) -> exact truth -> search. The search phase runs in a fresh
subprocess so that its resident memory (VmHWM) is the search's own, not the build's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# faiss' OpenMP threads spin while waiting; on a shared 2-core machine that makes training ~50x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_cir.index.sharded import ShardedIndex, build_sharded, exact_search_streaming, recall_at_k  # noqa: E402

DIM, TOPICS, SUBTOPICS, LOCAL_DIM = 512, 100, 100, 16


def _structure(seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """(centres (10,000 x d), per-topic local bases (100 x d x 16)), fixed by the seed."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((TOPICS, DIM)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    offsets = rng.standard_normal((TOPICS, SUBTOPICS, DIM)).astype(np.float32) * (0.6 / np.sqrt(DIM))
    centres = (topics[:, None, :] + offsets).reshape(-1, DIM)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = np.stack([np.linalg.qr(rng.standard_normal((DIM, LOCAL_DIM)))[0] for _ in range(TOPICS)]).astype(np.float32)
    return centres, bases


def draw(n: int, seed: int, centres: np.ndarray, bases: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), n)
    local = rng.standard_normal((n, LOCAL_DIM), dtype=np.float32) * (0.35 / np.sqrt(LOCAL_DIM))
    vectors = centres[labels].copy()
    topic = labels // SUBTOPICS
    for t in np.unique(topic):
        rows = topic == t
        vectors[rows] += local[rows] @ bases[t].T
    vectors += rng.standard_normal((n, DIM), dtype=np.float32) * (0.1 / np.sqrt(DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def shard_paths(folder: Path, n: int, shard_size: int) -> list[Path]:
    return [folder / "vectors" / f"{i:05d}.npy" for i in range((n + shard_size - 1) // shard_size)]


def generate(folder: Path, n: int, shard_size: int) -> float:
    centres, bases = _structure()
    started = time.perf_counter()
    for number, path in enumerate(shard_paths(folder, n, shard_size)):
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = min(shard_size, n - number * shard_size)
        block = draw(rows, seed=10_000 + number, centres=centres, bases=bases).astype(np.float16)
        temporary = path.with_suffix(".tmp.npy")
        np.save(temporary, block)
        os.replace(temporary, path)
        print(f"  shard {number}: {rows} rows", flush=True)
    queries = folder / "queries.npy"
    if not queries.is_file():
        np.save(queries, draw(1000, seed=7, centres=centres, bases=bases))
    return time.perf_counter() - started


def open_shards(folder: Path, n: int, shard_size: int) -> list[np.ndarray]:
    return [np.load(path, mmap_mode="r") for path in shard_paths(folder, n, shard_size)]


def memory_mb() -> dict[str, float]:
    """VmRSS / VmHWM (peak) and the split of resident memory: RssAnon (the process's own allocations) and
    RssFile (pages of memory-mapped files: the inverted lists and, with refine, the exact vectors; the OS
    page cache, reclaimable under pressure)."""
    status = Path("/proc/self/status").read_text()
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    values = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith(keys)}
    return {key: round(values.get(key, 0) / 1024, 1) for key in keys}


def rss_mb() -> tuple[float, float]:
    memory = memory_mb()
    return memory["VmRSS"], memory["VmHWM"]


def search_phase(args: argparse.Namespace) -> None:
    """Runs in its own process: open the merged index memory-mapped, search, measure."""
    import faiss

    folder = Path(args.dir)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rss_start = rss_mb()[0]
    index = ShardedIndex(folder / "index", exact_shards=open_shards(folder, args.n, args.shard_size))
    queries = np.load(folder / "queries.npy")
    truth = np.load(folder / "truth.npy")
    rows = []
    for nprobe in args.nprobe:
        index.set_nprobe(nprobe)
        for refine in [None, *args.refine]:
            index.search(queries[:20], args.k, refine=refine)  # warm the pages this setting touches
            started = time.perf_counter()
            _, found = index.search(queries, args.k, refine=refine)
            batched_ms = (time.perf_counter() - started) * 1000 / len(queries)
            started = time.perf_counter()
            for query in queries[:100]:
                index.search(query[None], args.k, refine=refine)
            single_ms = (time.perf_counter() - started) * 1000 / 100
            rows.append({
                "nprobe": nprobe, "refine": refine or 0, "recall@50": round(recall_at_k(found, truth), 4),
                "ms_per_query_batched": round(batched_ms, 3), "ms_per_query_single": round(single_ms, 3),
            })
            print(json.dumps(rows[-1]), flush=True)
    rss_now, rss_peak = rss_mb()
    print(json.dumps({"search_rows": rows, "rss_mb_after_open": round(rss_start, 1),
                      "rss_mb_now": round(rss_now, 1), "rss_mb_peak": round(rss_peak, 1),
                      "memory_mb": memory_mb()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--shard-size", type=int, default=500_000)
    parser.add_argument("--dir", default="/tmp/agent_cir_index_scale")
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--pq", type=int, default=64, help="PQ sub-quantizers (bytes per code)")
    parser.add_argument("--factory", default=None, help="faiss factory string (default IVF{nlist}_HNSW32,PQ{pq})")
    parser.add_argument("--train-size", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--refine", type=int, nargs="*", default=[200, 500])
    parser.add_argument("--phase", choices=["all", "search"], default="all")
    args = parser.parse_args()
    if args.phase == "search":
        search_phase(args)
        return

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    report: dict = {"n": args.n, "dim": DIM, "factory": args.factory or f"IVF{args.nlist}_HNSW32,PQ{args.pq}"}
    print(f"generating {args.n} vectors in {folder}", flush=True)
    report["seconds_generate"] = round(generate(folder, args.n, args.shard_size), 1)
    shards = open_shards(folder, args.n, args.shard_size)

    print("building the sharded index", flush=True)
    build = build_sharded(shards, folder / "index", factory=report["factory"], train_size=args.train_size, progress=True)
    report.update({
        "seconds_train": round(build.seconds_train, 1), "seconds_add": round(build.seconds_add, 1),
        "seconds_merge": round(build.seconds_merge, 1), "shards_reused": build.shards_reused,
        "index_bytes_per_vector": round(build.bytes_per_vector, 2),
        "exact_fp16_bytes_per_vector": 2 * DIM,
        "build_seconds_total": round(build.seconds_train + build.seconds_add + build.seconds_merge, 1),
    })

    truth_path = folder / "truth.npy"
    if not truth_path.is_file():
        print("exact top-50 by streaming the shards", flush=True)
        started = time.perf_counter()
        _, truth = exact_search_streaming(shards, np.load(folder / "queries.npy"), args.k)
        report["seconds_exact_truth"] = round(time.perf_counter() - started, 1)
        np.save(truth_path, truth)

    print("searching (fresh process, memory-mapped)", flush=True)
    command = [sys.executable, __file__, "--phase", "search", "--n", str(args.n), "--shard-size", str(args.shard_size),
               "--dir", str(folder), "--k", str(args.k), "--nprobe", *map(str, args.nprobe),
               "--refine", *map(str, args.refine)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    print(done.stdout, end="")
    report.update(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(report, indent=2))
    (folder / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
