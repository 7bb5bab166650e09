"""The index manifest: one JSON line per gallery file (indexed or skipped), in embedding-row order."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
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
    """sha256 of the file's bytes (agent_cir.hashing.content_hash)."""
    status: Literal["ok", "skipped"] = "ok"
    row: int | None = None
    """Row of embeddings.npy and id in the faiss index (ok entries only)."""
    reason: str | None = None
    """Why a skipped file was skipped (a decode.REASON_* category)."""
    detail: str | None = None

    def to_json(self) -> str:
        data = {key: value for key, value in asdict(self).items() if value is not None or key == "row"}
        return json.dumps(data, ensure_ascii=False, sort_keys=False)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                entries.append(ManifestEntry(**data))
            except (json.JSONDecodeError, TypeError) as err:
                raise AgentCirError(
                    f"index manifest {path} line {number} is damaged ({err}); rebuild the index with a new --out"
                ) from None
    return entries


def write_manifest(path: str | Path, entries: list[ManifestEntry]) -> None:
    """Written to a temporary file and renamed, so a crash never leaves a half-written manifest."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(entry.to_json() + "\n")
    os.replace(tmp, path)
