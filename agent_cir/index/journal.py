"""Which files this process is decoding right now, on disk, so that a file that kills the build itself is found.

A decode worker that dies is seen by the loader (loader.py) and its file is marked bad at once. A decode in
this process (``--workers 0``) has no one left to see it: the OOM killer or a decoder segfault ends the build,
and every rerun would die on the same file. So before each in-process decode batch the build appends a
``begin`` line naming the batch's content hashes (fsynced), and an ``end`` line after it. A rerun reads the
journal (``<out>/decoding.jsonl``):

- a batch that began and never ended with one file: that file killed the build; it is marked bad
  (``REASON_DECODER_CRASH``) without being opened again;
- a batch of several files that began and never ended: its files are *suspects*, decoded one per batch
  (``DecodeJournal.suspects``), so the one that kills again is alone in its batch and caught by the next run.

The journal is removed once a generation is published (its killers are in the manifest by then).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent_cir.index.out_folder import claim, open_nofollow_file, owned_names

JOURNAL_NAME = "decoding.jsonl"
KILLED_DETAIL = "the build was killed (out of memory, or a decoder crash) while decoding it alone; it is not decoded again"


def _ends_torn(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


@dataclass
class DecodeJournal:
    out: Path
    killers: set[str] = field(default_factory=set)
    """Hashes that were decoded alone when a build died: never decoded again."""
    suspects: set[str] = field(default_factory=set)
    """Hashes of a batch a build died in: decoded one per batch by the next run."""
    _open: bool = False
    _run: str = field(default_factory=lambda: secrets.token_hex(6))
    _batches: int = 0

    @property
    def path(self) -> Path:
        return self.out / JOURNAL_NAME

    @classmethod
    def open(cls, out: Path) -> DecodeJournal:
        """The journal of ``out`` with what earlier runs left unfinished (call under the index lock)."""
        journal = cls(out)
        if JOURNAL_NAME not in owned_names(out) or journal.path.is_symlink() or not journal.path.is_file():
            return journal
        begun: dict[str, list[str]] = {}
        try:
            lines = journal.path.read_bytes().split(b"\n")
        except OSError:
            return journal
        for line in lines:
            try:
                record = json.loads(line)
                if "end" in record:
                    begun.pop(str(record["end"]), None)
                else:
                    begun[str(record["begin"])] = [str(digest) for digest in record["hashes"]]
            except (ValueError, KeyError, TypeError):
                continue  # the torn last line of a killed run
        for hashes in begun.values():
            if len(hashes) == 1:
                journal.killers.update(hashes)
            else:
                journal.suspects.update(hashes)
        journal.suspects -= journal.killers
        return journal

    def _append(self, record: dict, durable: bool) -> None:
        prefix = ""
        if not self._open:
            claim(self.out, JOURNAL_NAME)
            self._open = True
            prefix = "\n" if _ends_torn(self.path) else ""  # never glue a record onto a killed run's half line
        with open_nofollow_file(self.path, "a") as handle:
            handle.write(prefix + json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            if durable:
                os.fsync(handle.fileno())

    @contextlib.contextmanager
    def decoding(self, hashes: Sequence[str]) -> Iterator[None]:
        """Around one in-process decode batch: ``begin`` is on disk before the first byte is decoded."""
        self._batches += 1
        batch = f"{self._run}-{self._batches}"
        self._append({"begin": batch, "hashes": list(hashes)}, durable=True)
        try:
            yield
        finally:  # an exception (Ctrl-C included) means this process survived the batch: no file to blame
            # Not fsynced: a lost ``end`` only makes the next run decode these files one by one.
            self._append({"end": batch}, durable=False)

    def discard(self) -> None:
        """Remove the journal (after a generation that records its killers is published)."""
        if self._open or self.path.is_file():
            with contextlib.suppress(FileNotFoundError):
                if not self.path.is_symlink():
                    os.unlink(self.path)
        self._open = False
