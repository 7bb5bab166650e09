"""Thumbnails for the static report: made once, reused by later reports written to the same folder.

A thumbnail's file name is a hash of the source's absolute path, size, modification time and the
thumbnail size, so a changed image gets a new thumbnail and an unchanged one is never decoded again.
Sources are decoded by ``agent_cir.index.decode.load_image`` (EXIF orientation, decompression-bomb guard),
the one decoder the gallery and reference images go through.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from agent_cir.index.decode import BadImageError, load_image
from agent_cir.report.folder import ReportFolder


class ThumbnailCache:
    """Writes JPEG thumbnails under ``folder/subfolder`` and returns their paths relative to the folder."""

    def __init__(self, folder: ReportFolder, subfolder: str = "thumbs", max_side: int = 256, quality: int = 85) -> None:
        self.folder = folder
        self.subfolder = subfolder
        self.max_side = max_side
        self.quality = quality
        self.generated = 0
        self.reused = 0
        self.failed: dict[str, str] = {}
        """Source path -> why no thumbnail could be made (unreadable, not an image, a decompression bomb)."""
        self._memo: dict[str, str | None] = {}

    def _key(self, source: Path, stat: os.stat_result) -> str:
        text = f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{self.max_side}|{self.quality}"
        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]

    def get(self, source: Path) -> str | None:
        """Relative path (posix) of the thumbnail of ``source`` (a checked, resolved file), or None (see ``failed``)."""
        memo_key = str(source)
        if memo_key in self._memo:
            return self._memo[memo_key]
        try:
            stat = source.stat()
        except OSError as err:
            self.failed[memo_key] = f"unreadable: {err.strerror or err}"
            self._memo[memo_key] = None
            return None
        relative = f"{self.subfolder}/{self._key(source, stat)}.jpg"
        target = self.folder.path / relative
        if self.folder.owns(relative) and target.is_file() and target.stat().st_size > 0:
            self.folder.claim(relative)
            self.reused += 1
        else:
            try:
                image = load_image(source)
            except BadImageError as err:
                self.failed[memo_key] = str(err)
                self._memo[memo_key] = None
                return None
            image.thumbnail((self.max_side, self.max_side))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.quality)
            self.folder.write_bytes(relative, buffer.getvalue())
            self.generated += 1
        self._memo[memo_key] = relative
        return relative
