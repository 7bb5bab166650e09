"""One folder lock (locks.FolderLock) for the three writers: index builds, eval runs, reports. Each refuses a busy
folder naming the holder, refuses a lock that is a symlink without touching its target, and is free again once
its holder is gone (issue 18 cases 3, 13, 18, 21)."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_cir.errors import AgentCirError
from agent_cir.eval.run_lock import RUN_LOCK_NAME, RunFolderError, RunFolderLock
from agent_cir.index.lock import LOCK_NAME as INDEX_LOCK_NAME
from agent_cir.index.lock import IndexLock, IndexLockedError
from agent_cir.locks import FolderBusyError, FolderLock
from agent_cir.report.folder import LOCK_NAME as REPORT_LOCK_NAME
from agent_cir.report.folder import ReportFolder
from agent_cir.report.load import ReportError
from tests.conftest import REPO_ROOT

WRITERS = {
    # name: (make the writer's lock context for a folder, its lock file name, its busy error, words of its message)
    "index": (lambda folder: IndexLock(folder), INDEX_LOCK_NAME, IndexLockedError, "agent-cir index"),
    "eval": (lambda folder: RunFolderLock(folder), RUN_LOCK_NAME, RunFolderError, "agent-cir eval"),
    "report": (lambda folder: ReportFolder(folder), REPORT_LOCK_NAME, ReportError, "another report"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_busy_folder_is_refused_naming_its_holder(writer, tmp_path) -> None:
    make, name, error, words = WRITERS[writer]
    folder = tmp_path / "out"
    with FolderLock(folder, name):  # another writer (flock: per open file, so this process conflicts with itself)
        with pytest.raises(error, match=f"{words}.*pid {os.getpid()} on {socket.gethostname()}, since"):
            with make(folder):
                pass
    with make(folder):  # free again once released
        assert (folder / name).read_text(encoding="utf-8").startswith('{"pid": ')
    assert (folder / name).read_text(encoding="utf-8") == ""  # released: no holder named


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_lock_that_is_a_symlink_is_refused_and_its_target_kept(writer, tmp_path) -> None:
    make, name, _, _ = WRITERS[writer]
    folder, victim = tmp_path / "out", tmp_path / "precious.txt"
    folder.mkdir()
    victim.write_text("do not truncate", encoding="utf-8")
    (folder / name).symlink_to(victim)
    with pytest.raises(AgentCirError, match="symlink"):
        with make(folder):
            pass
    assert victim.read_text(encoding="utf-8") == "do not truncate"


def test_the_lock_is_free_again_when_its_holder_is_killed(tmp_path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from agent_cir.locks import FolderLock\n"
         "with FolderLock(sys.argv[1], '.lock'):\n    print('held', flush=True); time.sleep(600)", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid} "):
            FolderLock(tmp_path, ".lock").acquire()
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path, ".lock"):
        pass


def test_wait_queues_behind_the_holder(tmp_path) -> None:
    first = FolderLock(tmp_path, ".lock").acquire()
    got = threading.Event()

    def second() -> None:
        with FolderLock(tmp_path, ".lock", wait=True):
            got.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert not got.is_set()  # still held by the first
    first.release()
    thread.join(timeout=30)
    assert got.is_set()


def test_the_three_writers_have_no_lock_code_of_their_own() -> None:
    """The one implementation: none of the callers opens or flocks a lock file itself any more."""
    for relative in ("agent_cir/index/lock.py", "agent_cir/eval/run_lock.py", "agent_cir/report/folder.py"):
        tree = ast.parse((REPO_ROOT / relative).read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"fcntl", "filelock", "FileLock"}, relative
        assert "FolderLock" in imported, relative
