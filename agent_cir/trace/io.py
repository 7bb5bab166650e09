"""Reading and writing trace files: one JSON line per query (see ``agent_cir.trace.build`` for the schema).

Text that cannot be encoded as UTF-8 (lone surrogates: undecodable command-line bytes, ``\\ud800`` escapes in an
annotation file, a model's answer) is written as a JSON ``\\uXXXX`` escape, so every line stays valid JSON and
reads back to the same string.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterator

from agent_cir.trace.model import Trace, TraceFormatError, load_trace


class TraceWriter:
    """Appends one JSON line per query; flushes each line so that a killed run loses no finished query."""

    def __init__(self, path: str | Path, mode: str = "a") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # json.dumps(ensure_ascii=False) keeps lone surrogates as they are; backslashreplace turns each into the
        # six characters \udXXX, which is exactly its JSON escape: the line stays valid JSON and UTF-8.
        self._handle = open(self.path, mode, encoding="utf-8", errors="backslashreplace")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_traces(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield trace records; a torn last line (a killed writer) is skipped, never fatal."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_typed_traces(path: str | Path) -> Iterator[Trace]:
    """``read_traces`` as :class:`~agent_cir.trace.model.Trace` models (schema 1.x and 2.x); a line that is
    JSON but not a trace raises ``TraceFormatError`` naming the file, the line and the field."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            try:
                yield load_trace(data)
            except TraceFormatError as err:
                raise TraceFormatError(f"{path}, line {number}: {err}") from err
