"""The run folder's record: ``run.json`` (the run's identity, recipe, protocol, provenance and one entry per
session) and the finished queries read back from ``traces.jsonl`` for a resume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent_cir.atomic import write_text_atomic
from agent_cir.eval.resume import RunMismatchError, check_resume, repair_torn_tail
from agent_cir.trace.io import read_typed_traces
from agent_cir.trace.model import Trace


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")


def slim(trace: Trace) -> dict[str, Any]:
    """What metrics and summaries need from a finished trace, as plain data (keeps memory flat on long runs)."""
    return {"query_id": trace.query_id, "eval": dict(trace.eval) if trace.eval is not None else None,
            "totals": dict(trace.totals), "recipe": dict(trace.recipe)}



def read_finished(out: Path, identity_hash: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """The finished queries of ``out/traces.jsonl`` (slimmed) and whether a torn last line was cut off first.
    A trace written under another run identity is refused (``RunMismatchError``)."""
    traces_path = out / "traces.jsonl"
    torn = repair_torn_tail(traces_path)
    finished: dict[str, dict[str, Any]] = {}
    if traces_path.is_file():
        for trace in read_typed_traces(traces_path):
            if trace.eval is None:
                continue
            recorded = trace.eval.identity
            if recorded is not None and recorded != identity_hash:
                raise RunMismatchError(
                    f"{traces_path}: query {trace.query_id} was run under run identity {recorded}, not "
                    f"{identity_hash}; use another --out"
                )
            finished[trace.query_id] = slim(trace)
    return finished, bool(torn)


def open_run(out: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The folder made if new; the manifest of the run it holds (None: a new run). Another run identity there
    is refused (``RunMismatchError``, before any file is touched)."""
    out.mkdir(parents=True, exist_ok=True)
    return check_resume(out, identity)


def start_session(out: Path, previous: dict[str, Any] | None, identity: Mapping[str, Any],
                  fields: Mapping[str, Any], *, recipe_hash: str, images_root: str | Path | None,
                  torn: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``run.json`` with a new session appended (status running), written at once; returns (manifest, session).
    A resume keeps the manifest it found (``open_run``); a new run records ``identity`` and ``fields``."""
    session: dict[str, Any] = {"started": now(), "queries_run": 0, "failed": 0, "model_calls": 0, "cache_hits": 0,
                               "recipe_hash": recipe_hash}
    manifest: dict[str, Any] = previous or {"identity": dict(identity), "created": session["started"], **fields,
                                            "sessions": []}
    manifest.update(status="running", images_root=str(images_root) if images_root is not None else None)
    manifest["sessions"].append(session)
    if torn:
        session["note"] = "cut a torn last line of traces.jsonl left by an interrupted run"
    write_json(out / "run.json", manifest)
    return manifest, session


def end_session(out: Path, manifest: dict[str, Any], session: dict[str, Any], *, status: str, seconds: float,
                failed: int) -> None:
    """The session's end, duration and failures, and the run's status, in ``run.json``."""
    session["ended"] = now()
    session["seconds"] = round(seconds, 3)
    session["failed"] = failed
    manifest["status"] = status
    manifest["updated"] = session["ended"]
    write_json(out / "run.json", manifest)
