"""Worst-case parse time of hostile 1 MB model answers, per parser (the families of
agent_cir.testing.hostile, which tests/test_reliability_parsers.py also uses).

    PYTHONPATH=. python benchmarks/hostile_output.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_cir.parsing import parse_caption, parse_target_descriptions  # noqa: E402
from agent_cir.rerank.parse import parse_ranking, parse_yes_no  # noqa: E402
from agent_cir.testing.hostile import hostile_answers  # noqa: E402

PARSERS = {"ranking": lambda t: parse_ranking(t, 9), "descriptions": lambda t: parse_target_descriptions(t, 3),
           "caption": parse_caption, "yes_no": parse_yes_no}

print("| parser | inputs | worst s | worst input |")
print("|---|---|---|---|")
for name, parse in PARSERS.items():
    worst = (0.0, "")
    count = 0
    for description, text in hostile_answers():
        started = time.perf_counter()
        parse(text)
        worst = max(worst, (time.perf_counter() - started, description))
        count += 1
    print(f"| {name} | {count} | {worst[0]:.2f} | {worst[1]} |")
for spaces in (2_000, 20_000):
    started = time.perf_counter()
    parse_ranking("1" + " " * spaces + "x", 5)
    print(f"parse_ranking('1' + {spaces} spaces + 'x'): {time.perf_counter() - started:.4f} s")
