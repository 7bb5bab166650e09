"""The names a recipe may give its pluggable parts, checked when the recipe is read.

Each pluggable part has one registry, and the recipe schema validates against it:

- registries below the config layer are read directly: ``encoder.backend`` against
  ``agent_cir.encoders.registry.ENCODER_BACKENDS`` (a backend added there is accepted here at once);
- registries above it cannot be imported here (the judges and aggregations live in ``agent_cir.rerank``, the
  benchmarks in ``agent_cir.eval``; the config is read by every layer, so importing them would run the layers
  upside down, see pyproject.toml). Their names are declared once below, and each registry calls
  :func:`check_registry` when it is built, so a judge, aggregation or benchmark missing on either side fails on
  import, naming the fix, instead of when a recipe uses it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from agent_cir.errors import AgentCirError

JUDGE_METHODS: dict[str, str] = {
    "grid": "listwise: the candidates tiled into numbered grids, the judge answers an order of cell numbers",
    "pointwise": "one yes/no question per candidate; P(yes) from next-token logits when the backend gives them, "
                 "else the parsed answer",
    "logits": "one yes/no question per candidate, scored by P(yes) from next-token logits (a local hf: or "
              "hf-vlm: model); refused for a backend without them",
    "pairwise": "ImageScope's evaluator: reference | candidate side by side, the top k in order until the first "
                "yes, which moves to rank 1",
    "cotrr": "CoTRR's one listwise chain-of-thought call, the reference and each candidate as separate labelled "
             "images",
}
"""``rerank.method`` -> what it does. Implemented by ``agent_cir.rerank.judges.JUDGES``."""

AGGREGATION_METHODS: dict[str, str] = {
    "borda": "Borda count over the passes (n - position points)",
    "rrf": "reciprocal-rank fusion over the passes (1 / (rrf_k + rank) points)",
}
"""``rerank.aggregation`` -> what it does. Implemented by ``agent_cir.rerank.aggregate.AGGREGATIONS``."""

BENCHMARK_NAMES: dict[str, str] = {
    "circo": "CIRCO (COCO 2017 unlabeled gallery, several ground truths, mAP@K)",
    "cirr": "CIRR (natural images, Recall@K and Recall_subset@K)",
    "fashioniq": "FashionIQ (dress, shirt, toptee; Recall@10/50)",
    "genecis": "GeneCIS (four tasks, a list of 15 per query; Recall@1/2/3)",
}
"""Benchmark name -> what it is (``agent-cir eval --dataset``, ``by_dataset``, ``published``). Implemented by
``agent_cir.eval.benchmarks.BENCHMARKS``."""


class RegistryMismatchError(AgentCirError, RuntimeError):
    """A registry and the names declared for it differ (a developer error, raised on import)."""


def did_you_mean(value: str, known: Iterable[str]) -> list[str]:
    """The known names closest to ``value`` (a case-only difference first), for "did you mean" hints."""
    names = list(known)
    folded = [name for name in names if name.lower() == str(value).lower()]
    return folded or difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)


def unknown_name_message(kind: str, value: object, known: Iterable[str]) -> str:
    """``unknown judge 'gird' (did you mean 'grid'?); known: grid, pointwise, logits``."""
    names = list(known)
    close = did_you_mean(str(value), names) if isinstance(value, str) else []
    hint = f" (did you mean {' or '.join(repr(name) for name in close)}?)" if close else ""
    return f"unknown {kind} {value!r}{hint}; known: {', '.join(names) or 'none'}"


def registered_name(kind: str, names: Collection[str] | Callable[[], Collection[str]]) -> Any:
    """A pydantic string type accepting exactly the names of a registry (read when a value is validated, so a
    registry filled later is honoured); an unknown name is refused with a did-you-mean and the known names."""

    def known() -> list[str]:
        return list(names() if callable(names) else names)

    def check(value: str) -> str:
        if value in known():
            return value
        raise PydanticCustomError("unknown_name", unknown_name_message(kind, value, known()))

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "enum": known()})]


def check_registry(what: str, declared: Collection[str], implemented: Collection[str], where: str) -> None:
    """Raise unless ``implemented`` (a registry's keys) holds exactly the ``declared`` names."""
    missing = [name for name in declared if name not in implemented]
    extra = [name for name in implemented if name not in declared]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"declared but not implemented: {', '.join(missing)} (add them to {where})")
        if extra:
            problems.append(f"implemented but not declared: {', '.join(extra)} (add them to "
                            "agent_cir/config/names.py, with a one-line description)")
        raise RegistryMismatchError(f"{what}: {'; '.join(problems)}")


JudgeMethod = registered_name("judge", JUDGE_METHODS)
AggregationMethod = registered_name("aggregation", AGGREGATION_METHODS)
BenchmarkName = registered_name("benchmark", BENCHMARK_NAMES)
