"""Checkpoints of finished embedding batches, so a build killed at any point (SIGKILL included) keeps them.

Each build appends to its own work folder ``<out>/work-<run>/``:

- ``vectors.f32``: raw float32 rows, appended one batch at a time, then fsynced;
- ``journal.jsonl``: a header line (encoder identity, dim), then one line per finished batch (the content
  hashes of its rows, their position in ``vectors.f32``, a sha256 of those bytes, the files that failed
  to decode), written and fsynced after the batch's vectors.

A rerun reads every work folder made with the same encoder and reuses their vectors by content hash; a
torn last line or a batch whose bytes do not match its sha256 is ignored. Work folders are removed once
a generation that holds their vectors has been published.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.encoders.base import encoder_identity
from agent_cir.index.out_folder import claim, open_nofollow_file, owned_names

WORK_PREFIX = "work-"
VECTORS_NAME = "vectors.f32"
JOURNAL_NAME = "journal.jsonl"
CHECKPOINT_FORMAT = 1


def _is_checkpoint(folder: Path) -> bool:
    """A work folder written before the index marker existed: its journal starts with our header."""
    journal = folder / JOURNAL_NAME
    if journal.is_symlink() or not journal.is_file():
        return False
    try:
        with open(journal, "rb") as handle:
            header = json.loads(handle.readline(1 << 16))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and header.get("format") == CHECKPOINT_FORMAT and {"encoder", "dim"} <= set(header)


@dataclass
class CheckpointStore:
    """Vectors (and decode failures) by content hash from earlier killed runs, plus this run's journal."""

    out: Path
    dim: int
    header: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)
    """Work folders of this index (recorded by out_folder.claim, or holding a checkpoint journal) and this
    run's own, once created: removed by ``discard``. A user's look-alike ``work-*`` folder is never listed."""
    _own: Path | None = None
    _rows: int = 0

    @classmethod
    def open(cls, out: Path, encoder_info: dict[str, Any], dim: int) -> CheckpointStore:
        header = {"format": CHECKPOINT_FORMAT, "encoder": encoder_identity(encoder_info), "dim": int(dim)}
        store = cls(out=out, dim=int(dim), header=json.loads(json.dumps(header, sort_keys=True, default=str)))
        if out.is_dir():
            owned = owned_names(out)
            for folder in sorted(out.glob(f"{WORK_PREFIX}*")):
                if folder.is_dir() and not folder.is_symlink() and (folder.name in owned or _is_checkpoint(folder)):
                    store._read(folder)
                    store.folders.append(folder)
        return store

    def _read(self, folder: Path) -> None:
        try:
            lines = (folder / JOURNAL_NAME).read_bytes().split(b"\n")
            vectors = np.fromfile(folder / VECTORS_NAME, dtype=np.float32)
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError):
            return  # a run killed before its first batch: nothing to reuse
        if header != self.header:
            return  # another encoder's vectors: never mixed in
        rows = vectors[: vectors.size - vectors.size % self.dim].reshape(-1, self.dim)
        for line in lines[1:]:
            try:
                record = json.loads(line)
                start, hashes = int(record["start"]), list(record["hashes"])
                block = rows[start : start + len(hashes)]
                if len(block) != len(hashes) or hashlib.sha256(block.tobytes()).hexdigest() != record["sha256"]:
                    continue
                for digest, (reason, detail) in ((f["hash"], (f["reason"], f["detail"])) for f in record["failures"]):
                    self.failures[str(digest)] = (str(reason), str(detail))
            except (ValueError, KeyError, TypeError):
                continue  # the torn last line of a killed run
            for digest, vector in zip(hashes, block):
                self.vectors[str(digest)] = np.array(vector)

    def _start(self) -> Path:
        folder = self.out / f"{WORK_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        claim(self.out, folder.name)
        folder.mkdir(parents=True)
        self._write_line(folder / JOURNAL_NAME, self.header)
        self.folders.append(folder)
        return folder

    @staticmethod
    def _write_line(path: Path, record: dict[str, Any]) -> None:
        with open_nofollow_file(path, "a") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, hashes: list[str], vectors: np.ndarray, failures: list[tuple[str, str, str]]) -> None:
        """Make one finished batch durable: ``hashes[i]`` is the content hash of ``vectors[i]``;
        ``failures`` are (hash, reason, detail) of files that could not be decoded."""
        if self._own is None:
            self._own = self._start()
        block = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(hashes), self.dim)
        with open_nofollow_file(self._own / VECTORS_NAME, "ab") as handle:
            handle.write(block.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        record = {
            "start": self._rows,
            "hashes": list(hashes),
            "sha256": hashlib.sha256(block.tobytes()).hexdigest(),
            "failures": [{"hash": h, "reason": r, "detail": d} for h, r, d in failures if h],
        }
        self._write_line(self._own / JOURNAL_NAME, record)
        self._rows += len(hashes)

    def discard(self) -> None:
        """Remove the work folders (their vectors are in a published generation now)."""
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders.clear()
        self._own = None
