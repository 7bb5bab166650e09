"""One writer per index folder: ``IndexLock`` is the shared ``locks.FolderLock`` on ``<out>/.lock`` (an exclusive
``flock`` the kernel releases when the writer exits, even by SIGKILL; never opened through a symlink).

Readers take no lock: they read an immutable generation through the ``CURRENT`` pointer.
"""

from __future__ import annotations

from pathlib import Path

from agent_cir.errors import AgentCirError
from agent_cir.index.out_folder import OutFolderError
from agent_cir.locks import FolderLock

LOCK_NAME = ".lock"


class IndexLockedError(AgentCirError):
    """Another process is writing the same index folder."""


def _busy(folder: Path, holder: str) -> AgentCirError:
    return IndexLockedError(
        f"index {folder} is being written by another `agent-cir index` ({holder}); wait for it to finish, or pass "
        "--wait to queue behind it"
    )


def _symlink(path: Path) -> AgentCirError:
    return OutFolderError(
        f"{path} is a symlink; the index never writes through symlinks (it could overwrite the file it points to). "
        "Remove the link, or use another --out folder"
    )


class IndexLock(FolderLock):
    """``with IndexLock(out, wait=False):`` holds ``out`` exclusively. ``wait=False`` fails at once with an
    ``IndexLockedError`` naming the holder; ``wait=True`` blocks until the holder is done."""

    def __init__(self, directory: str | Path, wait: bool = False) -> None:
        super().__init__(directory, LOCK_NAME, wait=wait, busy=_busy, symlink=_symlink)
        self.directory = self.folder
