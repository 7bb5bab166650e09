"""Parallel decode + preprocess of image files, overlapped with encoding in the main process.

A torch DataLoader runs ``workers`` processes that each decode and preprocess whole batches while the main
process encodes the previous one; bad files come back as failures instead of raising, so one bad file
never stops the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_cir.index.decode import BadImageError, load_image
from agent_cir.index.reasons import REASON_CORRUPT, REASON_PREPROCESS


def default_workers() -> int:
    """Half the cores (at least 1, at most 8): the other half runs the encoder's own threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cores // 2))


@dataclass
class DecodedBatch:
    positions: list[int]
    """Positions (in the list handed to ``iterate_batches``) of the images in ``pixels``, in order."""
    pixels: Any
    """Stacked preprocessed tensor (len(positions), C, H, W), or None when every file of the batch was bad."""
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    """(position, reason, detail) of the files that could not be decoded."""


def decode_file(path: str, preprocess: Callable[[Any], Any]) -> tuple[Any, str | None, str | None]:
    """One file -> (model input tensor, None, None), or (None, reason, detail) when it cannot be used.

    Every engine decodes through this, so a bad file gets the same reason whichever engine met it."""
    try:
        return preprocess(load_image(path)), None, None
    except BadImageError as err:
        return None, err.reason, err.detail
    except Exception as err:  # noqa: BLE001 - e.g. a preprocessing error on an odd image: skip it, say why
        return None, REASON_PREPROCESS, f"{type(err).__name__}: {err}"[:200]


class _ImageFiles:
    """Map-style dataset: position -> (position, tensor or None, reason, detail). Picklable for spawn."""

    def __init__(self, paths: Sequence[str], preprocess: Callable[[Any], Any]) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, Any, str | None, str | None]:
        return (position, *decode_file(self.paths[position], self.preprocess))


def _collate(items: list[tuple[int, Any, str | None, str | None]]) -> DecodedBatch:
    import torch

    good = [(pos, tensor) for pos, tensor, _, _ in items if tensor is not None]
    failures = [(pos, reason or REASON_CORRUPT, detail or "") for pos, tensor, reason, detail in items if tensor is None]
    pixels = torch.stack([tensor for _, tensor in good]) if good else None
    return DecodedBatch([pos for pos, _ in good], pixels, failures)


def iterate_batches(
    paths: Sequence[str], preprocess: Callable[[Any], Any], batch_size: int, workers: int
) -> Iterator[DecodedBatch]:
    """Decoded, preprocessed batches in input order. ``workers=0`` decodes in this process (no overlap)."""
    if not paths:
        return
    dataset = _ImageFiles(paths, preprocess)
    if workers <= 0:
        for start in range(0, len(dataset), batch_size):
            yield _collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2,
        persistent_workers=False,
    )
    yield from loader
