"""One writer per index folder: an exclusive ``flock`` on ``<out>/.lock``, released by the kernel when the
writer exits (even by SIGKILL), so a crashed build never leaves a stale lock behind.

Readers take no lock: they read an immutable generation through the ``CURRENT`` pointer.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from agent_cir.errors import AgentCirError
from agent_cir.index.out_folder import open_nofollow

LOCK_NAME = ".lock"


class IndexLockedError(AgentCirError):
    """Another process is writing the same index folder."""


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        return f"pid {data['pid']} on {data['host']}, since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown process"


class IndexLock:
    """``with IndexLock(out, wait=False):`` holds ``out`` exclusively. ``wait=False`` fails at once with an
    ``IndexLockedError`` naming the holder; ``wait=True`` blocks until the holder is done."""

    def __init__(self, directory: str | Path, wait: bool = False) -> None:
        self.directory = Path(directory)
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> IndexLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a .lock that is a symlink is refused, never truncated through (the target may be a user's file)
        fd = open_nofollow(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                if not self.wait:
                    raise IndexLockedError(
                        f"index {self.directory} is being written by another `agent-cir index` ({_holder(fd)}); "
                        "wait for it to finish, or pass --wait to queue behind it"
                    ) from err
                fcntl.flock(fd, fcntl.LOCK_EX)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
