"""Client CPU per query: caption -> rewrite -> retrieve -> grid judge (k = 9) through ``openai:`` backends.

What is measured is this process's CPU time (``time.process_time``: user + system of every thread), not wall
time, divided by the number of queries. The loopback fake OpenAI-compatible server (the one
``benchmarks/server_concurrency.py`` uses) runs in a CHILD process, so its JSON parsing and HTTP handling are
not counted: what remains is what agent_cir costs a client per query (prompt rendering, message building,
image reading and encoding, the grid, the LangChain/openai call, parsing, the trace). The server answers at
once (latency 0): waiting costs no CPU. Cache off, so every query makes its 3 calls (the script checks the
server's request count).

Gallery and references: real photos (ImageNet samples of ``../shared/data/photos``, 320 x 240 JPEG) when
present, else generated pictures: a gallery of ``--gallery`` photos and one reference per query outside it,
each query's text carrying its own word so that the judge sees a different set of 9 candidates per query
(repeated candidates would flatter any per-file memo).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/client_cpu.py                      # this checkout
    PYTHONPATH=$PWD .venv/bin/python benchmarks/client_cpu.py --code /tmp/before   # another checkout's agent_cir
    PYTHONPATH=$PWD .venv/bin/python benchmarks/client_cpu.py --profile 25         # + cProfile, top 25 by own time
    PYTHONPATH=$PWD .venv/bin/python benchmarks/client_cpu.py --sample-grid /tmp/grids  # one grid, PNG vs JPEG
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 40.0
ANSWERS = {
    "captioner": "A red car parked on a street.",
    "rewriter": json.dumps({"reasoning": "colour: red -> blue", "target_description": "a blue car on a street"}),
    "judge": "Cell 2 matches best.\nFinal answer: 2 > 1 > 3 > 4 > 5 > 6 > 7 > 8 > 9",
}


def _serve(code: str, connection) -> None:
    """Child process: the fake server, until the parent says stop; then the request count goes back."""
    sys.path.insert(0, code)
    from agent_cir.testing.openai_server import FakeOpenAIServer

    def reply(body: dict) -> str:
        if body["model"] != "rewriter":
            return ANSWERS[body["model"]]
        # the target echoes the query's own words, so that each query retrieves its own candidates
        found = re.search(r"make it ([a-z ]+)", json.dumps(body))
        words = found.group(1).strip() if found else "blue"
        return json.dumps({"reasoning": "as asked", "target_description": f"a car on a street, {words}"})

    server = FakeOpenAIServer(replies=[reply]).start()
    connection.send(server.base_url)
    connection.recv()
    server.stop()
    connection.send(len(server.requests))


WORDS = ("red", "blue", "green", "tall", "small", "wooden", "metal", "striped", "dotted", "bright", "dark", "round",
         "square", "old", "new", "shiny", "matte", "furry", "smooth", "rough")


def _photos(folder: Path, count: int) -> list[Path]:
    source = ROOT.parent / "shared" / "data" / "photos" / "imagenet-samples"
    found = sorted(source.glob("*.jpg"))[:count] if source.is_dir() else []
    if len(found) == count:
        return found
    from PIL import Image

    rng = np.random.default_rng(0)
    made = []
    for number in range(count):  # smooth gradients + a block: compresses like a photo, not like noise
        y, x = np.mgrid[0:375, 0:500]
        base = rng.integers(0, 255, 3)
        pixels = ((base + np.stack([x, y, x + y], -1) * rng.uniform(0.1, 0.4, 3)) % 255).astype(np.uint8)
        path = folder / f"photo_{number:02d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        made.append(path)
    return made


def sample_grid(out: Path, photos: list[Path]) -> None:
    """One 3 x 3 judge grid of real photos encoded both ways, for a person to compare (bytes, ms)."""
    from PIL import Image

    from agent_cir.config import GridConfig
    from agent_cir.grid import render_grid

    out.mkdir(parents=True, exist_ok=True)
    grid = render_grid([str(p) for p in photos[:9]], GridConfig())
    rows = []
    for name, options in (("png_level1", {"format": "PNG", "compress_level": 1}),
                          ("png_level6", {"format": "PNG", "compress_level": 6}),
                          ("jpeg_q90", {"format": "JPEG", "quality": 90}),
                          ("jpeg_q85", {"format": "JPEG", "quality": 85})):
        started = time.process_time()
        for _ in range(5):
            buffer = io.BytesIO()
            grid.image.save(buffer, **options)
        ms = (time.process_time() - started) / 5 * 1000
        suffix = ".png" if options["format"] == "PNG" else ".jpg"
        (out / f"grid_{name}{suffix}").write_bytes(buffer.getvalue())
        rows.append({"encoding": name, "bytes": len(buffer.getvalue()), "cpu_ms": round(ms, 1)})
    side = Image.new("RGB", (grid.image.width * 2 + 8, grid.image.height), (255, 255, 255))
    side.paste(Image.open(out / "grid_png_level1.png"), (0, 0))
    side.paste(Image.open(out / "grid_jpeg_q90.jpg"), (grid.image.width + 8, 0))
    side.save(out / "side_by_side_png1_left_jpeg90_right.png")
    print(json.dumps({"grid_size": grid.image.size, "encodings": rows}, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--gallery", type=int, default=300, help="gallery photos (references are others)")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose agent_cir (with agent_cir.testing) to run")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N functions by own time")
    parser.add_argument("--sample-grid", type=Path, default=None, help="write one grid as PNG and JPEG here, then stop")
    args = parser.parse_args()
    code = str(args.code.resolve())
    sys.path.insert(0, code)

    from agent_cir.fusion import normalise
    from agent_cir.pipeline import Pipeline
    from agent_cir.retrieval.gallery import RetrievalGallery
    from agent_cir.types import Query
    from agent_cir.testing.encoders import BagOfWordsEncoder

    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    child = context.Process(target=_serve, args=(code, there), daemon=True)
    child.start()
    base_url = here.recv()
    try:
        with tempfile.TemporaryDirectory(prefix="client_cpu_") as tmp:
            folder = Path(tmp)
            photos = _photos(folder, args.gallery + args.queries + 4)
            if args.sample_grid is not None:
                sample_grid(args.sample_grid, photos)
                return 0
            gallery_paths = [str(p) for p in photos[:args.gallery]]
            references = [str(p) for p in photos[args.gallery:]]
            encoder = BagOfWordsEncoder()
            gallery = RetrievalGallery(
                ids=[Path(p).name for p in gallery_paths], paths=gallery_paths, hashes=[None] * len(gallery_paths),
                # random directions, not the bag-of-words encoder's mean colours (which rank the same few photos
                # first for every text): each query's words then pick their own 9 candidates
                image_embeddings=normalise(np.random.default_rng(2).standard_normal(
                    (len(gallery_paths), encoder.dim)).astype(np.float32)),
            )
            model = {"base_url": base_url, "max_concurrency": args.concurrency, "max_retries": 0, "timeout": 30}
            recipe = {
                "name": "client_cpu",
                "models": {name: {"spec": f"openai:{name}", **model} for name in ANSWERS},
                "caption": {"enabled": True, "model": "captioner"},
                "rewrite": {"enabled": True, "model": "rewriter"},
                "retrieve": {"mode": "text", "k": 9, "exclude_reference": False},
                "rerank": {"enabled": True, "model": "judge", "k": 9, "structured_output": False},
                "cache": {"enabled": False},
                "max_concurrency": args.concurrency,
            }
            pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=encoder, artifacts_dir=folder / "artifacts")
            rng = np.random.default_rng(1)

            def text(number: int) -> str:
                return "make it " + " ".join(rng.choice(WORDS, 3, replace=False)) + f" {number}"

            warm = [Query(id=f"warm{i}", text=text(i), image=references[args.queries + i]) for i in range(4)]
            pipe.run_batch(warm, max_concurrency=args.concurrency, progress=False)  # imports, first connections
            queries = [Query(id=f"q{i}", text=text(i), image=references[i]) for i in range(args.queries)]
            profilers: list = []
            if args.profile:
                import cProfile
                import threading

                def start_profiler(*_: object) -> None:
                    # threading.setprofile runs this first in every new thread (the stages' workers): from
                    # then on that thread has its own cProfile; cProfile alone sees only the calling thread
                    profiler = cProfile.Profile()
                    profilers.append(profiler)
                    profiler.enable()

                threading.setprofile(start_profiler)
                start_profiler()
            started, cpu_started = time.perf_counter(), time.process_time()
            results = pipe.run_batch(queries, max_concurrency=args.concurrency, progress=False)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            if profilers:
                import threading

                threading.setprofile(None)
                profilers[0].disable()
    finally:
        here.send("stop")
        requests = here.recv()
        child.join(timeout=10)

    per_query_ms = cpu / args.queries * 1000
    print(f"code: {code}")
    print(f"queries: {len(results)}, failed: {len(pipe.failures)}; server requests: {requests} "
          f"(expected {3 * (args.queries + 4)})")
    print(f"client CPU: {cpu:.2f} s for {args.queries} queries = {per_query_ms:.1f} ms per query "
          f"(goal <= {GOAL_MS:.0f}); wall {seconds:.2f} s")
    if profilers:
        import pstats

        stats = pstats.Stats(profilers[0])
        for other in profilers[1:]:
            other.disable()
            stats.add(other)
        stats.sort_stats("tottime").print_stats(args.profile)
        stats.sort_stats("cumulative").print_stats(args.profile)
    assert not pipe.failures, pipe.failures[:3]
    assert requests == 3 * (args.queries + 4), f"{requests} requests"
    shown = {cell for r in results for s in r.trace.stages if s.stage == "rerank"
             for grid in s.output.grids for cell in grid.cells.values()}
    print(f"distinct candidates shown to the judge: {len(shown)} (9 per query, {args.queries} queries)")
    judged = sum(1 for r in results if any(s.stage == "rerank" and s.calls for s in r.trace.stages))
    assert judged == args.queries, f"only {judged} queries reached the judge"
    return 0 if per_query_ms <= GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
