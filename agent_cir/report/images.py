"""Which images a report shows: only files inside the gallery folders recorded for the run.

A trace names image paths (results, the reference, grids); a trace is data and may name anything
(``../``, ``/home/me/private.jpg``). Each path is checked against the gallery roots (``load.gallery_roots``)
twice: as written (``..`` collapsed) and with symlinks resolved, so a link inside the gallery that leads
out of it does not count. A path outside every root is shown as "outside the gallery", without looking at
the file; one inside is shown as a thumbnail the report makes (``thumbs.ThumbnailCache``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent_cir.report.folder import ReportFolder
from agent_cir.trace.model import Trace
from agent_cir.report.thumbs import ThumbnailCache

THUMB_SIDE = 192
GRID_SIDE = 1024
OUTSIDE = "outside the gallery"
MISSING = "image file not found"


@dataclass
class Shown:
    """What a page shows for one image: a thumbnail (path relative to the report folder) or why there is none."""

    src: str | None
    note: str | None = None


class ReportImages:
    def __init__(self, folder: ReportFolder, roots: list[Path], source_dir: Path) -> None:
        self.roots = roots
        self.source_dir = source_dir
        self.thumbs = ThumbnailCache(folder, "thumbs", THUMB_SIDE)
        self.grids = ThumbnailCache(folder, "grids", GRID_SIDE)
        self.id_paths: dict[str, str] = {}
        self.outside: list[str] = []
        """Paths the traces name that are outside every gallery root (not shown)."""

    def learn(self, traces: list[Trace]) -> None:
        """Gallery id -> image path from every ranking in the run (retrieve outputs often carry ids only)."""
        for trace in traces:
            rows = trace.results + (trace.retrieval.output.candidates if trace.retrieval else [])
            for row in rows:
                if row.path:
                    self.id_paths.setdefault(row.id, row.path)

    def _inside(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def locate(self, path: str | None, base: str | None = None) -> tuple[Path | None, str | None]:
        """The real file behind a trace's path, or (None, why not)."""
        if not path:
            return None, None
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            options = [candidate]
        else:  # relative paths: to the query's artifacts folder, then to the traces file's folder
            options = ([Path(base) / candidate] if base else []) + [self.source_dir / candidate]
        note = OUTSIDE
        for option in options:
            lexical = Path(os.path.abspath(option))
            if not self._inside(lexical):
                continue
            real = Path(os.path.realpath(lexical))
            if not self._inside(real):
                continue
            if real.is_file():
                return real, None
            note = MISSING
        if note == OUTSIDE and len(self.outside) < 1000:
            self.outside.append(path)
        return None, note

    def display_path(self, path: str | None) -> str:
        """A path as the page prints it: relative to its gallery root when inside one (no machine paths)."""
        if not path:
            return ""
        absolute = Path(os.path.abspath(Path(path).expanduser()))
        for root in self.roots:
            if absolute.is_relative_to(root):
                return absolute.relative_to(root).as_posix()
        return path

    def _shown(self, cache: ThumbnailCache, path: str | None, base: str | None = None) -> Shown:
        source, note = self.locate(path, base)
        if source is None:
            return Shown(None, note)
        src = cache.get(source)
        return Shown(src, None if src else f"not a usable image ({cache.failed.get(str(source), 'unreadable')})")

    def thumb(self, path: str | None, base: str | None = None) -> Shown:
        return self._shown(self.thumbs, path, base)

    def grid(self, path: str | None, base: str | None = None) -> Shown:
        return self._shown(self.grids, path, base)

    def thumb_of_id(self, item_id: str, path: str | None = None) -> Shown:
        """An item's thumbnail: its path in the trace, else the same id in the run, else root/id."""
        known = path or self.id_paths.get(item_id)
        if known:
            return self.thumb(known)
        relative = PurePosixPath(item_id)
        if not relative.is_absolute() and ".." not in relative.parts:
            for root in self.roots:
                if (root / item_id).is_file():
                    return self.thumb(str(root / item_id))
        return Shown(None)

    def failures(self) -> dict[str, str]:
        return {**self.thumbs.failed, **self.grids.failed}


__all__ = ["GRID_SIDE", "MISSING", "OUTSIDE", "THUMB_SIDE", "ReportImages", "Shown"]
