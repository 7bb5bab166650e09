"""One writer per folder: the lock every agent_cir writer takes (an index build, an eval run, a report).

``FolderLock(folder, name)`` holds an exclusive ``flock`` on ``folder/name``; the kernel releases it when the
holder exits, even by SIGKILL, so a crash never leaves a stale lock. The lock file is opened with
``O_NOFOLLOW`` (a lock that is a symlink is refused, its target never truncated: it may be a user's file) and
holds its holder's ``{"pid", "host", "since"}`` while held (empty once released), so a writer that finds the
folder busy says who holds it. ``wait=False`` fails at once; ``wait=True`` blocks until the holder is done.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from agent_cir.errors import AgentCirError


class FolderBusyError(AgentCirError):
    """Another process holds the folder's lock."""


class LockSymlinkError(AgentCirError):
    """The lock file is a symlink."""


def describe_holder(fd: int) -> str:
    """Who holds the lock open on ``fd``: "pid N on HOST, since TIME", or "an unknown process"."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        return f"pid {int(data['pid'])} on {str(data['host'])[:80]}, since {str(data['since'])[:40]}"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "an unknown process"


def _default_busy(folder: Path, holder: str) -> AgentCirError:
    return FolderBusyError(f"{folder} is being written by another agent_cir process ({holder}); wait for it to finish")


def _default_symlink(path: Path) -> AgentCirError:
    return LockSymlinkError(
        f"{path} is a symlink; agent_cir never writes through symlinks (it could truncate the file it points to). "
        "Remove the link, or use another folder"
    )


class FolderLock:
    """``with FolderLock(folder, ".lock"):`` holds ``folder`` exclusively (see the module docstring).

    ``busy(folder, holder)`` and ``symlink(path)`` make the error a caller raises (each names its command)."""

    def __init__(
        self,
        folder: str | Path,
        name: str,
        wait: bool = False,
        busy: Callable[[Path, str], AgentCirError] = _default_busy,
        symlink: Callable[[Path], AgentCirError] = _default_symlink,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.wait = wait
        self._busy = busy
        self._symlink = symlink
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise self._symlink(self.path) from err
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                if not self.wait:
                    raise self._busy(self.folder, describe_holder(fd)) from err
                fcntl.flock(fd, fcntl.LOCK_EX)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
