"""Loaders of the official annotation files of the four standard ZS-CIR benchmarks.

``load_benchmark(dataset, split, annotations, images_root, categories)`` returns one
:class:`BenchmarkSplit` per gallery (FashionIQ: per category; GeneCIS: per task).

Where annotations are looked for, in order: each folder in ``annotations`` (the folder of the dataset's
files, or a parent holding ``cirr/``, ``circo/``, ``fashioniq/``, ``genecis/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent_cir.eval.datasets import circo, cirr, fashioniq, genecis
from agent_cir.eval.datasets.base import BenchmarkDataError, BenchmarkSplit, MissingImagesError

DATASETS = ("circo", "cirr", "fashioniq", "genecis")
CATEGORIES = {"fashioniq": fashioniq.CATEGORIES, "genecis": genecis.TASKS}

__all__ = [
    "DATASETS",
    "CATEGORIES",
    "BenchmarkDataError",
    "BenchmarkSplit",
    "MissingImagesError",
    "load_benchmark",
    "locate_annotations",
]


def locate_annotations(dataset: str, candidates: Sequence[str | Path]) -> Path:
    """The folder holding ``dataset``'s official annotation files, among ``candidates`` (or their children)."""
    modules = {"circo": circo, "cirr": cirr, "fashioniq": fashioniq, "genecis": genecis}
    if dataset not in modules:
        raise BenchmarkDataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return modules[dataset].locate([Path(c) for c in candidates if c is not None])


def load_benchmark(
    dataset: str,
    split: str,
    annotations: str | Path | Sequence[str | Path],
    images_root: str | Path | None = None,
    categories: Sequence[str] | None = None,
) -> list[BenchmarkSplit]:
    """Load ``dataset``/``split``; ``categories`` picks FashionIQ categories or GeneCIS tasks (default: all)."""
    candidates = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
    folder = locate_annotations(dataset, candidates)
    root = Path(images_root).expanduser() if images_root is not None else None
    if dataset in CATEGORIES:
        known = CATEGORIES[dataset]
        chosen = list(categories) if categories else list(known)
        if dataset == "genecis" and not categories:
            # Default: every task whose file is there (the attribute files are often fetched apart).
            chosen = [task for task in known if (folder / f"{task}.json").is_file()]
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise BenchmarkDataError(f"{dataset}: unknown category {', '.join(unknown)}; choose from {', '.join(known)}")
    elif categories:
        raise BenchmarkDataError(f"{dataset} has no categories (--category is for fashioniq and genecis)")
    if dataset == "circo":
        return [circo.load_circo(folder, split, root)]
    if dataset == "cirr":
        return [cirr.load_cirr(folder, split, root)]
    if dataset == "fashioniq":
        return [fashioniq.load_fashioniq(folder, split, category, root) for category in chosen]
    if split not in ("val",):
        raise BenchmarkDataError(f"GeneCIS is evaluated on its val files only, not {split!r}")
    return [genecis.load_genecis(folder, task, root) for task in chosen]
