"""Building a gallery index: scan, plan, encode (through an engine), write and publish a generation.

Steps, all under the index folder's lock (lock.py): verify the previous generation (generation.py), plan
against it (plan.py), encode what is new through an engine (encode.py) with every finished batch made
durable (checkpoint.py), build the faiss index (faiss_io.py), write a new generation and publish it with one
atomic pointer update, then remove generations older than the one just replaced and the checkpoints.
A crash at any step leaves either the previous generation or the new one, whole; the next run reuses
every finished batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent_cir.encoders.base import Encoder, describe_encoder, encoder_identity
from agent_cir.errors import AgentCirError
from agent_cir.index.checkpoint import CheckpointStore
from agent_cir.index.encode import EncodeEngine, EncodeJob, EncodedBatch, get_engine
from agent_cir.index.faiss_io import DEFAULT_INDEX_TYPE, build_faiss_index, make_faiss_index
from agent_cir.index.faults import batch_step, fault_point
from agent_cir.index.generation import (
    POINTER_NAME,
    DamagedIndexError,
    Generation,
    collect_garbage,
    has_index,
    new_generation_id,
    open_generation,
    publish,
    write_generation,
)
from agent_cir.index.loader import default_workers
from agent_cir.index.lock import IndexLock
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.out_folder import check_out_folder, ensure_marker
from agent_cir.index.plan import plan_build
from agent_cir.index.scan import scan_gallery

if TYPE_CHECKING:
    from agent_cir.index.gallery_index import GalleryIndex
    from agent_cir.index.twins import TwinsRequest

log = logging.getLogger("agent_cir.index")


@dataclass
class BuildSummary:
    """What one ``GalleryIndex.build`` run did."""

    indexed: int = 0
    """Files encoded in this run."""
    reused: int = 0
    """Files whose embeddings were kept from the previous generation (unchanged, or same content elsewhere)."""
    resumed: int = 0
    """Files whose embeddings came from the checkpoints of an earlier run that was killed."""
    removed: int = 0
    """Entries of the previous generation whose files are gone."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Bad files in the index now, by reason (including ones skipped in earlier runs and unchanged)."""
    total: int = 0
    """Images in the index after the run."""
    encode_seconds: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    generation: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed,
            "reused": self.reused,
            "resumed": self.resumed,
            "removed": self.removed,
            "skipped": dict(self.skipped),
            "skipped_total": self.skipped_total,
            "total": self.total,
            "encode_seconds": round(self.encode_seconds, 3),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "interrupted": self.interrupted,
            "generation": self.generation,
            "notes": list(self.notes),
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_same_encoder(built_with: dict[str, Any], requested: dict[str, Any], index_dir: Path) -> None:
    if encoder_identity(built_with) == encoder_identity(requested):
        return
    differing = sorted(
        key
        for key in set(encoder_identity(built_with)) | set(encoder_identity(requested))
        if built_with.get(key) != requested.get(key)
    )
    raise AgentCirError(
        f"index {index_dir} was built with encoder {describe_encoder(built_with)} "
        f"(weights {built_with.get('weights')}), but {describe_encoder(requested)} "
        f"(weights {requested.get('weights')}) was requested (differs in: {', '.join(differing)}). "
        "Embeddings of different encoders cannot be mixed: use a new --out folder, or the same "
        "--model/--pretrained (and --backend) the index was built with."
    )


def _previous_generation(out: Path, encoder: Encoder, root: Path, notes: list[str]) -> tuple[Generation | None, str | None]:
    """The verified current generation (None if there is none or it is damaged) and the name to keep."""
    if not has_index(out):
        return None, None
    keep = "legacy"
    if (out / POINTER_NAME).is_file():
        try:
            import json

            keep = json.loads((out / POINTER_NAME).read_text(encoding="utf-8"))["generation"]
        except (OSError, ValueError, KeyError, TypeError):
            keep = None
    try:
        previous = open_generation(out, verify=True)
    except DamagedIndexError as err:
        note = f"previous index generation not reused, every file is encoded again: {err}"
        log.warning(note)
        notes.append(note)
        return None, keep if isinstance(keep, str) else None
    check_same_encoder(previous.meta["encoder"], encoder.info, out)
    if Path(previous.meta["images_dir"]) != root:
        raise AgentCirError(f"index {out} was built from {previous.meta['images_dir']}, not {root}; use a new --out")
    return previous, previous.name


