"""Hostile model answers for the parsers: a long run of one "interesting" unit inside a prefix/suffix frame.

The prefix leads a pattern into the run and the suffix makes it fail at the very end (as "1" + spaces + "x"
once did: 31 s for 2 KB). The parser tests assert no family hangs; benchmarks/hostile_output.py times them.
"""

from __future__ import annotations

from collections.abc import Iterator

HOSTILE_UNITS = (" ", "\t", "\n", "*", "1", "1 ", "1,", "1 >", "-> ", "cell ", "final ", "answer ", "`", "```", '"',
                 "\\", "[", "{", "target ", "Target description: ", "reasoning: ", "no ", "not ", "- x\n", "caption ")
HOSTILE_FRAMES = (("", ""), ("1", "x"), ("Final answer: ", "x"), ("```json\n", ""), ('{"ranking": [', ""),
                  ("Target descriptions:\n", ""), ("Target description", "x"))
ONE_MB = 1_000_000


def hostile_answers(size: int = ONE_MB) -> Iterator[tuple[str, str]]:
    """Every (description, text) of the families: ``prefix + unit * n + suffix``, about ``size`` characters."""
    for unit in HOSTILE_UNITS:
        for prefix, suffix in HOSTILE_FRAMES:
            yield f"{prefix!r} + {unit!r}*n + {suffix!r}", prefix + unit * (size // len(unit)) + suffix
