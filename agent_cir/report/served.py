"""The only files the demo lets Gradio serve: thumbnails and placeholders it wrote into a private folder.

Gradio serves ``/gradio_api/file=<path>`` for anything under its ``allowed_paths`` (and files it copied
into its own cache). Allowing the gallery's folders would serve every file beside the images (a recipe,
the SQLite model cache, an index's manifest). So the demo never hands Gradio a gallery path: each image it
shows (results, the picked reference, the judge's grid) is decoded with ``load_image`` (EXIF orientation,
decompression-bomb guard) and re-encoded as a JPEG into a folder made for this process (mode 0700), and
that folder is the one allowed path. Files are named by a hash of the source's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

from agent_cir.index.decode import BadImageError, load_image

THUMB_SIDE = 384
GRID_SIDE = 1024


def readable_name(item_id: str) -> str:
    """A gallery id as a person reads it: the file stem, an ImageNet synset prefix dropped, '_' as spaces.

    ``n02085620_Chihuahua.jpg`` -> ``Chihuahua``; ``cats/tabby_03.png`` -> ``tabby 03``; ``cirr-dev-1`` stays.
    """
    stem = Path(item_id.replace("\\", "/")).stem or item_id
    stem = re.sub(r"^n\d{8}[_-]", "", stem)
    return stem.replace("_", " ").strip() or item_id


class ServedImages:
    """Writes what the demo shows into ``folder`` and returns paths inside it (never a source path)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        if folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="agent_cir_demo_served_"))  # mkdtemp: mode 0700
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        else:
            self.folder = Path(folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._cleanup = None
        self.folder = self.folder.resolve()
        self.written: set[str] = set()
        """Names of the files this object wrote (nothing else is ever in the folder)."""
        self.failed: dict[str, str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Remove the folder (only when this object made it)."""
        if self._cleanup is not None:
            self._cleanup()

    def _write(self, name: str, data: bytes) -> str:
        target = self.folder / name
        with self._lock:
            if name not in self.written or not target.is_file():
                handle, partial = tempfile.mkstemp(prefix=".part-", dir=self.folder)
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data)
                os.replace(partial, target)
                self.written.add(name)
        return str(target)

    def image(self, source: str | Path | None, label: str, max_side: int = THUMB_SIDE) -> str:
        """A JPEG of ``source`` in the served folder; a placeholder naming ``label`` when there is none."""
        if not source:
            return self.placeholder(label)
        path = Path(source)
        try:
            stat = path.stat()
        except OSError:
            return self.placeholder(label, "image file not found")
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{max_side}"
        name = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:24] + ".jpg"
        if name in self.written and (self.folder / name).is_file():
            return str(self.folder / name)
        try:
            picture = load_image(path)
        except BadImageError as err:
            self.failed[str(path)] = str(err)
            return self.placeholder(label, err.reason)
        picture.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=88)
        return self._write(name, buffer.getvalue())

    def placeholder(self, label: str, why: str = "") -> str:
        """A small grey image with the label (and why there is no image) written on it."""
        from PIL import Image, ImageDraw

        text = f"{why}\n{label}" if why else label
        name = "placeholder-" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16] + ".png"
        if name in self.written and (self.folder / name).is_file():
            return str(self.folder / name)
        picture = Image.new("RGB", (160, 160), (226, 230, 236))
        draw = ImageDraw.Draw(picture)
        lines = [why[:20]] if why else []
        lines += [label[start:start + 16] for start in range(0, min(len(label), 96), 16)]
        for row, line in enumerate(lines):
            draw.text((8, 8 + 14 * row), line, fill=(160, 40, 30) if why and row == 0 else (60, 60, 60))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return self._write(name, buffer.getvalue())


_default: ServedImages | None = None


def default_served() -> ServedImages:
    """One process-wide folder for views made outside a running demo (tests, notebooks)."""
    global _default
    if _default is None:
        _default = ServedImages()
    return _default


__all__ = ["GRID_SIDE", "THUMB_SIDE", "ServedImages", "default_served", "readable_name"]
