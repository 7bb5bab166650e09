"""Search at scale: exact batched search vs HNSW32 vs IVF-PQ over clustered synthetic unit vectors.

Real CLIP galleries are not uniform on the sphere: images form many tight groups. The data here are
unit vectors around ~10k random centroids (noise sigma chosen so a point's cosine to its centroid is ~0.8),
and the queries are fresh points drawn the same way (not gallery members). For each structure it reports
build time, bytes per vector, ms per query (one batched faiss call for all queries) and recall@50 against
the exact top 50. Every structure is searched through ``agent_cir.retrieval.SearchEngine``, the code path
the pipeline uses, so the timings include our over-fetch/filter layer (one excluded item per query, as a
reference image would be).

    nice -n 10 python benchmarks/search_scale.py --structures ivfpq   # 1M x 512, 1,000 queries
    nice -n 10 python benchmarks/search_scale.py --n 200000 --structures hnsw
    python benchmarks/search_scale.py --n 20000 --centroids 200  # quick sanity check (~20 s)

``--sharded-cli DIR``: the same question through ``agent-cir search -i DIR`` over a sharded on-disk IVF-PQ index
(``agent_cir.index.sharded``, vectors from ``benchmarks/index_scale.py``'s generator, built with the item table
and the encoder record so that the CLI can open it): each search is a fresh ``agent-cir`` process (wall, CPU
and peak RSS of the child), and the same query in-process through ``RetrievalGallery.from_index`` ->
``SearchEngine`` (open time, ms per query). The encoder is a random-init ViT-B-32 (d = 512, no download):
the rankings mean nothing, the costs are the real ones.

    nice -n 10 python benchmarks/search_scale.py --sharded-cli /tmp/sharded_1m --n 1000000 --nlist 1024
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_cir.fusion import normalise  # noqa: E402
from agent_cir.retrieval.gallery import RetrievalGallery  # noqa: E402


def clustered_unit_vectors(count: int, dim: int, centroids: np.ndarray, sigma: float, rng: np.random.Generator,
                           chunk: int = 100_000) -> np.ndarray:
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        owners = rng.integers(0, len(centroids), stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * sigma
        out[start:stop] = normalise(centroids[owners] + noise)
    return out


class _IndexStub:
    """What SearchEngine needs from a GalleryIndex: its faiss index, paths and factory string."""

    def __init__(self, faiss_index, paths, factory: str) -> None:
        self.faiss_index = faiss_index
        self.paths = paths
        self.meta = {"index_factory": factory}


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).size)


def run(args: argparse.Namespace) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    dim = args.dim
    centroids = normalise(rng.standard_normal((args.centroids, dim), dtype=np.float32))
    # sigma: |noise|^2 = dim sigma^2; cos(point, centroid) ~ 1 / sqrt(1 + dim sigma^2) = 0.8
    sigma = float(np.sqrt((1 / 0.8**2 - 1) / dim))
    started = time.perf_counter()
    data = clustered_unit_vectors(args.n, dim, centroids, sigma, rng)
    queries = clustered_unit_vectors(args.queries, dim, centroids, sigma, rng)
    print(f"data: {args.n} x {dim}, {args.centroids} centroids, {args.queries} queries "
          f"({time.perf_counter() - started:.1f} s to generate)", flush=True)
    ids = [str(i) for i in range(args.n)]
    paths = ids
    # One excluded position per query (the reference image of a composed query).
    excluded = [[int(x)] for x in rng.integers(0, args.n, args.queries)]
    k = 50
    rows = []

    def measure(name: str, factory: str, build, settings: list[dict]) -> None:
        gc.collect()
        t0 = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - t0
        size = index_bytes(index)
        gallery = RetrievalGallery(ids=ids, paths=paths, hashes=[None] * args.n, image_embeddings=data,
                                   index=_IndexStub(index, paths, factory))
        engine = gallery.engine
        for setting in settings:
            engine.configure(**setting)
            engine.search(queries[:10], k, exclude=excluded[:10])  # warm-up
            t1 = time.perf_counter()
            found = engine.search(queries, k, exclude=excluded)
            seconds = time.perf_counter() - t1
            recall = float(np.mean([
                len({int(c.id) for c in got} & truth_sets[q]) / k for q, got in enumerate(found)
            ]))
            row = {"structure": name, "factory": factory, "settings": setting, "build_s": round(build_s, 1),
                   "bytes_per_vector": round(size / args.n, 1), "ms_per_query": round(1000 * seconds / args.queries, 3),
                   "recall_at_50": round(recall, 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del gallery, engine, index

    # exact ground truth, through the same engine over a Flat index
    def build_flat():
        index = faiss.IndexFlatIP(dim)
        index.add(data)
        return index

    gc.collect()
    flat = build_flat()
    gallery = RetrievalGallery(ids=ids, paths=paths, hashes=[None] * args.n, image_embeddings=data,
                               index=_IndexStub(flat, paths, "Flat"))
    t1 = time.perf_counter()
    truth = gallery.engine.search(queries, k, exclude=excluded)
    exact_s = time.perf_counter() - t1
    truth_sets = [{int(c.id) for c in got} for got in truth]
    rows.append({"structure": "exact", "factory": "Flat", "settings": {}, "build_s": 0.0,
                 "bytes_per_vector": round(index_bytes(flat) / args.n, 1),
                 "ms_per_query": round(1000 * exact_s / args.queries, 3), "recall_at_50": 1.0})
    print(json.dumps(rows[-1]), flush=True)
    del gallery, flat

    if "hnsw" in args.structures:
        def build_hnsw():
            index = faiss.index_factory(dim, "HNSW32", faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = args.ef_construction
            index.add(data)
            return index

        measure("HNSW32", "HNSW32", build_hnsw, [{"ef_search": e} for e in args.ef_search])

    if "ivfpq" in args.structures:
        nlist = args.nlist
        train = data[rng.choice(args.n, min(args.n, nlist * 40), replace=False)]

        def build_ivfpq(factory: str):
            def build():
                index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
                index.train(train)
                index.add(data)
                return index
            return build

        pq = f"IVF{nlist},{args.pq}"
        measure("IVF-PQ", pq, build_ivfpq(pq), [{"nprobe": p} for p in args.nprobe])
        refine = f"IVF{nlist},{args.pq},RFlat"
        measure("IVF-PQ + refine", refine, build_ivfpq(refine),
                [{"nprobe": p, "faiss_params": {"k_factor_rf": args.k_factor}} for p in args.nprobe])
    return {"args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "rows": rows}


def sharded_cli(args: argparse.Namespace) -> dict:
    """Build (or reuse) a searchable sharded index in ``args.sharded_cli``, then time ``agent-cir search`` on it."""
    import os
    import subprocess

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import index_scale  # the 10M benchmark's data generator (benchmarks/ is on sys.path when run as a script)

    from agent_cir.config import EncoderConfig
    from agent_cir.encoders import create_encoder
    from agent_cir.index.sharded import META_NAME, build_sharded

    import faiss

    faiss.omp_set_num_threads(args.threads)  # OpenMP threads spin-wait: on a loaded machine 1 can train 50x faster
    folder = Path(args.sharded_cli)
    report: dict = {"n": args.n, "factory": f"IVF{args.nlist}_HNSW32,PQ64"}
    report["seconds_generate"] = round(index_scale.generate(folder, args.n, args.shard_size), 1)
    if not (folder / "index" / META_NAME).is_file():
        encoder = create_encoder(EncoderConfig(backend="open_clip", model="ViT-B-32", pretrained="none"))
        shards = index_scale.open_shards(folder, args.n, args.shard_size)
        ids = [f"images/{row:08d}.jpg" for row in range(args.n)]
        build = build_sharded(shards, folder / "index", factory=report["factory"], train_size=args.train_size,
                              progress=True, ids=ids, encoder_info=encoder.info)
        report.update({"seconds_train": round(build.seconds_train, 1), "seconds_add": round(build.seconds_add, 1),
                       "seconds_merge": round(build.seconds_merge, 1),
                       "bytes_per_vector": round(build.bytes_per_vector, 1)})
        del encoder
    index_dir = str(folder / "index")
    command = [sys.executable, "-m", "agent_cir.cli", "search", "-i", index_dir, "--text", "a red dress with long sleeves",
               "-k", "50", "--json"]
    # A small wrapper process runs the CLI and reports ITS child's peak RSS: measured from this (large) process,
    # a forked child counts the parent's pages until it execs.
    wrapper = ("import re, resource, subprocess, sys, time; t = time.perf_counter(); "
               "d = subprocess.run(sys.argv[1:], capture_output=True, text=True); w = time.perf_counter() - t; "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "m = re.search(r'models ready in ([0-9.]+) s', d.stderr); "
               "print(d.returncode, round(w, 2), round(u.ru_utime + u.ru_stime, 2), u.ru_maxrss // 1024, "
               "m.group(1) if m else -1, d.stdout.count('\"rank\"'), file=sys.stderr); sys.stderr.write(d.stderr[-2000:])")
    runs = []
    for _ in range(args.cli_runs):
        done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        code, wall, cpu, peak, ready, results = done.stderr.splitlines()[0].split()
        if code != "0":
            raise SystemExit(f"agent-cir search failed:\n{done.stderr[-2000:]}")
        runs.append({"wall_s": float(wall), "cpu_s": float(cpu), "peak_rss_mb": int(peak),
                     "models_ready_s": float(ready), "after_models_s": round(float(wall) - float(ready), 2),
                     "results": int(results)})
        print(json.dumps(runs[-1]), flush=True)
    report["cli_runs"] = runs

    from agent_cir.index.sharded_gallery import ShardedGallery
    from agent_cir.retrieval.gallery import RetrievalGallery

    queries = np.load(folder / "queries.npy")[:200]
    for refine in (None, 10):  # the codes' order, then the default: 10 x k candidates re-scored exactly
        started = time.perf_counter()
        gallery = RetrievalGallery.from_index(ShardedGallery(index_dir, refine_factor=refine))
        engine = gallery.engine
        engine.configure(nprobe=16)
        name = f"refine_{refine}" if refine else "codes_only"
        report[f"{name}_seconds_open_in_process"] = round(time.perf_counter() - started, 3)
        engine.search(queries[:5], 50, exclude=[[0]] * 5)  # warm the pages
        started = time.perf_counter()
        for query in queries:
            engine.search(query[None, :], 50, exclude=[[0]])
        report[f"{name}_ms_per_query_single"] = round(1000 * (time.perf_counter() - started) / len(queries), 2)
        started = time.perf_counter()
        engine.search(queries, 50, exclude=[[0]] * len(queries))
        report[f"{name}_ms_per_query_batched"] = round(1000 * (time.perf_counter() - started) / len(queries), 2)
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sharded-cli", type=Path, default=None, help="build/reuse a sharded index here and "
                        "time `agent-cir search` on it (see the docstring)")
    parser.add_argument("--shard-size", type=int, default=500_000)
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--centroids", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--structures", nargs="+", default=["hnsw", "ivfpq"], choices=["hnsw", "ivfpq"])
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: 1024 at 1M, ~2 sqrt(n) below)")
    parser.add_argument("--pq", default="PQ64x4fs",
                        help="the PQ part of the IVF factory (4-bit fast-scan codes train in seconds; PQ64 = 8-bit)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--k-factor", type=float, default=4.0, help="refine: candidates re-scored exactly = k x this")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.nlist is None:
        args.nlist = 1024 if args.n >= 500_000 else max(16, int(2 * np.sqrt(args.n)))
    if args.sharded_cli is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        report = sharded_cli(args)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n| structure | settings | build s | bytes/vector | ms/query | recall@50 |")
    print("|---|---|---|---|---|---|")
    for row in result["rows"]:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "-"
        print(f"| {row['structure']} ({row['factory']}) | {settings} | {row['build_s']} | {row['bytes_per_vector']} "
              f"| {row['ms_per_query']} | {row['recall_at_50']} |")


if __name__ == "__main__":
    main()
