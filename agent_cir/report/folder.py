"""The report's output folder: written only when it is new, empty, or a folder an earlier report wrote.

An earlier report leaves a marker file, ``.agent_cir_report`` (JSON)::

    {"format": "agent_cir-report", "version": 1, "agent_cir": "0.1.0", "written": "<ISO time>",
     "files": ["index.html", "queries/q1-1a2b3c4d.html", "thumbs/<hash>.jpg", ...]}

``files`` lists every file that report wrote, relative to the folder. A new report into a marked folder
replaces those files, removes the ones it no longer needs (old pages) and touches nothing else: a file
the marker does not list is the user's, and a report that would have to overwrite one refuses. Each file
is written to a temporary name and moved into place (``os.replace``), the marker last; a lock keeps two
reports from writing into one folder at once.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from agent_cir import __version__
from agent_cir.atomic import partial_target, write_bytes_atomic
from agent_cir.errors import AgentCirError
from agent_cir.locks import FolderLock
from agent_cir.report.load import ReportError

MARKER_NAME = ".agent_cir_report"
MARKER_FORMAT = "agent_cir-report"
MARKER_VERSION = 1
LOCK_NAME = ".agent_cir_report.lock"
JOURNAL_NAME = ".agent_cir_report.pending"
"""Names claimed by a report still being written, one per line: a report killed half-way leaves its files
listed here, so the next report knows they are its own."""
_OURS = {MARKER_NAME, LOCK_NAME, JOURNAL_NAME}
_LEGACY_PARTIAL = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.part$")
"""Temporary names written by earlier versions (``tempfile.mkstemp``), cleared the same way."""


def _safe_relative(name: object) -> str | None:
    """A marker entry as a clean relative posix path, or None when it could point outside the folder."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        return None
    return path.as_posix()


def read_marker(folder: Path) -> set[str] | None:
    """Files the marker of ``folder`` lists (plus those an interrupted report journalled); None without a marker."""
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    journal = _read_journal(folder)
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or not isinstance(data.get("files"), list):
        return journal or None
    return {name for name in map(_safe_relative, data["files"]) if name is not None} | journal


def _read_journal(folder: Path) -> set[str]:
    try:
        lines = (folder / JOURNAL_NAME).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return set()
    return {name for name in map(_safe_relative, lines) if name is not None}


def _busy(folder: Path, holder: str) -> AgentCirError:
    return ReportError(f"another report is being written into {folder} right now ({holder}); wait for it to finish "
                       "or choose another --out")


def _symlink(path: Path) -> AgentCirError:
    return ReportError(f"{path} is a symlink; the report never writes through symlinks (it could truncate the file it "
                       "points to). Remove the link, or choose another --out")


