"""Thumbnails for the static report: made once, reused by later reports written to the same folder.

A thumbnail's file name is a hash of the source's absolute path, size, modification time and the
thumbnail size, so a changed image gets a new thumbnail and an unchanged one is never decoded again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ThumbnailCache:
    """Writes JPEG thumbnails under ``out_dir/folder`` and returns their paths relative to ``out_dir``."""

    def __init__(self, out_dir: str | Path, folder: str = "thumbs", max_side: int = 256, quality: int = 85) -> None:
        self.out_dir = Path(out_dir)
        self.folder = folder
        self.max_side = max_side
        self.quality = quality
        self.generated = 0
        self.reused = 0
        self.failed: dict[str, str] = {}
        """Source path -> why no thumbnail could be made (unreadable or not an image)."""
        self._memo: dict[str, str | None] = {}

    def _key(self, source: Path, stat: os.stat_result) -> str:
        text = f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{self.max_side}|{self.quality}"
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]

    def get(self, source: str | Path | None) -> str | None:
        """Relative path (posix) of the thumbnail of ``source``, or None when it is missing or unreadable."""
        if source is None:
            return None
        path = Path(source).expanduser().resolve()
        memo_key = str(path)
        if memo_key in self._memo:
            return self._memo[memo_key]
        try:
            stat = path.stat()
        except OSError:
            self._memo[memo_key] = None
            return None
        relative = f"{self.folder}/{self._key(path, stat)}.jpg"
        target = self.out_dir / relative
        if target.is_file() and target.stat().st_size > 0:
            self.reused += 1
        else:
            try:
                with Image.open(path) as image:
                    image.thumbnail((self.max_side, self.max_side))
                    rgb = image.convert("RGB")
            except (OSError, UnidentifiedImageError, ValueError) as err:
                self.failed[memo_key] = str(err)
                self._memo[memo_key] = None
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            rgb.save(partial, format="JPEG", quality=self.quality)
            os.replace(partial, target)  # never leave a half-written thumbnail under the final name
            self.generated += 1
        self._memo[memo_key] = relative
        return relative
