"""Every model answer of an eval run, on disk the moment it arrives, so a killed run re-issues no call that had
answered (issue 18, case 6).

With the cache on, the cache already holds every answer. With it off (``cache: {enabled: false}``), a query's
trace is written only once it has passed every stage, so a SIGKILL would throw away the finished answers of
every query still in flight. ``RunAnswers`` is then handed to the pipeline in the cache's place: the same keys
(``backends.prepared.prepare_call``: model, fingerprint, prompt hash, messages, images, sampling parameters), one
JSON line per answer appended to ``<run>/answers.jsonl`` and fsynced before the answer is used. It serves only a
resume of the same run (the run identity is checked before anything is read), never another run, and it is
removed when a session ends with every selected query finished.

Calls it answers are traced as cache ``hit`` (no call was made); new calls as ``off``, as without it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.hashing import stable_hash

ANSWERS_NAME = "answers.jsonl"


def _ends_torn(fd: int) -> bool:
    """Whether the file open on ``fd`` ends in the middle of a line."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


class RunAnswers:
    """A key -> answer store for one run folder, duck-typed as ``cache.ModelCache`` for the calls that use it."""

    miss_status = "off"
    """How a call it could not answer is traced: the cache is off for this run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ANSWERS_NAME
        self.hits = 0
        self.misses = 0
        self.damaged = 0
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        self._read()

    def _read(self) -> None:
        if self.path.is_symlink():
            raise AgentCirError(f"{self.path} is a symlink; remove it (the eval never reads or writes through symlinks)")
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in data.split(b"\n"):
            try:
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("key"), str) and isinstance(record.get("value"), dict):
                    self._values[record["key"]] = record["value"]
            except (ValueError, RecursionError):
                continue  # the torn last line of a killed run

    def __len__(self) -> int:
        return len(self._values)

    @staticmethod
    def make_key(**parts: Any) -> str:
        return stable_hash(parts)

    def lookup(self, key: str, validate: Callable[[dict[str, Any]], bool] | None = None) -> tuple[dict[str, Any] | None, str]:
        value = self._values.get(key)
        status = "miss"
        if value is not None:
            try:
                status = "hit" if validate is None or validate(value) else "damaged"
            except Exception:  # noqa: BLE001 - a shape check that trips over the value: damaged
                status = "damaged"
        with self._lock:
            if status == "hit":
                self.hits += 1
            else:
                self.misses += 1
                self.damaged += status == "damaged"
        return (value, status) if status == "hit" else (None, status)

    def get(self, key: str, validate: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        return self.lookup(key, validate)[0]

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Append the answer and fsync it: once this returns, a kill cannot lose it."""
        line = (json.dumps({"key": key, "value": value}, ensure_ascii=False, sort_keys=True, default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self.path, flags, 0o644)
                if _ends_torn(self._fd):  # a killed run's half line: never glue this answer onto it
                    os.write(self._fd, b"\n")
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
            self._values[key] = value

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        """Remove the file (the run has every answer it needs in its traces)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._values.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path.parent)}  # a child process opens its own descriptor

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]
