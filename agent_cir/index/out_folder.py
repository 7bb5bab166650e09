"""Which folders an index may write into, which of its entries the index itself made, and opening files for
writing without following symlinks.

- ``check_out_folder``: ``--out`` must be new, empty, or already an agent_cir index (its marker file
  ``.agent_cir_index``, or, for indexes written before the marker existed, a ``CURRENT`` pointing at a
  ``gen-*`` folder with a meta.json, or a legacy flat meta.json); and it must not be, or lie inside, the
  gallery it indexes. Anything else is refused before any model loads: a build must never delete or
  overwrite a user's files.
- The marker also records every ``gen-*``, ``gen-*.partial``, ``work-*`` and ``CURRENT.tmp-*`` name the
  index creates (``claim`` before creating it), so garbage collection removes only names it made, never a
  user's look-alike folder.
- ``open_nofollow``: ``O_NOFOLLOW`` on every file the index opens for writing, so a symlinked ``.lock`` or
  checkpoint never truncates the file it points to.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from agent_cir.errors import AgentCirError

MARKER_NAME = ".agent_cir_index"
MARKER_KIND = "agent_cir index"
NEW_FOLDER_ENTRIES = frozenset({".lock", MARKER_NAME})
"""What a fresh index folder may already hold (a first build killed right after taking its lock)."""


class OutFolderError(AgentCirError):
    """``--out`` is not a folder the index may write into."""


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` with ``O_NOFOLLOW``: a symlink at ``path`` is a clear error, its target is never touched."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutFolderError(
                f"{path} is a symlink; the index never writes through symlinks (it could overwrite the file it "
                "points to). Remove the link, or use another --out folder"
            ) from err
        raise


def open_nofollow_file(path: Path, mode: str):  # type: ignore[no-untyped-def]
    """A Python file object for ``open_nofollow`` ("w", "wb", "a", "ab")."""
    flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}[mode[0]]
    fd = open_nofollow(path, flags)
    try:
        return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except BaseException:
        os.close(fd)
        raise


def _is_our_lock(path: Path) -> bool:
    """A lock file as lock.py leaves it: empty once released, or its holder's {"pid", "host", "since"}."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = path.read_bytes()[:4096]
        return not data or set(json.loads(data)) == {"pid", "host", "since"}
    except (OSError, ValueError, TypeError):
        return False


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _marker_lines(out: Path) -> list[dict] | None:
    """The marker's records, or None when ``out`` has no valid marker."""
    path = out / MARKER_NAME
    if path.is_symlink() or not path.is_file():
        return None
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("kind") != MARKER_KIND:
        return None
    return [line for line in lines[1:] if isinstance(line, dict)]


def _pre_marker_index(out: Path) -> bool:
    """An index written before the marker existed: recognised by what it already holds."""
    pointer = out / "CURRENT"
    if pointer.is_file() and not pointer.is_symlink():
        try:
            generation = json.loads(pointer.read_text(encoding="utf-8"))["generation"]
            return isinstance(generation, str) and generation.startswith("gen-") and (out / generation / "meta.json").is_file()
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return False
    meta = out / "meta.json"
    if meta.is_file() and not meta.is_symlink():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            return isinstance(data, dict) and data.get("format_version") == 1 and "encoder" in data
        except (OSError, UnicodeDecodeError, ValueError):
            return False
    return False


def is_index_folder(out: Path) -> bool:
    return _marker_lines(out) is not None or _pre_marker_index(out)


def check_out_folder(out: str | Path, gallery: str | Path | None = None) -> None:
    """Refuse an ``--out`` the index may not write into (see the module docstring)."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    if gallery is not None and _is_within(resolved, Path(gallery).expanduser().resolve()):
        raise OutFolderError(
            f"--out {out} is inside the images folder {gallery} it would index; the index never writes inside "
            "the gallery it scans. Choose a folder outside it"
        )
    if out.is_symlink() and not out.is_dir():
        raise OutFolderError(f"--out {out} is a dangling symlink; give a folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutFolderError(f"--out {out} is a file, not a folder; give a new folder or an existing index")
    if is_index_folder(out):
        return
    entries = {entry.name for entry in out.iterdir()}
    if entries <= NEW_FOLDER_ENTRIES and (".lock" not in entries or _is_our_lock(out / ".lock")):
        return
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise OutFolderError(
        f"--out {out} is not empty and is not an agent_cir index (it holds {shown}); the index would mix its "
        "files with yours. Give a new or empty folder, or an existing index folder"
    )


def _append_marker(out: Path, record: dict) -> None:
    with open_nofollow_file(out / MARKER_NAME, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def ensure_marker(out: Path) -> None:
    """Make ``out`` recognisably an agent_cir index (call while holding its lock)."""
    if _marker_lines(out) is None:
        _append_marker(out, {"kind": MARKER_KIND, "format": 1})


def claim(out: Path, name: str) -> None:
    """Record that the index is about to create ``out/name`` (so garbage collection may remove it later)."""
    out.mkdir(parents=True, exist_ok=True)
    ensure_marker(out)
    _append_marker(out, {"created": name})


def owned_names(out: Path) -> set[str]:
    """Names this index recorded creating (and has not released)."""
    owned: set[str] = set()
    for record in _marker_lines(out) or []:
        if isinstance(record.get("created"), str):
            owned.add(record["created"])
        elif isinstance(record.get("released"), str):
            owned.discard(record["released"])
    return owned


def release(out: Path) -> None:
    """Rewrite the marker (atomically) with only the recorded names that still exist, so it stays small."""
    if _marker_lines(out) is None:
        return
    from agent_cir.atomic import write_text_atomic

    lines = [{"kind": MARKER_KIND, "format": 1}] + [
        {"created": name} for name in sorted(owned_names(out)) if os.path.lexists(out / name)
    ]
    write_text_atomic(out / MARKER_NAME, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
