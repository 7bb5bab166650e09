"""The typed record of a session (one ``TurnRecord`` per turn) and its storage: ``session.json`` in a folder,
written atomically under a lock, never over another session's file."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_cir.atomic import remove_stale_partials, write_text_atomic
from agent_cir.errors import AgentCirError
from agent_cir.trace.model import Trace

SESSION_SCHEMA_VERSION = "1.0"
SESSION_FILE = "session.json"
LOCK_FILE = ".session.lock"

TurnKind = Literal["query", "refine", "answer", "pick"]
"""query: the first request; refine: a later one; answer: the reply to the agent's question; pick: a result
became the reference (no search)."""


class SessionError(AgentCirError, ValueError):
    """A session was used wrongly (nothing to undo, an unknown result picked, an unreadable session folder)."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Reference(_Record):
    """What a turn searched from: an image file, a gallery item, or both, and the caption the rewrite read."""

    image: str | None = None
    gallery_id: str | None = None
    caption: str | None = None


class CallRecord(_Record):
    """One model call of a turn (the dialogue rewrite, the question, a caption)."""

    prompt_name: str
    prompt_hash: str
    model: str
    raw: str
    cache: str
    seconds: float
    parse_status: str | None = None


class ShownResult(_Record):
    """One result of a turn as the user saw it."""

    rank: int
    id: str
    path: str | None = None
    score: float
    verify_score: float | None = None
    final_score: float | None = None


class Uncertainty(_Record):
    """Why the agent thought a turn's result uncertain (or not): which signal, its value and threshold."""

    signal: Literal["verifier", "margin", "none"]
    value: float | None = None
    threshold: float | None = None
    uncertain: bool = False


class TurnRecord(_Record):
    index: int
    kind: TurnKind
    text: str = ""
    """The user's words this turn (an instruction or an answer); empty for a pick."""
    question: str | None = None
    """For an answer: the question it answers."""
    picked: str | None = None
    """For a pick: the gallery id that became the reference."""
    reference: Reference
    dialogue_seen: list[str] = Field(default_factory=list)
    """The user's requests the rewrite of this turn received, in order (the composition the turn searched)."""
    target_description: str | None = None
    description_source: str | None = None
    """dialogue (the dialogue rewrite), fallback (unreadable answer: the requests joined) or joined (no LLM)."""
    calls: list[CallRecord] = Field(default_factory=list)
    results: list[ShownResult] = Field(default_factory=list)
    uncertainty: Uncertainty | None = None
    asked: str | None = None
    """The question the agent asked after this turn, waiting for the user's answer."""
    notes: list[str] = Field(default_factory=list)
    query_id: str | None = None
    trace: Trace | None = None
    """The pipeline's trace of this turn's search (``agent_cir.trace.model.Trace``; saved in its JSON layout)."""
    seconds: float = 0.0


class SessionRecord(_Record):
    schema_version: str = SESSION_SCHEMA_VERSION
    session_id: str
    recipe: str
    recipe_hash: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    start: Reference
    turns: list[TurnRecord] = Field(default_factory=list)


def save_session(record: SessionRecord, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``folder/session.json`` atomically while holding the folder's lock. A ``session.json`` of another
    session is kept unless ``overwrite``; the same session's is updated. Returns the file written."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SessionError(f"cannot save the session to {folder}: it is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SessionError(f"cannot create the session folder {folder} ({err.strerror or err}); choose another") from err
    target = folder / SESSION_FILE
    try:
        with FileLock(str(folder / LOCK_FILE), timeout=5):
            remove_stale_partials(folder, owned={SESSION_FILE})
            if target.exists() and not overwrite:
                existing = _read_raw(target)
                if existing.get("session_id") != record.session_id:
                    raise SessionError(
                        f"{target} holds another session ({existing.get('session_id', 'unknown id')}); it is kept. "
                        "Save to another folder, or pass overwrite=True to replace it"
                    )
            write_text_atomic(target, record.model_dump_json(indent=1) + "\n")
    except Timeout as err:
        raise SessionError(f"{folder} is locked by another process saving a session there; try again") from err
    except OSError as err:
        raise SessionError(f"cannot write {target} ({err.strerror or err}); check the folder's permissions") from err
    return target


def _read_raw(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise SessionError(f"cannot read {path} ({err}); is it a saved session?") from err
    except json.JSONDecodeError as err:
        raise SessionError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}); is it a saved session?") from err
    if not isinstance(data, dict):
        raise SessionError(f"{path} is not a saved session (expected a JSON object)")
    return data


def load_session(folder: str | Path) -> SessionRecord:
    """The session saved in ``folder`` (or the ``session.json`` path itself), validated."""
    path = Path(folder).expanduser()
    if path.is_dir():
        path = path / SESSION_FILE
    if not path.is_file():
        raise SessionError(f"no saved session at {path}; give a folder written by Session.save or `:save`")
    data = _read_raw(path)
    version = str(data.get("schema_version", ""))
    if version.split(".")[0] != SESSION_SCHEMA_VERSION.split(".")[0]:
        raise SessionError(f"{path}: session schema {version or '(none)'} is not {SESSION_SCHEMA_VERSION}; "
                           "it was written by another agent_cir version")
    try:
        return SessionRecord.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SessionError(f"{path}: {where}: {first['msg']} ({len(err.errors())} problem(s)); the file is damaged") from None