def _check_batch(batch: EncodedBatch, dim: int, pending: dict[str, ManifestEntry]) -> None:
    """An engine's batch must answer for files it was asked about, once each, with finite dim-d vectors."""
    vectors = np.asarray(batch.vectors)
    if vectors.shape != (len(batch.entries), dim):
        raise AgentCirError(f"encoding engine returned vectors of shape {vectors.shape} for {len(batch.entries)} images of dimension {dim}")
    if not np.isfinite(vectors).all():
        bad = [e.path for e, row in zip(batch.entries, vectors) if not np.isfinite(row).all()]
        raise AgentCirError(f"encoder returned non-finite embeddings for {len(bad)} images (e.g. {bad[0]}); check --precision")
    for entry in [*batch.entries, *batch.failures]:
        if entry.path not in pending:
            raise AgentCirError(f"encoding engine returned {entry.path!r}, which was not asked for or came twice")
        pending.pop(entry.path)


def build_index(
    cls: type[GalleryIndex],
    images_dir: str | Path,
    out_dir: str | Path,
    encoder: Encoder,
    batch_size: int | None = None,
    workers: int | None = None,
    index_type: str = DEFAULT_INDEX_TYPE,
    files: Sequence[str | Path] | None = None,
    progress: bool = True,
    follow_symlinks: bool = False,
    wait: bool = False,
    engine: str | EncodeEngine = "local",
    engine_options: dict[str, Any] | None = None,
    twins: TwinsRequest | None = None,
) -> GalleryIndex:
    from agent_cir import __version__

    started = time.perf_counter()
    if "image" not in getattr(encoder, "modalities", ("image", "text")):
        raise AgentCirError(
            f"encoder {describe_encoder(encoder.info)} encodes text only; indexing images needs an image-text "
            "encoder (backend open_clip or hf)"
        )
    root = Path(images_dir).expanduser().resolve()
    out = Path(out_dir).expanduser()
    if not root.is_dir():
        raise AgentCirError(f"images folder not found: {root}")
    batch_size = batch_size or getattr(encoder, "batch_size", 64)
    workers = default_workers() if workers is None else workers
    dim = int(encoder.dim)
    make_faiss_index(dim, index_type)  # fail on a bad factory string before any work
    run_engine = get_engine(engine)
    scan = scan_gallery(root, files, follow_symlinks=follow_symlinks)
    if not scan.found and not scan.rejected:
        raise AgentCirError(f"no images found in {root} (looked recursively for .jpg .jpeg .png .webp .bmp .gif files)")

    check_out_folder(out, root)
    summary = BuildSummary()
    with IndexLock(out, wait=wait):
        check_out_folder(out, root)  # again under the lock: the folder may have changed while we waited
        ensure_marker(out)
        previous, keep = _previous_generation(out, encoder, root, summary.notes)
        checkpoint = CheckpointStore.open(out, encoder.info, dim)
        fault_point("checkpoint-opened")
        previous_rows: dict[str, int] = {}
        if previous is not None:
            for entry in previous.entries:
                if entry.status == "ok":
                    previous_rows.setdefault(entry.hash, int(entry.row))  # type: ignore[arg-type]
        plan = plan_build(
            scan, root, previous.entries if previous else [], set(previous_rows), set(checkpoint.vectors), checkpoint.failures,
            confined=not follow_symlinks,
        )
        summary.reused, summary.resumed, summary.removed = plan.reused, plan.resumed, plan.removed

        new_vectors: dict[str, np.ndarray] = {}
        encoded_paths: set[str] = set()
        pending = {e.path: e for e in plan.to_encode}
        job = EncodeJob(
            root, plan.to_encode, encoder, batch_size, workers, progress, dict(engine_options or {}), confined=not follow_symlinks
        )
        encode_started = time.perf_counter()
        try:
            for number, batch in enumerate(run_engine(job), start=1):
                _check_batch(batch, dim, pending)
                checkpoint.append(
                    [e.hash for e in batch.entries], np.asarray(batch.vectors), [(f.hash, f.reason or "", f.detail or "") for f in batch.failures]
                )
                for entry, vector in zip(batch.entries, np.asarray(batch.vectors, dtype=np.float32)):
                    new_vectors[entry.hash] = vector
                    encoded_paths.add(entry.path)
                for failure in batch.failures:
                    plan.entries[failure.path] = failure
                fault_point(batch_step(number))
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.encode_seconds = time.perf_counter() - encode_started
        if pending and not summary.interrupted:
            raise AgentCirError(f"encoding engine left {len(pending)} files unanswered (e.g. {next(iter(pending))})")
        for path in pending:  # not reached before Ctrl-C: left out now, encoded by the next run
            plan.entries.pop(path, None)

        ok = sorted((e for e in plan.entries.values() if e.status == "ok"), key=lambda e: e.path)
        skipped = sorted((e for e in plan.entries.values() if e.status == "skipped"), key=lambda e: e.path)
        summary.indexed = sum(1 for e in ok if e.path in encoded_paths)
        matrix = np.zeros((len(ok), dim), dtype=np.float32)
        for row, entry in enumerate(ok):
            if entry.hash in new_vectors:
                matrix[row] = new_vectors[entry.hash]
            elif entry.hash in checkpoint.vectors:
                matrix[row] = checkpoint.vectors[entry.hash]
            else:
                matrix[row] = previous.embeddings[previous_rows[entry.hash]]  # type: ignore[union-attr]
        final_entries = [replace(e, row=row, reason=None, detail=None) for row, e in enumerate(ok)]
        final_entries += [replace(e, row=None) for e in skipped]
        summary.skipped = dict(sorted(Counter(e.reason or "unknown" for e in skipped).items()))
        summary.total = len(ok)

        faiss_index = build_faiss_index(matrix, index_type)
        info = dict(encoder.info)
        generation = new_generation_id()
        summary.generation = generation
        meta = {
            "agent_cir_version": __version__,
            "created": previous.meta.get("created", _now()) if previous else _now(),
            "updated": _now(),
            "images_dir": str(root),
            "encoder": info,
            "weights": info.get("weights"),
            "preprocess": info.get("preprocess"),
            "dim": dim,
            "skipped": summary.skipped_total,
            "index_factory": index_type,
            "metric": "inner_product",
            "follow_symlinks": follow_symlinks,
            "previous_generation": previous.name if previous else None,
        }
        summary.seconds = time.perf_counter() - started
        meta["last_build"] = summary.to_dict()
        meta_sha = write_generation(out, generation, matrix, final_entries, faiss_index, meta)
        publish(out, generation, meta_sha)
        previous = None  # drop the memory map of the replaced generation before removing anything
        collect_garbage(out, {generation} | ({keep} if keep else set()))
        fault_point("old-generations-removed")
        checkpoint.discard()
        fault_point("checkpoints-removed")
        index = cls(out)
    index.build_summary = summary
    if summary.interrupted:
        raise KeyboardInterrupt
    if twins is not None:  # after the publish, under the twins' own lock: a failure keeps the new index
        from agent_cir.index.twins import build_twins

        made = build_twins(index, twins.generator, twins.settings, captioner=twins.captioner, captions=twins.captions,
                           cache=twins.cache, engine=twins.engine or engine,
                           engine_options=twins.engine_options or engine_options, batch_size=batch_size,
                           workers=workers, progress=progress, wait=wait)
        summary.notes.append(f"twins: {made.generated} drawn, {made.reused} reused; seconds per image {made.seconds}")
    return index
