"""The one image decoder of agent_cir: gallery files and reference images go through ``load_image``.

Every way a file can be bad becomes a ``BadImageError`` with a short reason. Limits (documented in the
README's index section):

- ``MAX_IMAGE_PIXELS`` (134 MP): a file whose header declares more pixels is refused before any pixel is
  decoded (a "decompression bomb": a 900 MP PNG is a few kB on disk and 2.7 GB in memory).
- ``MAX_DECODE_PIXELS`` (67 MP, 8192 x 8192): the most pixels decoded at full size (~200 MB as RGB). A
  larger JPEG is decoded at 1/2 scale by the JPEG decoder itself (PIL ``draft``), which costs a quarter of
  the memory and loses nothing an encoder at 224-448 px can see; other formats above it are refused.

- ``MAX_ASPECT_RATIO`` (32:1) and ``MAX_LONG_SIDE`` (11585 px, the side of a ``MAX_IMAGE_PIXELS`` square):
  what preprocessing makes of a picture is bounded too, not only its source pixels. Centre crop resizes the
  short side to the model's size, so a 1 x 20000 strip would become a 224 x 4.5 M image (3 GB); targetpad pads
  the short side up to the long side's scale, so its canvas is about the long side squared. Files outside
  these bounds are refused (``REASON_ELONGATED``).

Orientation: EXIF orientations 2-8 are applied (``ImageOps.exif_transpose``), so a photo looks the same to
the encoder whether it is a gallery image or a reference. The first frame of an animation is used.
Modes: everything becomes 8-bit RGB; 16-bit greyscale is scaled down (>> 8) rather than clipped to white.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agent_cir.index.files import open_regular
from agent_cir.index.reasons import (
    REASON_BOMB,
    REASON_CORRUPT,
    REASON_ELONGATED,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_TRUNCATED,
    REASON_UNREADABLE,
    BadImageError,
    one_line,
)

__all__ = [
    "MAX_DECODE_PIXELS",
    "MAX_IMAGE_PIXELS",
    "REASON_BOMB",
    "REASON_CORRUPT",
    "REASON_EMPTY",
    "REASON_NOT_IMAGE",
    "REASON_TRUNCATED",
    "REASON_UNREADABLE",
    "BadImageError",
    "decode_bytes",
    "image_format",
    "load_image",
    "to_rgb",
]

MAX_DECODE_PIXELS = 8192 * 8192
MAX_IMAGE_PIXELS = 2 * MAX_DECODE_PIXELS
MAX_ASPECT_RATIO = 32
MAX_LONG_SIDE = int(MAX_IMAGE_PIXELS**0.5)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, MemoryError)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} MP"


def _check_shape(width: int, height: int) -> None:
    """Bound what resizing and padding make of the picture (see the module docstring)."""
    long, short = max(width, height), min(width, height)
    if short < 1 or long > MAX_ASPECT_RATIO * short:
        raise BadImageError(
            REASON_ELONGATED, f"{width} x {height}: aspect ratio over {MAX_ASPECT_RATIO}:1 (resizing it would need gigabytes)"
        )
    if long > MAX_LONG_SIDE:
        raise BadImageError(
            REASON_ELONGATED, f"{width} x {height}: long side over {MAX_LONG_SIDE} px (padding it would need gigabytes)"
        )


def _fit_decode_budget(image: Image.Image) -> None:
    """Refuse images over the limits; ask the JPEG decoder for 1/2 scale when that brings one under budget."""
    width, height = image.size
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise BadImageError(
            REASON_BOMB, f"{width} x {height} = {_megapixels(pixels)}, over the {_megapixels(MAX_IMAGE_PIXELS)} limit"
        )
    if pixels > MAX_DECODE_PIXELS and image.format == "JPEG":
        image.draft(image.mode, (width // 2, height // 2))
    if image.size[0] * image.size[1] > MAX_DECODE_PIXELS:
        raise BadImageError(
            REASON_BOMB,
            f"{width} x {height} = {_megapixels(pixels)} {image.format or ''} image, over the "
            f"{_megapixels(MAX_DECODE_PIXELS)} full-size decode limit (only JPEGs are decoded at reduced scale)",
        )
    _check_shape(*image.size)


_FILE_OBJECT = re.compile(r"\s*<_io\.\w+ name=[^>]*>")
"""How Pillow names the open file in its messages ("<_io.BufferedReader name=40>"): nothing a reader can use."""


def _readable(detail: str) -> str:
    return _FILE_OBJECT.sub("", detail).strip() or detail


def _unidentified(handle: BinaryIO) -> str:
    """Why Pillow knew no format for the file, with its first bytes (what a person checks: text, HTML, a zip...)."""
    try:
        handle.seek(0)
        head = handle.read(16)
    except OSError:
        head = b""
    text = head.decode("ascii", "replace")
    shown = repr(text) if head.isascii() and text.strip().isprintable() else head.hex(" ")
    return f"no image format Pillow reads starts like this file (first bytes: {shown})"


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode. 16/32-bit greyscale and float images are rescaled, not clipped."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.int64).clip(0, 65535)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values >> 8
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0
        image = Image.fromarray(values.clip(0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("La", "RGBa"):  # premultiplied alpha: undo it first, PIL has no direct path to RGB
        image = image.convert("RGBA" if image.mode == "RGBa" else "LA")
    return image.convert("RGB")


def _decode(handle: BinaryIO) -> Image.Image:
    """Decode an open binary file under the limits above (first frame, EXIF orientation, 8-bit RGB)."""
    try:
        if not handle.read(1):
            raise BadImageError(REASON_EMPTY, "0 bytes")
        handle.seek(0)
    except OSError as err:
        raise BadImageError(REASON_UNREADABLE, one_line(err)) from err
    # PIL's own bomb warning fires at 89 MP; the limits above decide instead (its hard error at 179 MP
    # is above MAX_IMAGE_PIXELS and stays as a backstop for callers that raise MAX_IMAGE_PIXELS).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(handle) as image:
                image.seek(0)
                _fit_decode_budget(image)
                image.load()
                image = ImageOps.exif_transpose(image) or image
                return to_rgb(image)
        except BadImageError:
            raise
        except Image.DecompressionBombError as err:
            raise BadImageError(REASON_BOMB, one_line(err)) from err
        except UnidentifiedImageError as err:
            raise BadImageError(REASON_NOT_IMAGE, _unidentified(handle)) from err
        except _DECODE_ERRORS as err:
            reason = REASON_TRUNCATED if "truncated" in str(err).lower() else REASON_CORRUPT
            raise BadImageError(reason, _readable(one_line(err))) from err
        except Exception as err:  # noqa: BLE001 - a hostile file may raise anything from a decoder plugin
            raise BadImageError(REASON_CORRUPT, _readable(f"{type(err).__name__}: {one_line(err)}")) from err


def load_image(path: str | Path, root: str | Path | None = None) -> Image.Image:
    """Open, decode and convert to RGB (first frame, EXIF orientation applied, within the pixel limits).
    ``root``: refuse a file that, at open time, lies outside this folder (files.open_regular)."""
    with open_regular(path, root) as handle:
        return _decode(handle)


def decode_bytes(data: bytes) -> Image.Image:
    """``load_image`` for an image already in memory (a data URL's bytes, a download): the same limits."""
    return _decode(io.BytesIO(data))


def image_format(data: bytes) -> str | None:
    """The PIL format name of encoded image bytes from their header (nothing decoded); None: not an image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                return probe.format
        except Exception:  # noqa: BLE001 - any failure to read a header means "not an image we can use"
            return None
