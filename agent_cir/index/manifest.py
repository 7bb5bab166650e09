"""The index manifest: one JSON line per gallery file (indexed or skipped), ok entries first in row order."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from agent_cir.errors import AgentCirError

MANIFEST_NAME = "manifest.jsonl"


@dataclass
class ManifestEntry:
    path: str
    """POSIX path relative to the indexed folder: the gallery id."""
    size: int
    mtime: float
    mtime_ns: int
    hash: str
    """sha256 of the file's bytes (agent_cir.hashing.content_hash); "" when the file could not be read."""
    status: Literal["ok", "skipped"] = "ok"
    row: int | None = None
    """Row of embeddings.npy and id in the faiss index (ok entries only)."""
    reason: str | None = None
    """Why a skipped file was skipped (a reasons.REASON_* category)."""
    detail: str | None = None

    def to_json(self) -> str:
        data = {key: value for key, value in asdict(self).items() if value is not None or key == "row"}
        return json.dumps(data, ensure_ascii=False, sort_keys=False)


_FIELDS = {f.name for f in fields(ManifestEntry)}
_REQUIRED_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str,),
    "size": (int,),
    "mtime": (int, float),
    "mtime_ns": (int,),
    "hash": (str,),
}


def check_gallery_path(path: str) -> None:
    """A gallery id must name a file inside the indexed folder: relative POSIX, no ``..`` or ``.`` part, no
    empty part, no NUL. A forged manifest could otherwise make search return (and the demo
    serve) any file on the machine."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\x00" in path
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(f"path {path[:120]!r} is not a relative path inside the indexed folder")


def _entry(data: object) -> ManifestEntry:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    for key, types in _REQUIRED_TYPES.items():
        if not isinstance(data.get(key), types) or isinstance(data.get(key), bool):
            raise ValueError(f"field {key!r} missing or not {' / '.join(t.__name__ for t in types)}")
    check_gallery_path(data["path"])
    status, row = data.get("status", "ok"), data.get("row")
    if status not in ("ok", "skipped"):
        raise ValueError(f"status must be ok or skipped, got {status!r}")
    if status == "ok" and (not isinstance(row, int) or isinstance(row, bool) or row < 0):
        raise ValueError("an ok entry needs a row number >= 0")
    return ManifestEntry(**data)


def manifest_bytes(entries: list[ManifestEntry]) -> bytes:
    return "".join(entry.to_json() + "\n" for entry in entries).encode("utf-8")


def parse_manifest(data: bytes, path: str | Path) -> list[ManifestEntry]:
    """Entries of a manifest file's bytes; any damaged line is an AgentCirError naming the file and line."""
    entries = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            entries.append(_entry(json.loads(raw.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError, RecursionError) as err:
            raise AgentCirError(
                f"index manifest {path} line {number} is damaged ({' '.join(str(err).split())[:200]}); "
                "re-run `agent-cir index` on the images folder to write a fresh index generation"
            ) from err
    return entries


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise AgentCirError(f"index manifest {path} cannot be read ({err})") from err
    return parse_manifest(data, path)
