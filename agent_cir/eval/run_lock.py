"""One eval per run folder, and only into a folder that is new, empty, or an agent_cir run.

``RunFolderLock(out)`` refuses a folder holding anything but an eval's own files when it has no ``run.json``
written by ``agent-cir eval`` (a dict with an ``identity`` and a ``sessions`` list), so a user's own
``run.json`` / ``metrics.json`` is never overwritten; then it holds an exclusive ``flock`` on
``out/.run.lock`` for the whole eval, so a second eval into the same folder fails at once instead of running
every query twice and losing one session's record. The kernel releases the lock when the process exits,
even by SIGKILL.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

from agent_cir.errors import AgentCirError
from agent_cir.locks import FolderLock

RUN_LOCK_NAME = ".run.lock"
FRESH_RUN_ENTRIES = frozenset({RUN_LOCK_NAME, "index"})
"""What a run folder may hold before its run.json exists (a run killed while building its gallery index)."""


class RunFolderError(AgentCirError):
    """``eval --out`` is not a folder an eval may write into, or another eval is writing it."""


def is_eval_run(out: Path) -> bool:
    """``out/run.json`` exists and was written by ``agent-cir eval``."""
    manifest = out / "run.json"
    if manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("identity"), dict) and isinstance(data.get("sessions"), list)


def check_run_folder(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise RunFolderError(f"eval --out {out} is a file, not a folder; give a new folder or an earlier run's folder")
    if is_eval_run(out):
        return
    entries = {entry.name for entry in out.iterdir()}
    if entries <= FRESH_RUN_ENTRIES and not (out / RUN_LOCK_NAME).is_symlink():
        return
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise RunFolderError(
        f"eval --out {out} is not empty and is not an agent_cir run (no run.json written by `agent-cir eval`; it "
        f"holds {shown}); the eval would overwrite those files. Give a new or empty folder, or an earlier run's folder"
    )


def _busy(folder: Path, holder: str) -> AgentCirError:
    return RunFolderError(
        f"run folder {folder} is being written by another `agent-cir eval` ({holder}); wait for it to finish, or "
        "use another --out"
    )


def _symlink(path: Path) -> AgentCirError:
    return RunFolderError(f"{path} is a symlink; remove it (the eval never writes through symlinks)")


class RunFolderLock:
    """``with RunFolderLock(out):`` checks ``out`` (see the module docstring) and holds it exclusively
    (``locks.FolderLock`` on ``out/.run.lock``)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).expanduser()
        self._lock = FolderLock(self.out, RUN_LOCK_NAME, busy=_busy, symlink=_symlink)

    def __enter__(self) -> RunFolderLock:
        check_run_folder(self.out)
        self._lock.acquire()
        try:
            check_run_folder(self.out)  # again under the lock
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._lock.release()
