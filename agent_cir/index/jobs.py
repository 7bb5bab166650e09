"""What an encode engine is given (``EncodeJob``) and what it yields (``EncodedBatch``): the contract between
the index build and every engine (local, ray), in a module of its own so that engines need not import the
registry that loads them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.encoders.base import Encoder
from agent_cir.index.journal import DecodeJournal
from agent_cir.index.manifest import ManifestEntry


@dataclass
class EncodeJob:
    root: Path
    """The gallery folder; ``root / entry.path`` is each file."""
    entries: Sequence[ManifestEntry]
    encoder: Encoder
    batch_size: int
    workers: int
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    confined: bool = True
    """Refuse a file that lies outside ``root`` when it is opened (False with ``--follow-symlinks``)."""
    journal: DecodeJournal | None = None
    """Where an engine that decodes in the build's own process records each batch before decoding it."""
    suspects: frozenset[str] = frozenset()
    """Content hashes of files a killed build was decoding: decode them one per batch."""

    @property
    def confine_root(self) -> str | None:
        return str(self.root) if self.confined else None


@dataclass
class EncodedBatch:
    entries: list[ManifestEntry]
    vectors: np.ndarray
    failures: list[ManifestEntry] = field(default_factory=list)
