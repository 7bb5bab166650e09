"""Finding the images of a gallery folder, and classifying every candidate file before anything opens it.

Only regular files are indexed. A symlink is followed only when its target is a regular file inside the
gallery root, or anywhere with ``follow_symlinks`` (then still per file: symlinked folders are never
entered, so a folder loop cannot make the scan endless). Every other candidate (FIFO, device, socket,
dangling link, symlink loop, link out of the root, a name that is not valid UTF-8) comes back as a
``Rejected`` file with its reason, to be listed as skipped in the manifest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent_cir.errors import AgentCirError
from agent_cir.index.files import file_kind, os_error_reason
from agent_cir.index.reasons import (
    REASON_BAD_NAME,
    REASON_NOT_REGULAR,
    REASON_OUTSIDE_ROOT,
    REASON_SYMLINK_LOOP,
    one_line,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


@dataclass(frozen=True)
class FoundFile:
    """A regular image file of the gallery (``stat`` of the file itself, or of a symlink's target)."""

    path: str
    """POSIX path relative to the gallery root: the gallery id."""
    size: int
    mtime: float
    mtime_ns: int


@dataclass(frozen=True)
class Rejected:
    """A candidate that is not read: why (a ``reasons.REASON_*``) and a detail for the manifest."""

    path: str
    reason: str
    detail: str


@dataclass
class ScanResult:
    found: list[FoundFile] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.found]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk hands undecodable bytes back as lone surrogates
        return False
    return True


def classify(root: Path, rel: str, follow_symlinks: bool = False) -> FoundFile | Rejected:
    """lstat, then (for a symlink) resolve and stat the target: never opens the file."""
    if not _valid_utf8(rel):
        shown = os.fsencode(rel).decode("utf-8", "backslashreplace")  # the bad bytes as \\xNN
        return Rejected(shown, REASON_BAD_NAME, "rename the file to index it")
    path = root / rel
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            target = path.resolve(strict=True)
            if not follow_symlinks and not target.is_relative_to(root):
                return Rejected(rel, REASON_OUTSIDE_ROOT, f"points to {target}; pass --follow-symlinks to index it")
            info = os.stat(target)
    except RuntimeError as err:  # Path.resolve's "Symlink loop" on Python < 3.13
        return Rejected(rel, REASON_SYMLINK_LOOP, one_line(err))
    except OSError as err:
        return Rejected(rel, os_error_reason(err), one_line(err))
    if not stat.S_ISREG(info.st_mode):
        return Rejected(rel, REASON_NOT_REGULAR, f"{file_kind(info.st_mode)}, not a regular file")
    return FoundFile(rel, info.st_size, info.st_mtime, info.st_mtime_ns)


def _walk(root: Path) -> list[str]:
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(root)
        for name in files:
            if is_image_name(name) and not name.startswith("."):
                found.append((rel_folder / name).as_posix())
        # A folder entry named like an image (x.jpg/) is walked into, not read; but a symlink to a folder
        # named like an image is listed so that it shows up as skipped rather than vanishing.
        for name in dirs:
            if is_image_name(name) and os.path.islink(os.path.join(folder, name)):
                found.append((rel_folder / name).as_posix())
    return sorted(found)


def scan_gallery(
    root: str | Path, files: Iterable[str | Path] | None = None, follow_symlinks: bool = False
) -> ScanResult:
    """Classify every image of ``root`` (recursively; hidden folders are not entered), or only ``files``."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise AgentCirError(f"images folder not found: {root}")
    rels = relative_files(root, files) if files is not None else _walk(root)
    result = ScanResult()
    for rel in rels:
        item = classify(root, rel, follow_symlinks)
        (result.found if isinstance(item, FoundFile) else result.rejected).append(item)
    return result


def scan_images(root: str | Path, follow_symlinks: bool = False) -> list[str]:
    """The indexable images of ``root`` as sorted POSIX paths relative to it (regular files only)."""
    return scan_gallery(root, follow_symlinks=follow_symlinks).paths


def relative_files(root: str | Path, files: Iterable[str | Path]) -> list[str]:
    """An explicit list of images (absolute, or relative to ``root``) -> sorted unique relative POSIX paths.

    Every file must exist (as a directory entry: a dangling link or a FIFO is listed, then skipped with its
    reason) and lie inside ``root``; the error lists the first offenders. Symlinks are not resolved here.
    """
    root = Path(root).resolve()
    relative: set[str] = set()
    missing: list[str] = []
    outside: list[str] = []
    for item in files:
        path = Path(item)
        full = Path(os.path.normpath(path if path.is_absolute() else root / path))
        full = Path(os.path.realpath(full.parent)) / full.name  # folders resolved, the file itself not
        if not os.path.lexists(full) or full.is_dir() and not full.is_symlink():
            missing.append(str(item))
            continue
        try:
            relative.add(full.relative_to(root).as_posix())
        except ValueError:
            outside.append(str(item))
    if missing or outside:
        problems = []
        if missing:
            problems.append(f"{len(missing)} not found (e.g. {', '.join(missing[:3])})")
        if outside:
            problems.append(f"{len(outside)} outside {root} (e.g. {', '.join(outside[:3])})")
        raise AgentCirError(f"files to index: {'; '.join(problems)}")
    return sorted(relative)
