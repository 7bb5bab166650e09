"""Finding the images of a gallery folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from agent_cir.errors import AgentCirError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_images(root: str | Path) -> list[str]:
    """Every file under ``root`` (recursively, following no symlinked folders) with an image extension,
    as sorted POSIX paths relative to ``root``. Hidden folders (``.git``, ``.cache``) are not entered."""
    root = Path(root)
    if not root.is_dir():
        raise AgentCirError(f"images folder not found: {root}")
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(root)
        for name in files:
            if is_image_name(name) and not name.startswith("."):
                found.append((rel_folder / name).as_posix())
    return sorted(found)


def relative_files(root: str | Path, files: Iterable[str | Path]) -> list[str]:
    """An explicit list of images (absolute, or relative to ``root``) -> sorted unique relative POSIX paths.

    Every file must exist and lie inside ``root``; the error lists the first offenders.
    """
    root = Path(root).resolve()
    relative: set[str] = set()
    missing: list[str] = []
    outside: list[str] = []
    for item in files:
        path = Path(item)
        full = path if path.is_absolute() else root / path
        full = full.resolve()
        if not full.is_file():
            missing.append(str(item))
            continue
        try:
            relative.add(full.relative_to(root).as_posix())
        except ValueError:
            outside.append(str(item))
    if missing or outside:
        problems = []
        if missing:
            problems.append(f"{len(missing)} not found (e.g. {', '.join(missing[:3])})")
        if outside:
            problems.append(f"{len(outside)} outside {root} (e.g. {', '.join(outside[:3])})")
        raise AgentCirError(f"files to index: {'; '.join(problems)}")
    return sorted(relative)
