"""Cost of reranking the top k: grid-listwise vs pointwise, for k = 9, 20, 50.

For each (k, method) it runs the real RerankStage with a tiny random VLM of a real architecture (through
the ``hf-vlm`` backend) on real photos, and reports:
- model calls and images sent (counted by the stage);
- approximate image tokens a Qwen2-VL judge would read: every image actually sent (reference, grid PNGs,
  candidate photos) is put through transformers' ``Qwen2VLImageProcessor`` configured as the released
  Qwen2-VL-7B-Instruct (min_pixels 3136, max_pixels 12845056, patch 14, merge 2); tokens per image =
  grid_t * grid_h * grid_w / merge^2 (that is (H/28) * (W/28) after smart resize);
- wall time with the tiny model (the judge's own compute is negligible; this shows the per-call overhead
  of grid rendering, image encoding and generation, not a real VLM's latency).

Run:  .venv/bin/python benchmarks/rerank_cost.py [--photos DIR] [--out benchmarks/rerank_cost.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import agent_cir  # noqa: E402,F401  (installs the torchvision guard before transformers imports it)
from agent_cir.config import ModelConfig, RerankConfig  # noqa: E402
from agent_cir.rerank.stage import RerankStage  # noqa: E402
from agent_cir.types import Candidate, Query, QueryState  # noqa: E402

DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "photos" / "imagenet-samples"
QWEN2_VL_RELEASED = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
                     "temporal_patch_size": 2}


def qwen2_vl_token_counter():
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(
        min_pixels=QWEN2_VL_RELEASED["min_pixels"], max_pixels=QWEN2_VL_RELEASED["max_pixels"],
        patch_size=14, merge_size=2, temporal_patch_size=2,
    )
    memo: dict[str, int] = {}

    def tokens(image: str | bytes) -> int:
        key = image if isinstance(image, str) else str(hash(image))
        if key not in memo:
            source = Image.open(image if isinstance(image, str) else io.BytesIO(image)).convert("RGB")
            t, h, w = processor(images=[source], return_tensors="pt")["image_grid_thw"][0].tolist()
            memo[key] = int(t * h * w) // (processor.merge_size ** 2)
        return memo[key]

    return tokens


def build_judge(folder: Path):
    """The test suite's tiny random LLaVA (real architecture, built offline in seconds), through ``hf-vlm:``."""
    from agent_cir.backends.create import create_chat_model
    from agent_cir.testing.tiny_llava import build_tiny_llava

    model_dir = build_tiny_llava(folder / "tiny-vlm")
    return create_chat_model(ModelConfig(spec=f"hf-vlm:{model_dir}", max_tokens=16, seed=0)), model_dir


def run(photos: Path, ks: list[int], repeat: int = 3) -> list[dict]:
    paths = sorted(str(p) for p in photos.glob("*.jpg"))
    if len(paths) < max(ks) + 1:
        raise SystemExit(f"need {max(ks) + 1} photos in {photos}, found {len(paths)}")
    count_tokens = qwen2_vl_token_counter()
    coco_tokens = count_tokens(_blank_png(640, 480))  # a typical COCO / CIRR photo size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        judge, model_dir = build_judge(Path(tmp))
        reference = paths[0]
        for k in ks:
            candidates = [Candidate(id=Path(p).name, score=1.0 - i / 1000, path=p, rank=i + 1)
                          for i, p in enumerate(paths[1 : k + 1])]
            for method, overflow in (("grid", "sliding"), ("grid", "tournament"), ("pointwise", "sliding")):
                if overflow == "tournament" and k <= 9:
                    continue  # one grid: no overflow strategy involved
                config = RerankConfig(enabled=True, k=k, method=method, overflow=overflow)
                stage = RerankStage(config, judge, cache=None)
                state = QueryState(query=Query(id=f"k{k}-{method}", text="make the animal swim in water",
                                               image=reference), candidates=list(candidates))
                state.target_descriptions = ["the same animal swimming in clear water"]
                state.artifacts_dir = Path(tmp) / f"k{k}-{method}"
                timings = []
                for _ in range(repeat):  # best of N: the machine is shared, the minimum is the least disturbed
                    run_state = QueryState(query=state.query, candidates=list(candidates),
                                           target_descriptions=list(state.target_descriptions),
                                           artifacts_dir=state.artifacts_dir)
                    started = time.perf_counter()
                    record = stage.run(run_state)
                    timings.append(time.perf_counter() - started)
                seconds = min(timings)
                output = record.output
                if method == "grid":
                    grid_tokens = [count_tokens(Path(g.path).read_bytes()) for g in output.grids]
                    tokens = sum(count_tokens(reference) + t for t in grid_tokens)
                    tokens_coco = sum(coco_tokens + t for t in grid_tokens)
                else:
                    tokens = sum(count_tokens(reference) + count_tokens(c.path) for c in candidates)
                    tokens_coco = len(candidates) * 2 * coco_tokens
                rows.append({
                    "k": k, "method": method if method == "pointwise" else f"grid ({overflow})",
                    "calls": output.calls, "images_sent": output.images_sent,
                    "qwen2_vl_image_tokens": tokens, "qwen2_vl_image_tokens_640x480": tokens_coco,
                    "seconds": round(seconds, 3),
                    "grid_px": None if method != "grid" else list(_png_size(output.grids[0].path)),
                })
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _blank_png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--k", type=int, nargs="+", default=[9, 20, 50])
    parser.add_argument("--repeat", type=int, default=3, help="wall time = best of this many runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the machine is shared; the per-call overhead is what we measure
    rows = run(args.photos, args.k, args.repeat)
    print("\n| k | method | model calls | images sent | Qwen2-VL image tokens (these photos) "
          "| ... if photos were 640x480 | wall s (tiny VLM, best of N) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['k']} | {row['method']} | {row['calls']} | {row['images_sent']} | "
              f"{row['qwen2_vl_image_tokens']:,} | {row['qwen2_vl_image_tokens_640x480']:,} | {row['seconds']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
