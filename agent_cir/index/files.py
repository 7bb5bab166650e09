"""Reading gallery files safely: only regular files are ever opened, and nothing can block on open or read.

A FIFO named ``x.jpg`` blocks ``open()`` forever, a device file reads without end, a symlink loop raises
``ELOOP``: every such file becomes a ``BadImageError`` with a short reason, before any decoder sees it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from agent_cir.hashing import stream_hash
from agent_cir.index.reasons import (
    REASON_DANGLING_LINK,
    REASON_NOT_REGULAR,
    REASON_OUTSIDE_ROOT,
    REASON_SYMLINK_LOOP,
    REASON_UNREADABLE,
    BadImageError,
    one_line,
)


def file_kind(mode: int) -> str:
    """Human name of a non-regular file type, for skip reasons."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def os_error_reason(err: OSError) -> str:
    import errno

    if err.errno == errno.ELOOP:
        return REASON_SYMLINK_LOOP
    if err.errno == errno.ENOENT:
        return REASON_DANGLING_LINK
    return REASON_UNREADABLE


def opened_path(fd: int, path: str | Path) -> Path:
    """Where the open descriptor ``fd`` really is: the kernel's name for it (``/proc/self/fd``), or, without
    procfs, the resolved ``path`` when that is the very file the descriptor holds (same device and inode)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
    resolved = Path(os.path.realpath(path))
    opened, named = os.fstat(fd), os.stat(resolved)
    if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
        raise BadImageError(REASON_OUTSIDE_ROOT, "the file changed while it was opened")
    return resolved


def _check_inside(fd: int, path: str | Path, root: Path) -> None:
    real_root = Path(os.path.realpath(root))
    try:
        where = opened_path(fd, path)
    except OSError as err:
        raise BadImageError(os_error_reason(err), one_line(err)) from err
    if where != real_root and real_root not in where.parents:
        raise BadImageError(REASON_OUTSIDE_ROOT, f"resolves to {where} at open time, outside the gallery {real_root}")


def open_regular(path: str | Path, root: str | Path | None = None) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (after following symlinks) and, with ``root``,
    only if the file actually opened lies inside ``root``.

    ``O_NONBLOCK`` makes opening a FIFO return at once (instead of waiting for a writer); the type is then
    checked on the open descriptor itself (``fstat``), so a file swapped for a FIFO after the scan is
    caught too. The root check is on the descriptor too (not on the name), so a symlink re-pointed outside
    the gallery after the scan is refused instead of read. Raises ``BadImageError``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise BadImageError(os_error_reason(err), one_line(err)) from err
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadImageError(REASON_NOT_REGULAR, f"{file_kind(mode)}, not a regular file")
        if root is not None:
            _check_inside(fd, path, Path(root))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_hash(path: str | Path, root: str | Path | None = None) -> str:
    """sha256 of a regular file's bytes (the same value as ``agent_cir.hashing.content_hash``); with
    ``root``, only of a file inside it (``open_regular``)."""
    with open_regular(path, root) as handle:
        try:
            return stream_hash(handle)
        except OSError as err:
            raise BadImageError(REASON_UNREADABLE, one_line(err)) from err
