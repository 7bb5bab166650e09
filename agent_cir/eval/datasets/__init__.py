"""Readers of the official annotation files of the four standard ZS-CIR benchmarks, one module each
(``locate`` + ``load_<name>``), and the split type they return (``base.BenchmarkSplit``).

Which reader a benchmark uses is its own business: ``agent_cir.eval.benchmarks.BENCHMARKS`` (the registry) and
``load_benchmark(dataset, split, annotations, images_root, categories)`` there, one :class:`BenchmarkSplit` per
gallery (FashionIQ: per category; GeneCIS: per task). Annotations are looked for in each folder given (the
folder of the dataset's files, or a parent holding ``cirr/``, ``circo/``, ``fashioniq/``, ``genecis/``).
"""

from __future__ import annotations

from agent_cir.eval.datasets.base import BenchmarkDataError, BenchmarkSplit, MissingImagesError

__all__ = [
    "BenchmarkDataError",
    "BenchmarkSplit",
    "MissingImagesError",
]
