"""Reading and writing trace files: one JSON line per query (see ``agent_cir.trace.build`` for the schema).

The writer takes a :class:`~agent_cir.trace.model.Trace` (or a plain record) and writes its JSON dump;
``read_typed_traces`` is the one reader of trace files: strict for the eval's resume and compare (a record that
is not a trace names its file and line), or ``salvage=True`` for display (the report): lines that are not
UTF-8 or not JSON, records that are not traces and fields of the wrong type are left out and said in ``notes``.

Text that cannot be encoded as UTF-8 (lone surrogates: undecodable command-line bytes, ``\\ud800`` escapes in an
annotation file, a model's answer) is written as a JSON ``\\uXXXX`` escape, so every line stays valid JSON and
reads back to the same string.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent_cir.trace.load import TraceFormatError, load_trace, salvage_trace
from agent_cir.trace.model import Trace


class TraceWriter:
    """Appends one JSON line per query; flushes each line so that a killed run loses no finished query."""

    def __init__(self, path: str | Path, mode: str = "a") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # json.dumps(ensure_ascii=False) keeps lone surrogates as they are; backslashreplace turns each into the
        # six characters \udXXX, which is exactly its JSON escape: the line stays valid JSON and UTF-8.
        self._handle = open(self.path, mode, encoding="utf-8", errors="backslashreplace")

    def write(self, record: Trace | Mapping[str, Any]) -> None:
        data = record.to_json_dict() if isinstance(record, Trace) else record
        # check_circular=False: a trace is a tree (a cycle would be a RecursionError); it saves a quarter of the
        # encoding time of an eval's traces, and the bytes are the same.
        line = json.dumps(data, ensure_ascii=False, default=str, check_circular=False)
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
    """Yield the records as plain JSON data (no validation); a torn last line (a killed writer) is skipped."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_typed_traces(path: str | Path, *, salvage: bool = False, notes: list[str] | None = None) -> Iterator[Trace]:
    """The file's records as :class:`~agent_cir.trace.model.Trace` models (schema 1.x-3.x), in file order.

    A line that is not complete JSON (a killed writer's torn last line) is skipped. Strict (the default): a line
    that is JSON but not a trace raises ``TraceFormatError`` naming the file, the line and the field.
    ``salvage=True`` (display): nothing raises for the content; a line that is not UTF-8 or not JSON, a record
    that is not a trace (no ``query_id``, an unreadable version) and each field of the wrong type (dropped, so
    it takes its default) are left out and counted in ``notes`` (when given) once the file is read.
    """
    name = Path(path).name
    skipped: dict[str, list[int]] = {"undecodable": [], "broken": [], "not_traces": []}
    unreadable: list[str] = []
    dropped: list[str] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                if not salvage:
                    raise TraceFormatError(f"{path}, line {number}: not valid UTF-8 ({err})") from err
                skipped["undecodable"].append(number)
                continue
            if not line:
                continue
            try:
                data = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                skipped["broken"].append(number)
                continue
            if not salvage:
                try:
                    yield load_trace(data)
                except TraceFormatError as err:
                    raise TraceFormatError(f"{path}, line {number}: {err}") from err
                continue
            if not isinstance(data, dict) or "query_id" not in data:
                skipped["not_traces"].append(number)
                continue
            try:
                trace, lost = salvage_trace(data)
            except TraceFormatError as err:
                unreadable.append(str(err))
                continue
            dropped.extend(lost)
            yield trace
    if notes is not None and salvage:
        notes.extend(_salvage_notes(name, skipped, unreadable, dropped))


def _lines(numbers: list[int]) -> str:
    return "line " + ", ".join(map(str, numbers[:10])) + ("..." if len(numbers) > 10 else "")


def _salvage_notes(name: str, skipped: dict[str, list[int]], unreadable: list[str], dropped: list[str]) -> list[str]:
    notes = []
    if skipped["undecodable"]:
        notes.append(f"{len(skipped['undecodable'])} line(s) of {name} are not valid UTF-8 and were skipped "
                     f"({_lines(skipped['undecodable'])})")
    if skipped["broken"]:
        notes.append(f"{len(skipped['broken'])} line(s) of {name} are not complete JSON and were skipped "
                     f"({_lines(skipped['broken'])})")
    if skipped["not_traces"]:
        notes.append(f"{len(skipped['not_traces'])} line(s) of {name} are not trace records (no query_id) and were "
                     f"skipped")
    if unreadable:
        notes.append(f"{len(unreadable)} record(s) of {name} cannot be read and were skipped: "
                     + "; ".join(unreadable[:3]))
    if dropped:
        notes.append(f"{len(dropped)} field(s) of the wrong type were left out: " + "; ".join(dropped[:5]))
    return notes


__all__ = ["TraceWriter", "read_traces", "read_typed_traces"]
