"""Why a gallery file was skipped: ``BadImageError`` and its short reason categories (shown per file in the manifest)."""

from __future__ import annotations

REASON_EMPTY = "empty file"
REASON_NOT_IMAGE = "not an image"
REASON_TRUNCATED = "truncated"
REASON_CORRUPT = "corrupt"
REASON_BOMB = "decompression bomb"
REASON_UNREADABLE = "unreadable"
REASON_NOT_REGULAR = "not a regular file"
REASON_SYMLINK_LOOP = "symlink loop"
REASON_DANGLING_LINK = "dangling symlink"
REASON_OUTSIDE_ROOT = "symlink leaves the gallery"
REASON_BAD_NAME = "file name is not valid UTF-8"
REASON_PREPROCESS = "preprocessing failed"
REASON_ELONGATED = "extreme shape"
REASON_DECODER_CRASH = "crashed the decoder"


class BadImageError(Exception):
    """A file that cannot be used as an image; ``reason`` is one of the REASON_* categories."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def one_line(err: BaseException) -> str:
    """An exception as one short line (for the manifest's ``detail``)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
