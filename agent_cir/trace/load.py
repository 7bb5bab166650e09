"""Turning data into a :class:`~agent_cir.trace.model.Trace`: records read from files (``load_trace``, lax, schema
1.x-3.x; ``salvage_trace`` for display, dropping only the fields it cannot read) and records the pipeline has
just built (``check_built``, strict). Errors name the field, what was found and what to do.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agent_cir.errors import AgentCirError
from agent_cir.trace.model import RECORD_CLASSES, AnyStageRecord, StageRecordBase, Trace

READABLE_MAJOR_VERSIONS = ("1", "2", "3")


class TraceFormatError(AgentCirError, ValueError):
    """A record is not a trace this agent_cir can read (names the field, what was found, and what to do)."""


_TAGS = {*RECORD_CLASSES, "other"}


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[tuple[Any, ...], bool]:
    """The part of an error location that exists in ``data`` (union tags and member names left out), and
    whether the whole location exists (False: the last key is missing, or the walk hit a non-container)."""
    path: list[Any] = []
    node = data
    for key in loc:
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            path.append(key)
            node = node[key]
        elif isinstance(node, Mapping) and key in node:
            path.append(key)
            node = node[key]
        elif isinstance(node, Mapping) and key in _TAGS:
            continue  # the discriminated union's tag, not a key of the record
        else:
            return tuple(path), False
    return tuple(path), True


def _readable(path: tuple[Any, ...], missing: Any = None) -> str:
    text = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")
    if missing is not None:
        text = f"{text}.{missing}" if text else str(missing)
    return text or "the record"


def format_error(err: ValidationError, data: Any) -> str:
    """The first problems of ``err`` as ``field.path: message (found value)``, paths as they are in ``data``."""
    problems = []
    for error in err.errors()[:5]:
        loc = tuple(error["loc"])
        path, whole = _data_path(loc, data)
        missing = loc[-1] if error["type"] == "missing" and loc and not whole else None
        found = "" if missing is not None else f" (found {_short(error.get('input'))})"
        problems.append(f"{_readable(path, missing)}: {error['msg']}{found}")
    more = f" (and {err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return "; ".join(problems) + more


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_version(data: Mapping[str, Any]) -> str:
    """The record's schema version (a record without one is read as 1.0); an unreadable major version raises."""
    version = str(data.get("schema_version") or "1.0")
    if version.split(".")[0] not in READABLE_MAJOR_VERSIONS:
        raise TraceFormatError(
            f"trace {data.get('query_id')!r}: schema_version {version!r} is not one this agent_cir reads "
            f"(1.x, 2.x, 3.x); read it with the agent_cir version that wrote it, or upgrade agent_cir"
        )
    return version


def _check_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TraceFormatError(f"a trace record is a JSON object; got {type(data).__name__} ({_short(data)})")
    check_version(data)
    return data


def load_trace(data: Any) -> Trace:
    """A trace record (a dict as read from traces.jsonl, schema 1.x-3.x) as a :class:`Trace`; a ``Trace`` is
    returned as it is.

    Raises :class:`TraceFormatError` naming the field when the record is not a trace (not an object, no
    ``query_id``, a documented field of the wrong type, an unreadable schema version).
    """
    if isinstance(data, Trace):
        return data
    data = _check_object(data)
    try:
        return Trace.model_validate(data)
    except ValidationError as err:
        raise TraceFormatError(
            f"trace {data.get('query_id')!r} is not a valid trace record: {format_error(err, data)}"
        ) from err


def salvage_trace(data: Any, max_rounds: int = 20) -> tuple[Trace, list[str]]:
    """For display (report, demo), where a record is data from a file and one bad field must not hide the
    rest: each field of the wrong type is dropped (so it takes its default; a list item that cannot be read
    is dropped from its list) and named in the returned notes. A record that is not a trace at all (not an
    object, no readable ``query_id``, an unreadable version) still raises :class:`TraceFormatError`."""
    if isinstance(data, Trace):
        return data, []
    data = _check_object(data)
    try:
        return Trace.model_validate(data), []
    except ValidationError:
        pass
    work = copy.deepcopy(dict(data))
    notes: list[str] = []
    for _ in range(max_rounds):
        try:
            return Trace.model_validate(work), notes
        except ValidationError as err:
            drops: dict[tuple[Any, ...], str] = {}
            for error in err.errors():
                path, whole = _data_path(tuple(error["loc"]), work)
                if not whole and error["type"] == "missing":
                    # A required key is absent: the item that lacks it cannot be read (a row without an id).
                    drops.setdefault(path, f"{_readable(path)}: no {error['loc'][-1]}")
                else:
                    drops.setdefault(path, f"{_readable(path)}: {error['msg']}")
            if () in drops or ("query_id",) in drops:
                raise TraceFormatError(
                    f"trace {data.get('query_id')!r} is not a trace record: {format_error(err, work)}"
                ) from err
            for path in sorted(drops, key=_sort_key, reverse=True):  # later list items first: indices hold
                parent = work
                for key in path[:-1]:
                    parent = parent[key]
                del parent[path[-1]]
                notes.append(f"trace {data.get('query_id')!r}: dropped {drops[path]}")
    raise TraceFormatError(f"trace {data.get('query_id')!r}: too many unreadable fields to show it")


def _sort_key(path: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, key) if isinstance(key, int) else (1, str(key)) for key in path)


def check_built(data: Mapping[str, Any]) -> Trace:
    """The record the pipeline has just assembled, as a :class:`Trace`, validated once, strictly: no coercion,
    so a stage that wrote a number as text, a tuple for a list or a dict of the wrong shape is caught where it
    happens. Stage outputs that are already typed models are taken as they are (the stage built them)."""
    try:
        return Trace.model_validate(data, strict=True)
    except ValidationError as err:
        raise TraceFormatError(
            f"query {data.get('query_id')!r}: a stage wrote a trace field of the wrong type: "
            f"{format_error(err, data)}"
        ) from err


_STAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyStageRecord)


def load_stage(data: Any, strict: bool = False) -> StageRecordBase:
    """One stage record (an element of a trace's ``stages``) as its typed class."""
    try:
        return _STAGE_ADAPTER.validate_python(data, strict=strict)
    except ValidationError as err:
        stage = data.get("stage") if isinstance(data, Mapping) else None
        raise TraceFormatError(f"stage record {stage!r} is not valid: {format_error(err, data)}") from err


__all__ = ["READABLE_MAJOR_VERSIONS", "TraceFormatError", "check_built", "check_version", "format_error",
           "load_stage", "load_trace", "salvage_trace"]
