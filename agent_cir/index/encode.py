"""Encoding engines: turn the gallery files a build must encode into batches of vectors.

The engine interface (``EncodeEngine``) is what a build calls; any implementation can be plugged in::

    def engine(job: EncodeJob) -> Iterator[EncodedBatch]: ...

- ``job.entries``: the ``ManifestEntry`` rows to encode (path relative to ``job.root``, size, mtime,
  content ``hash``), ``job.encoder`` the encoder (``encoder.info`` rebuilds it elsewhere, see
  ``encoder_config_from_meta``), ``job.batch_size``, ``job.workers``, ``job.progress``, and
  ``job.options`` for engine-specific settings (a Ray engine: address, concurrency, num_gpus).
- Each yielded ``EncodedBatch`` holds ``entries`` (encoded, in the order of ``vectors``), ``vectors``
  ((len(entries), dim) float32, L2-normalised as the encoder returns them) and ``failures`` (entries that
  could not be used, with ``status="skipped"``, ``reason`` and ``detail`` set, decoded with
  ``decode.load_image`` so every engine reports the same reasons).
- Every entry of the job comes back exactly once, in ``entries`` or ``failures``; batches may arrive in
  any order and of any size. The build makes each batch durable (checkpoint.py) as soon as it arrives,
  so an engine should yield often (one encoder batch at a time) rather than at the end.
- Raising ``KeyboardInterrupt`` stops the build, which publishes what it has; any other exception stops it
  with the finished batches kept in the checkpoint for the next run.

``ENGINES`` maps ``build(engine=...)`` names to engines. ``local_engine`` is the default: decode and
preprocess in DataLoader worker processes, overlapped with encoding in this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np

from agent_cir.encoders.base import Encoder
from agent_cir.errors import AgentCirError
from agent_cir.index.decode import load_image
from agent_cir.index.jobs import EncodedBatch, EncodeJob
from agent_cir.index.loader import iterate_batches
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.reasons import BadImageError


class EncodeEngine(Protocol):
    def __call__(self, job: EncodeJob) -> Iterator[EncodedBatch]: ...


def _skipped(entry: ManifestEntry, reason: str, detail: str) -> ManifestEntry:
    return ManifestEntry(entry.path, entry.size, entry.mtime, entry.mtime_ns, entry.hash, "skipped", None, reason, detail)


def local_engine(job: EncodeJob) -> Iterator[EncodedBatch]:
    """Decode + preprocess in ``job.workers`` DataLoader processes (0 = in this process), encode here."""
    entries = list(job.entries)
    if not entries:
        return
    from tqdm.auto import tqdm

    # Suspects (files a killed build was decoding) first, one per batch, so a file that kills again is alone.
    groups = [[e for e in entries if e.hash in job.suspects], [e for e in entries if e.hash not in job.suspects]]
    with tqdm(total=len(entries), unit="img", desc="encoding", disable=not job.progress, dynamic_ncols=True) as bar:
        for group, batch_size in zip(groups, (1, job.batch_size)):
            for batch, done in _encode_group(job, group, batch_size):
                yield batch
                bar.update(done)


def _encode_group(job: EncodeJob, entries: list[ManifestEntry], batch_size: int) -> Iterator[tuple[EncodedBatch, int]]:
    paths = [str(job.root / e.path) for e in entries]
    batches = max(1, (len(paths) + batch_size - 1) // batch_size)
    workers = min(job.workers, batches) if job.workers > 0 else 0
    journal = job.journal if workers == 0 else None  # decode workers that die are caught by the loader itself

    def decoding(positions: list[int]) -> AbstractContextManager[None]:
        return journal.decoding([entries[pos].hash for pos in positions])  # type: ignore[union-attr]

    for batch in iterate_batches(
        paths, job.encoder.preprocess, batch_size, workers, job.confine_root, decoding if journal is not None else None
    ):
        failures = [_skipped(entries[pos], reason, detail) for pos, reason, detail in batch.failures]
        if batch.pixels is not None:
            vectors = np.asarray(job.encoder.encode_images(batch.pixels, batch_size=batch_size), dtype=np.float32)
        else:
            vectors = np.zeros((0, int(job.encoder.dim)), dtype=np.float32)
        yield EncodedBatch([entries[pos] for pos in batch.positions], vectors, failures), len(batch.positions) + len(failures)


def _ray_engine(job: EncodeJob) -> Iterator[EncodedBatch]:
    """``ray_engine.ray_engine``, imported on first use so that Ray stays an optional extra."""
    from agent_cir.index.ray_engine import ray_engine

    return ray_engine(job)


ENGINES: dict[str, Callable[[EncodeJob], Iterator[EncodedBatch]]] = {"local": local_engine, "ray": _ray_engine}
"""Encoding engines by name (``GalleryIndex.build(engine=...)``, ``agent-cir index --engine``)."""


def get_engine(engine: str | EncodeEngine) -> Callable[[EncodeJob], Iterator[EncodedBatch]]:
    if callable(engine):
        return engine
    try:
        return ENGINES[engine]
    except KeyError:
        raise AgentCirError(f"unknown encoding engine {engine!r}; choose one of: {', '.join(sorted(ENGINES))}") from None


def encode_image_file(encoder: Encoder, image: str | Path) -> np.ndarray:
    """Encode one image file exactly as the indexer does (``load_image``: same EXIF handling and limits).

    Raises an AgentCirError naming the file when it is missing or cannot be used (not a regular file,
    not an image, truncated, a decompression bomb, ...)."""
    if not os.path.lexists(image):
        raise AgentCirError(f"reference image not found: {image}")
    try:
        picture = load_image(image)
    except BadImageError as err:
        raise AgentCirError(f"reference image {image} cannot be used: {err}") from err
    return np.asarray(encoder.encode_images([picture]), dtype=np.float32)[0]
