"""Server concurrency: the whole pipeline (caption -> rewrite -> retrieve -> grid judge) against a loopback fake
OpenAI-compatible server that answers every request after a fixed latency.

200 queries x 3 model calls (caption, rewrite, judge), max_concurrency 16 (each model and the pipeline): the
ideal wall time is 200 * 3 * latency / 16; the goal is to finish within 1.25x of it. The model cache is off, so
every call reaches the server (the script checks the request count).

  PYTHONPATH=$PWD .venv/bin/python benchmarks/server_concurrency.py
  PYTHONPATH=$PWD .venv/bin/python benchmarks/server_concurrency.py --queries 64 --latency 0.2 --chunk-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL = 1.25


def _gallery(folder: Path, encoder, size: int = 24):
    from agent_cir.retrieval.gallery import RetrievalGallery

    rng = np.random.default_rng(0)
    paths, pictures = [], []
    for index in range(size):
        picture = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
        path = folder / f"g{index:02d}.png"
        picture.save(path)
        paths.append(str(path))
        pictures.append(picture)
    return RetrievalGallery(
        ids=[Path(p).name for p in paths], paths=paths, hashes=[None] * size,
        image_embeddings=encoder.encode_images(pictures),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before answering")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=None, help="Pipeline chunk size (default: the recipe's)")
    args = parser.parse_args()

    from agent_cir.pipeline import Pipeline
    from agent_cir.types import Query
    from agent_cir.testing.openai_server import FakeOpenAIServer
    from agent_cir.testing.encoders import BagOfWordsEncoder

    answers = {
        "captioner": "A red car parked on a street.",
        "rewriter": json.dumps({"reasoning": "colour: red -> blue", "target_description": "a blue car on a street"}),
        "judge": "Cell 2 matches best.\nFinal answer: 2 > 1 > 3 > 4 > 5 > 6 > 7 > 8 > 9",
    }

    in_flight = {"now": 0, "peak": 0, "busy": 0.0, "since": None}
    lock = threading.Lock()

    def reply(body: dict) -> str:
        with lock:
            in_flight["now"] += 1
            in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        time.sleep(args.latency)  # the server's fixed latency, per request, in its own handler thread
        with lock:
            in_flight["now"] -= 1
            in_flight["busy"] += args.latency
        return answers[body["model"]]

    server = FakeOpenAIServer(replies=[reply]).start()
    try:
        with tempfile.TemporaryDirectory(prefix="server_concurrency_") as tmp:
            folder = Path(tmp)
            encoder = BagOfWordsEncoder()
            gallery = _gallery(folder, encoder)
            reference = folder / "reference.png"
            Image.new("RGB", (64, 48), (200, 30, 30)).save(reference)
            model = {"base_url": server.base_url, "max_concurrency": args.concurrency, "max_retries": 0,
                     "timeout": 30}
            recipe = {
                "name": "server_concurrency",
                "models": {name: {"spec": f"openai:{name}", **model} for name in answers},
                "caption": {"enabled": True, "model": "captioner"},
                "rewrite": {"enabled": True, "model": "rewriter"},
                "retrieve": {"mode": "text", "k": 9, "exclude_reference": False},
                # plain text: a grid answer is not JSON, and the structured attempt would add a request
                "rerank": {"enabled": True, "model": "judge", "k": 9, "structured_output": False},
                "cache": {"enabled": False},
                "max_concurrency": args.concurrency,
            }
            if args.chunk_size:
                recipe["chunk_size"] = args.chunk_size
            pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=encoder, artifacts_dir=folder / "artifacts")
            queries = [Query(id=f"q{i}", text=f"make it blue, variant {i}", image=str(reference))
                       for i in range(args.queries)]
            started, cpu_started = time.perf_counter(), time.process_time()
            results = pipe.run_batch(queries, max_concurrency=args.concurrency, progress=False)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        server.stop()

    calls = 3 * args.queries
    ideal = calls * args.latency / args.concurrency
    ratio = seconds / ideal
    print(f"queries: {len(results)} done, {len(pipe.failures)} failed; server requests: {len(server.requests)}")
    print(f"wall: {seconds:.2f} s; ideal {calls} x {args.latency} s / {args.concurrency} = {ideal:.2f} s")
    print(f"ratio: {ratio:.3f} (goal <= {GOAL})")
    print(f"server: peak {in_flight['peak']} requests in flight, mean {in_flight['busy'] / seconds:.1f}")
    print(f"process CPU (pipeline + in-process fake server): {cpu:.2f} s ({cpu / args.queries * 1000:.0f} ms per query) on {os.cpu_count()} cores")
    stage_seconds: dict[str, float] = {}
    for result in results:
        for stage in result.trace.stages:
            stage_seconds[stage.stage] = stage_seconds.get(stage.stage, 0.0) + stage.seconds
    print("mean stage seconds per query: " + ", ".join(f"{k} {v / len(results):.3f}" for k, v in stage_seconds.items()))
    assert not pipe.failures, pipe.failures[:3]
    assert len(server.requests) == calls, f"{len(server.requests)} requests, expected {calls}"
    judged = sum(1 for r in results if any(s.stage == "rerank" and s.calls for s in r.trace.stages))
    assert judged == args.queries, f"only {judged} queries reached the judge"
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
