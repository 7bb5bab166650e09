"""Ray engine vs local engine: `agent-cir index --engine ray` throughput, Ray's overhead, and 1 vs 2 encoder actors.

Real-size open_clip ViT-B-32 with random init (`--pretrained none`: the FLOPs of trained weights), fp32, batch 64,
the 1,000 photos of ../shared/data/photos/imagenet-samples, each run into a fresh index folder through
`run_index` (what the CLI calls). Measured per run: the encode phase as the build summary reports it (for Ray this
includes starting the actors and building the model in each; the cluster itself is started once, timed apart)
and the whole build. Runs:

  local            the default engine: decode in DataLoader workers, encode in this process (all torch threads)
  ray, 1 actor     local Ray cluster, 1 encoder actor x 1 CPU; decode tasks on the other logical CPUs
  ray, 2 actors    2 encoder actors x 1 CPU

The Ray cluster gets ``--ray-cpus`` logical CPUs (default 3 = 2 actors + 1 decode task) on however many cores
the machine has; Ray gives an actor with num_cpus=1 one torch thread (OMP_NUM_THREADS=1), recorded below.

How to run (quiet machine if possible; say how loaded it was):
  nice .venv/bin/python benchmarks/ray_index.py --json /tmp/ray_index.json
  .venv/bin/python benchmarks/ray_index.py --limit 128          # quick check
Record results and the exact command in benchmarks/RESULTS.md ("Scaling out: Ray indexing").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "photos" / "imagenet-samples"


def _run(label: str, folder: Path, files: list[str], out: Path, args: argparse.Namespace, engine: str, options: dict | None) -> dict:
    from agent_cir.cli.index_cmd import run_index

    started = time.perf_counter()
    index = run_index(
        folder, out, model=args.model, pretrained="none", batch_size=args.batch_size, progress=False,
        files=files, engine=engine, engine_options=options,
    )
    whole = time.perf_counter() - started
    summary = index.build_summary
    assert summary.indexed == len(files), (label, summary.to_dict())
    result = {
        "run": label,
        "engine": engine,
        "options": options or {},
        "images": summary.indexed,
        "encode_seconds": round(summary.encode_seconds, 2),
        "encode_images_per_second": round(summary.images_per_second, 2),
        "whole_seconds": round(whole, 2),
        "whole_images_per_second": round(summary.indexed / whole, 2),
    }
    print(json.dumps(result), flush=True)
    return result


def _actor_threads(ray) -> int:
    @ray.remote(num_cpus=1)
    def threads() -> int:
        import torch

        return torch.get_num_threads()

    return int(ray.get(threads.remote()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--ray-cpus", type=int, default=3, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.photos.is_dir():
        sys.exit(f"photos folder not found: {args.photos}")
    import ray
    import torch

    files = sorted(p.name for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[: args.limit]
    load_before = os.getloadavg()
    print(f"{len(files)} photos, {args.model} random init, batch {args.batch_size}, cores {os.cpu_count()}, "
          f"driver torch threads {torch.get_num_threads()}, load average {load_before}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="ray_index_bench_") as tmp:
        work = Path(tmp)
        results.append(_run("local", args.photos, files, work / "local", args, "local", None))
        started = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
        cluster_start = time.perf_counter() - started
        try:
            actor_threads = _actor_threads(ray)
            for actors in (1, 2):
                options = {"concurrency": actors, "num_cpus_per_actor": 1.0}
                results.append(_run(f"ray, {actors} actor{'s' if actors > 1 else ''}", args.photos, files, work / f"ray{actors}", args, "ray", options))
        finally:
            ray.shutdown()
    local, one, two = results
    report = {
        "images": len(files),
        "model": args.model,
        "batch_size": args.batch_size,
        "cores": os.cpu_count(),
        "ray_logical_cpus": args.ray_cpus,
        "ray_cluster_start_seconds": round(cluster_start, 2),
        "torch_threads_driver": torch.get_num_threads(),
        "torch_threads_per_actor": actor_threads,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "runs": results,
        "ratio_ray1_to_local_encode": round(one["encode_images_per_second"] / local["encode_images_per_second"], 3),
        "ratio_ray2_to_local_encode": round(two["encode_images_per_second"] / local["encode_images_per_second"], 3),
        "scaling_2_vs_1_actor_encode": round(two["encode_images_per_second"] / one["encode_images_per_second"], 3),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
