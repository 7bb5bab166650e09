"""One eval per run folder, and only into a folder that is new, empty, or an agent_cir run.

``RunFolderLock(out)`` refuses a folder holding anything but an eval's own files when it has no ``run.json``
written by ``agent-cir eval`` (a dict with an ``identity`` and a ``sessions`` list), so a user's own
``run.json`` / ``metrics.json`` is never overwritten; then it holds an exclusive ``flock`` on
``out/.run.lock`` for the whole eval, so a second eval into the same folder fails at once instead of running
every query twice and losing one session's record. The kernel releases the lock when the process exits,
even by SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from types import TracebackType

from agent_cir.errors import AgentCirError

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


class RunFolderLock:
    """``with RunFolderLock(out):`` checks ``out`` (see the module docstring) and holds it exclusively."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).expanduser()
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        check_run_folder(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / RUN_LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunFolderError(f"{path} is a symlink; remove it (the eval never writes through symlinks)") from err
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise RunFolderError(
                f"run folder {self.out} is being written by another `agent-cir eval`; wait for it to finish, or "
                "use another --out"
            ) from err
        self._fd = fd
        try:
            check_run_folder(self.out)  # again under the lock
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