class ReportFolder:
    """Claims an output folder for one report, writes its files atomically and records them in the marker.

    Use as a context manager: entering checks and locks the folder, ``write_text`` / ``write_bytes`` /
    ``claim`` add files, ``commit()`` writes the marker and removes the previous report's files that are
    no longer part of this one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.previous: set[str] = set()
        self.current: set[str] = set()
        self.removed: list[str] = []
        self._lock = FolderLock(self.path, LOCK_NAME, busy=_busy, symlink=_symlink)
        self._journal: Any = None
        self.removed_partials: list[str] = []

    # -- claiming the folder
    def _check(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ReportError(f"--out {self.path} is a file, not a folder; give a new or empty folder for the report")
        if not self.path.exists():
            return
        listed = read_marker(self.path)
        if listed is not None:
            self.previous = listed
            return
        try:
            entries = sorted(entry.name for entry in self.path.iterdir() if entry.name not in _OURS)
        except OSError as err:
            raise ReportError(f"--out {self.path} cannot be read ({err}); choose another folder") from err
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ReportError(
                f"--out {self.path} is not empty ({len(entries)} entries: {shown}) and holds no {MARKER_NAME} "
                "marker of an earlier report; the report writes only into a new or empty folder, or one an earlier "
                "report wrote, so that it never overwrites or deletes your files. Choose a new or empty folder for --out"
            )

    def __enter__(self) -> ReportFolder:
        self._check()  # refuse before creating anything in a folder that is not ours
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ReportError(f"--out {self.path} cannot be created ({err}); choose another folder") from err
        self._lock.acquire()
        try:
            self._check()  # again under the lock: another writer may have changed the folder meanwhile
        except BaseException:
            self._lock.release()
            raise
        self.removed_partials = self._remove_stale_partials()
        return self

    def _remove_stale_partials(self) -> list[str]:
        """Delete the hidden ``.part`` files a killed report left (under the lock no report is mid-write).
        Only our own temporary names for files this folder's reports own are touched, never a user's file."""
        owned = self.previous | {MARKER_NAME}
        folders = {PurePosixPath(name).parent.as_posix() for name in owned}
        removed = []
        for folder in sorted(folders):
            directory = self.path if folder == "." else self.path / folder
            if not self._inside(directory / "x", f"{folder}/x" if folder != "." else "x"):
                continue
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                legacy = _LEGACY_PARTIAL.match(entry.name)
                target = partial_target(entry.name) or (legacy["target"] if legacy else None)
                if target is None:
                    continue
                if target == MARKER_NAME[1:]:  # the old marker writer's prefix had no extra dot
                    target = MARKER_NAME
                relative = target if folder == "." else f"{folder}/{target}"
                if relative not in owned:
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
                        removed.append(relative + " (partial)")
                except OSError:
                    continue
        return removed

    def __exit__(self, *exc: object) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._lock.release()

    # -- files
    def owns(self, relative: str) -> bool:
        return relative in self.previous or relative in self.current

    def claim(self, relative: str) -> Path:
        """The path of ``relative`` in the folder, recorded as this report's; refuses a file that is the user's."""
        name = _safe_relative(relative)
        if name is None:
            raise ReportError(f"internal: report file name {relative!r} is not a plain relative path")
        target = self.path / name
        if not self._inside(target, name):
            raise ReportError(f"{target} leads out of the report folder {self.path} (a symlinked folder); "
                              "choose another --out")
        if not self.owns(name) and (target.exists() or target.is_symlink()):
            raise ReportError(
                f"{target} exists and was not written by an earlier report (it is not listed in "
                f"{self.path / MARKER_NAME}); the report will not overwrite it. Move it away or choose another --out"
            )
        if name not in self.current and name not in self.previous:
            if self._journal is None:
                self._journal = open(self.path / JOURNAL_NAME, "a", encoding="utf-8")
            self._journal.write(name + "\n")
            self._journal.flush()  # before the file exists: a killed report still knows it wrote it
        self.current.add(name)
        return target

    def _inside(self, target: Path, name: str) -> bool:
        """Whether ``target``'s folder really is inside the report folder (no symlinked folder on the way)."""
        real_parent = Path(os.path.realpath(target.parent))
        return real_parent == (Path(os.path.realpath(self.path)) / name).parent

    def write_bytes(self, relative: str, data: bytes) -> Path:
        target = self.claim(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)  # mode 0666 minus the umask, like any file the user creates
        return target

    def write_text(self, relative: str, text: str) -> Path:
        return self.write_bytes(relative, text.encode("utf-8"))

    def commit(self, keep_prefixes: tuple[str, ...] = ()) -> None:
        """Write the marker (listing this report's files), then remove the previous report's leftovers.

        Previous files under ``keep_prefixes`` (caches such as thumbnails) stay and stay listed.
        """
        for name in self.previous - self.current:
            if name.startswith(keep_prefixes) and keep_prefixes and (self.path / name).is_file():
                self.current.add(name)
        marker = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "agent_cir": __version__,
                  "written": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": sorted(self.current)}
        write_bytes_atomic(self.path / MARKER_NAME, json.dumps(marker, indent=1).encode("utf-8"))
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        (self.path / JOURNAL_NAME).unlink(missing_ok=True)
        for name in sorted(self.previous - self.current):
            target = self.path / name
            try:
                if not self._inside(target, name):  # a listed name behind a symlinked folder: not ours to delete
                    continue
                if target.is_file() or target.is_symlink():
                    target.unlink()
                    self.removed.append(name)
            except OSError:
                continue


__all__ = ["JOURNAL_NAME", "LOCK_NAME", "MARKER_NAME", "MARKER_VERSION", "ReportFolder", "read_marker"]
