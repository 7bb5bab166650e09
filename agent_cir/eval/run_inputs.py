"""What an eval run is asked to do, checked before any model loads: query id files, where the annotations
are, which queries run, and the recipe as run (recipe -> its ``by_dataset`` block -> user overrides -> the
benchmark's protocol).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_cir.config import Recipe, deep_merge, load_recipe, recipe_from_dict
from agent_cir.errors import AgentCirError
from agent_cir.eval.benchmarks import Benchmark
from agent_cir.eval.datasets import BenchmarkSplit
from agent_cir.types import Query


class EvalInputError(AgentCirError):
    """The evaluation cannot start as asked (no images and no captions, unknown query ids, ...)."""


def read_query_ids(path: str | Path) -> list[str]:
    """One query id per line; blank lines and ``#`` comments are ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalInputError(f"query id file {path} not found")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line)
    return ids


def annotation_candidates(
    annotations: str | Path | None, images_root: str | Path | None, gallery_captions: str | Path | None
) -> list[Path]:
    """Where to look for the official annotation files, in order: --annotations, $AGENT_CIR_BENCHMARKS,
    the image root, and the folders around the gallery captions file (benchmarks are often kept together)."""
    found: list[Path] = []
    for value in (annotations, os.environ.get("AGENT_CIR_BENCHMARKS"), images_root):
        if value:
            found.append(Path(value).expanduser())
    if gallery_captions:
        captions_dir = Path(gallery_captions).expanduser().resolve().parent
        found.extend([captions_dir, captions_dir.parent])
    return found


def select_queries(splits: list[BenchmarkSplit], query_ids: Sequence[str] | None, limit: int | None) -> dict[str, list[Query]]:
    selected: dict[str, list[Query]] = {}
    wanted = [str(q) for q in query_ids] if query_ids is not None else None
    if wanted is not None:
        known = {q.id for split in splits for q in split.queries}
        unknown = [q for q in wanted if q not in known]
        if unknown:
            raise EvalInputError(
                f"{len(unknown)} query ids are not in this dataset/split (e.g. {', '.join(unknown[:3])})"
            )
    wanted_set = set(wanted) if wanted is not None else None
    for split in splits:
        queries = [q for q in split.queries if wanted_set is None or q.id in wanted_set]
        selected[split.name] = queries[:limit] if limit is not None else queries
    return selected


def effective_recipe(
    benchmark: Benchmark, recipe: str | Path | Recipe, overrides: Mapping[str, Any] | None,
    splits: Sequence[BenchmarkSplit],
) -> tuple[Recipe, dict[str, Any], dict[str, Any], list[str]]:
    """The recipe as run: recipe -> its ``by_dataset`` block -> user overrides -> the benchmark's protocol.
    Returns (recipe, by_dataset block applied, protocol overrides applied, notes)."""
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    by_dataset = dict(base.by_dataset.get(benchmark.name) or {})  # type: ignore[call-overload]
    merged = base.for_dataset(benchmark.name)
    if overrides:
        merged = recipe_from_dict(deep_merge(merged.model_dump(mode="json"), dict(overrides)), source=f"recipe {base.name}")
    protocol = benchmark.retrieve_overrides(merged, splits)
    notes = []
    if "exclude_reference" in protocol.get("retrieve", {}):
        notes.append(
            f"{benchmark.name} protocol: reference {'removed' if benchmark.exclude_reference else 'kept in the gallery'} "
            f"(the recipe said exclude_reference: {str(merged.retrieve.exclude_reference).lower()})"
        )
    effective = recipe_from_dict(deep_merge(merged.model_dump(mode="json"), protocol), source=f"recipe {base.name}")
    return effective, by_dataset, protocol, notes
