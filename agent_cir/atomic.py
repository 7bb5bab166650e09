"""Writes that must not be half-done: write a temporary file beside the target, then ``os.replace`` it.

The temporary file is created with mode 0666 minus the umask, as ``open()`` would create the target itself
(``tempfile.mkstemp`` makes 0600 files, which would leave a report or run.json unreadable to the group that
reads the results), exclusively and without following a symlink planted at its name. Its name,
``.<target>.<pid>-<8 hex>.part``, is recognisable: :func:`remove_stale_partials` clears the ones a killed
writer left behind.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

PARTIAL_SUFFIX = ".part"
_PARTIAL_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.part$")


def partial_name(target_name: str) -> str:
    """The temporary name for ``target_name``: unique per process and call, so concurrent writers never share it."""
    return f".{target_name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"


def partial_target(name: str) -> str | None:
    """The target a temporary file of :func:`partial_name` was for, or None when ``name`` is not one of ours."""
    match = _PARTIAL_NAME.match(name)
    return match["target"] if match else None


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the new one, never a torn one."""
    path = Path(path)
    partial = path.with_name(partial_name(path.name))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(partial, flags, 0o666)  # the umask applies, as for any new file
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_partials(folder: str | Path, owned: set[str] | None = None) -> list[str]:
    """Remove the temporary files of :func:`partial_name` that a killed writer left in ``folder``.

    Only names of our own pattern are touched, and with ``owned`` only those whose target is in it. Call it
    while holding the folder's lock (no live writer of ours is mid-write then). Returns the names removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        target = partial_target(entry.name)
        if target is None or (owned is not None and target not in owned):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed
