"""Decoding one image file safely: every way a file can be bad becomes a ``BadImageError`` with a short reason."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

REASON_EMPTY = "empty file"
REASON_NOT_IMAGE = "not an image"
REASON_TRUNCATED = "truncated"
REASON_CORRUPT = "corrupt"
REASON_BOMB = "decompression bomb"
REASON_UNREADABLE = "unreadable"


class BadImageError(Exception):
    """A file that cannot be used as an image; ``reason`` is one of the REASON_* categories."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode and convert to RGB (first frame of animations, EXIF orientation applied).

    PIL's decompression-bomb warning is treated as an error, like the hard limit: a gallery never needs
    images of hundreds of megapixels, and decoding one could exhaust memory.
    """
    try:
        with open(path, "rb") as handle:
            if not handle.read(1):
                raise BadImageError(REASON_EMPTY, "0 bytes")
    except OSError as err:
        raise BadImageError(REASON_UNREADABLE, _one_line(err)) from None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image) or image
                return image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImageError(REASON_BOMB, _one_line(err)) from None
        except UnidentifiedImageError as err:
            raise BadImageError(REASON_NOT_IMAGE, _one_line(err)) from None
        except BadImageError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error()) as err:
            reason = REASON_TRUNCATED if "truncated" in str(err).lower() else REASON_CORRUPT
            raise BadImageError(reason, _one_line(err)) from None
        except Exception as err:  # noqa: BLE001 - a hostile file may raise anything from a decoder plugin
            raise BadImageError(REASON_CORRUPT, f"{type(err).__name__}: {_one_line(err)}") from None


def struct_error() -> type[Exception]:
    import struct

    return struct.error
