"""Parallel decode + preprocess of image files, overlapped with encoding in the main process.

A torch DataLoader runs ``workers`` processes that each decode and preprocess whole batches while the main
process encodes the previous one; bad files come back as failures instead of raising, so one bad file
never stops the run. A file that kills its decode worker outright (a decoder segfault, the OOM killer) is
found through the position each worker records before it decodes a file: it is reported as bad
(``REASON_DECODER_CRASH``) and the loader restarts on the files not yet done.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from agent_cir.index.decode import BadImageError, load_image
from agent_cir.errors import AgentCirError
from agent_cir.index.reasons import REASON_CORRUPT, REASON_DECODER_CRASH, REASON_PREPROCESS

MAX_DECODER_CRASHES = 20
"""Decode workers that may die in one run (each takes its file with it) before the build stops."""
_DEAD_WORKER = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\)")


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


def decode_file(
    path: str, preprocess: Callable[[Any], Any], root: str | None = None
) -> tuple[Any, str | None, str | None]:
    """One file -> (model input tensor, None, None), or (None, reason, detail) when it cannot be used.
    ``root``: the file must lie inside it at open time (decode.load_image).

    Every engine decodes through this, so a bad file gets the same reason whichever engine met it."""
    try:
        return preprocess(load_image(path, root)), None, None
    except BadImageError as err:
        return None, err.reason, err.detail
    except Exception as err:  # noqa: BLE001 - e.g. a preprocessing error on an odd image: skip it, say why
        return None, REASON_PREPROCESS, f"{type(err).__name__}: {err}"[:200]


class _ImageFiles:
    """Map-style dataset: position -> (position, tensor or None, reason, detail). Picklable for spawn."""

    def __init__(
        self,
        paths: Sequence[str],
        preprocess: Callable[[Any], Any],
        root: str | None = None,
        positions: Sequence[int] | None = None,
        inflight_dir: str | None = None,
    ) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.root = root
        self.positions = list(positions) if positions is not None else list(range(len(self.paths)))
        self.inflight_dir = inflight_dir
        """Each worker writes the position it is decoding to ``inflight_dir/<pid>`` (and "" when done)."""

    def __len__(self) -> int:
        return len(self.paths)

    def _mark(self, position: int | None) -> None:
        if self.inflight_dir is not None:
            with open(os.path.join(self.inflight_dir, str(os.getpid())), "w", encoding="utf-8") as handle:
                handle.write("" if position is None else str(position))

    def __getitem__(self, index: int) -> tuple[int, Any, str | None, str | None]:
        position = self.positions[index]
        self._mark(position)
        decoded = decode_file(self.paths[index], self.preprocess, self.root)
        self._mark(None)
        return (position, *decoded)


def _collate(items: list[tuple[int, Any, str | None, str | None]]) -> DecodedBatch:
    import torch

    good = [(pos, tensor) for pos, tensor, _, _ in items if tensor is not None]
    failures = [(pos, reason or REASON_CORRUPT, detail or "") for pos, tensor, reason, detail in items if tensor is None]
    pixels = torch.stack([tensor for _, tensor in good]) if good else None
    return DecodedBatch([pos for pos, _ in good], pixels, failures)


def iterate_batches(
    paths: Sequence[str],
    preprocess: Callable[[Any], Any],
    batch_size: int,
    workers: int,
    root: str | None = None,
    decoding: Callable[[list[int]], AbstractContextManager[Any]] | None = None,
) -> Iterator[DecodedBatch]:
    """Decoded, preprocessed batches in input order. ``workers=0`` decodes in this process (no overlap).
    ``root``: every file must lie inside it at open time. ``decoding(positions)``: a context entered around
    each in-process decode batch (journal.DecodeJournal: a file that kills this process is found by the rerun)."""
    if not paths:
        return
    if workers <= 0:
        dataset = _ImageFiles(paths, preprocess, root)
        for start in range(0, len(dataset), batch_size):
            positions = list(range(start, min(start + batch_size, len(dataset))))
            with decoding(positions) if decoding is not None else contextlib.nullcontext():
                batch = _collate([dataset[i] for i in positions])
            yield batch
        return
    from torch.utils.data import DataLoader

    remaining = list(range(len(paths)))
    crashed: list[int] = []
    with tempfile.TemporaryDirectory(prefix="agent-cir-decoding-") as inflight:
        while remaining:
            dataset = _ImageFiles([paths[p] for p in remaining], preprocess, root, remaining, inflight)
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=False,
                num_workers=workers,
                collate_fn=_collate,
                prefetch_factor=2,
                persistent_workers=False,
            )
            done: set[int] = set()
            try:
                for batch in loader:
                    done.update(batch.positions)
                    done.update(position for position, _, _ in batch.failures)
                    yield batch
                return
            except RuntimeError as err:
                killers = _files_that_killed_workers(err, inflight)
                if not killers:
                    raise
                crashed += killers
                if len(crashed) > MAX_DECODER_CRASHES:
                    raise AgentCirError(
                        f"{len(crashed)} files killed their decode worker (e.g. {paths[crashed[0]]}); the decoder "
                        "or the machine's memory is failing. Check the files, or rerun with --workers 0 to see the error"
                    ) from err
                detail = f"the decode worker died while decoding it ({' '.join(str(err).split())[:120]})"
                yield DecodedBatch([], None, [(position, REASON_DECODER_CRASH, detail) for position in killers])
                done.update(killers)
                remaining = [p for p in remaining if p not in done]
                for name in os.listdir(inflight):
                    os.unlink(os.path.join(inflight, name))


def _files_that_killed_workers(err: RuntimeError, inflight: str) -> list[int]:
    """Positions the dead workers named in DataLoader's error were decoding ([] for another error)."""
    match = _DEAD_WORKER.search(str(err))
    if match is None:
        return []
    killers = []
    for pid in re.findall(r"\d+", match.group(1)):
        try:
            with open(os.path.join(inflight, pid), encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            killers.append(int(text))
    return killers
