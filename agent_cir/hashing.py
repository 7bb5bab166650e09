"""Content hashes shared by the index manifest, the cache keys and the traces."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

_CHUNK = 1 << 20


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes: the identity of an image, whatever its path or name."""
    with open(path, "rb") as handle:
        return stream_hash(handle)


def stream_hash(handle: BinaryIO) -> str:
    """sha256 of everything left in an open binary file, read in blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def bytes_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of dict key order."""
    payload = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return text_hash(payload)
