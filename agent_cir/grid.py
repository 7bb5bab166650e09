"""Numbered grid images for the listwise judge: k candidates tiled into one picture the MLLM compares at once.

Each cell holds one candidate, letterboxed (aspect ratio kept, never cropped) and marked with a large number
on an opaque badge (white digits with a black outline on a black badge with a white ring), so the mark reads
the same on dark and light photos. The reference image is sent as a separate image by default; with
``reference="cell"`` it takes the first cell, marked "R". Same inputs give the same bytes.

Encoding: JPEG at quality 90 (``GRID_JPEG_QUALITY``), not PNG. A grid is photos: on an 800 x 800 grid of nine
ImageNet photos PNG (level 1) took 41 ms of CPU and 712 kB, JPEG q90 2.3 ms and 140 kB (5x less to base64 and
upload), and the numbers and pictures look the same side by side (benchmarks/RESULTS.md, "Client CPU").
``GridImage.png`` still gives a lossless copy on demand.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image, ImageDraw, ImageFont

from agent_cir.config import GridConfig
from agent_cir.index.image_memo import image_file
from agent_cir.index.reasons import BadImageError

ImageInput = Union[str, Path, Image.Image, None]
Box = tuple[int, int, int, int]

REFERENCE_LABEL = "R"
_BADGE_FILL = (0, 0, 0)
_BADGE_RING = (255, 255, 255)
_DIGIT_FILL = (255, 255, 255)
_DIGIT_STROKE = (0, 0, 0)
_PLACEHOLDER_FILL = (96, 96, 96)


@dataclass(frozen=True)
class GridCell:
    """One cell of a rendered grid."""

    label: str
    """What is drawn on the badge: "1", "2", ... or "R" for the reference."""
    item: int | None
    """Index into the ``images`` passed to ``render_grid`` (None for the reference cell)."""
    box: Box
    """The whole cell (x0, y0, x1, y1), caption strip included."""
    image_box: Box
    """Where the letterboxed picture was pasted inside the cell."""
    mark_box: Box
    """The badge carrying the label."""
    caption: str | None = None
    readable: bool = True
    """False when the image could not be opened; the cell then shows a grey placeholder."""

    @property
    def mark_center(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.mark_box
        return ((x0 + x1) // 2, (y0 + y1) // 2)


GRID_JPEG_QUALITY = 90
"""High enough that digits and photo detail look unchanged to a person (and a judge), 1/5 of PNG's bytes."""


@dataclass
class GridImage:
    """A rendered grid and the map from the numbers on it back to the inputs."""

    image: Image.Image
    data: bytes
    """The encoded grid sent to the judge (JPEG, ``mime``; ``suffix`` for its file)."""
    cells: list[GridCell]
    rows: int
    cols: int
    cell_to_item: dict[int, int] = field(default_factory=dict)
    """Cell number (as drawn) -> index into the ``images`` passed to ``render_grid``."""
    unreadable: list[int] = field(default_factory=list)
    """Indices of inputs that could not be opened (drawn as placeholders)."""

    mime: str = "image/jpeg"
    suffix: str = ".jpg"

    @property
    def numbered_cells(self) -> list[GridCell]:
        return [cell for cell in self.cells if cell.item is not None]

    @property
    def png(self) -> bytes:
        """A lossless PNG of the same picture, encoded now (what is sent and saved is ``data``)."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", optimize=False, compress_level=1)
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write ``data`` to ``path`` with this encoding's suffix (``grid.png`` is written as ``grid.jpg``);
        returns the path written."""
        path = Path(path).with_suffix(self.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.data)
        return path


def grid_capacity(config: GridConfig) -> int:
    """How many candidates one grid holds (one cell fewer when the reference takes a cell)."""
    return config.rows * config.cols - (1 if config.reference == "cell" else 0)


def grid_shape(n_cells: int, config: GridConfig) -> tuple[int, int]:
    """Rows and columns for ``n_cells`` cells: the configured width, only as many rows as needed."""
    if n_cells > config.rows * config.cols:
        raise ValueError(f"{n_cells} cells do not fit a {config.rows}x{config.cols} grid")
    cols = min(config.cols, max(n_cells, 1))
    rows = max(1, math.ceil(n_cells / cols))
    return rows, cols


@functools.lru_cache(maxsize=64)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (Pillow >= 10.1 with FreeType): no system font, so output is portable.
    Loaded once per size (each grid cell asks for its badge's font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - old Pillow or no FreeType
        return ImageFont.load_default()


def _cell_picture(source: ImageInput, size: int) -> Image.Image | None:
    """The letterboxed picture of one cell. A file goes through the one decoder (EXIF, pixel limits) and is
    decoded and resized once per file version and cell size (``image_memo``); None when it cannot be used."""
    if source is None:
        return None
    if isinstance(source, Image.Image):
        return _letterbox(source.convert("RGB"), size, size)
    try:
        return image_file(source).derived(("grid-cell", size), lambda rgb: _letterbox(rgb, size, size))
    except BadImageError:
        return None


def _letterbox(picture: Image.Image, width: int, height: int) -> Image.Image:
    """``ImageOps.contain``'s size (aspect kept, never cropped), resized with ``reducing_gap``: a photo several
    times the cell is first reduced by an integer factor (box filter), then LANCZOS does the rest: 2000 x 1500
    into a 256 px cell 13 ms instead of 37; PIL documents 3.0 as indistinguishable from plain LANCZOS. Photos
    under 3x the cell (ImageNet's 320 x 240) take the plain LANCZOS path: same pixels as before."""
    size = (width, height)
    picture_ratio, cell_ratio = picture.width / picture.height, width / height
    if picture_ratio > cell_ratio:
        size = (width, max(1, round(picture.height / picture.width * width)))
    elif picture_ratio < cell_ratio:
        size = (max(1, round(picture.width / picture.height * height)), height)
    return picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, stroke: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in draw.textbbox((0, 0), text, font=font, stroke_width=stroke))  # type: ignore[return-value]


def _draw_badge(draw: ImageDraw.ImageDraw, origin: tuple[int, int], label: str, font_size: int) -> Box:
    font = load_font(font_size)
    stroke = max(2, font_size // 12)
    left, top, right, bottom = _text_size(draw, label, font, stroke)
    pad = max(4, font_size // 5)
    ring = max(2, font_size // 16)
    width = max(right - left, bottom - top) + 2 * pad  # at least square, so "1" is as visible as "8"
    height = (bottom - top) + 2 * pad
    x0, y0 = origin
    box = (x0, y0, x0 + width + 2 * ring, y0 + height + 2 * ring)
    draw.rectangle(box, fill=_BADGE_RING)
    draw.rectangle((box[0] + ring, box[1] + ring, box[2] - ring, box[3] - ring), fill=_BADGE_FILL)
    text_width = right - left
    tx = box[0] + (box[2] - box[0] - text_width) // 2 - left
    ty = box[1] + ring + pad - top
    draw.text((tx, ty), label, font=font, fill=_DIGIT_FILL, stroke_width=stroke, stroke_fill=_DIGIT_STROKE)
    return box


def _fit_caption(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, max_width: int) -> str:
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= max_width:
        return text
    ellipsis = "..."
    low, high = 0, len(text)
    while low < high:  # longest prefix that fits with the ellipsis
        mid = (low + high + 1) // 2
        if draw.textlength(text[:mid].rstrip() + ellipsis, font=font) <= max_width:
            low = mid
        else:
            high = mid - 1
    return text[:low].rstrip() + ellipsis


def render_grid(
    images: Sequence[ImageInput],
    config: GridConfig | None = None,
    *,
    captions: Sequence[str | None] | None = None,
    reference: ImageInput = None,
    labels: Sequence[str] | None = None,
) -> GridImage:
    """Tile ``images`` into one numbered grid.

    ``images`` are file paths or PIL images, drawn in the given order and numbered 1..n (or ``labels``).
    ``reference`` is drawn in the first cell, marked "R", when ``config.reference == "cell"`` (otherwise
    ignored: the caller sends it as its own image). ``captions`` fill the caption strip when
    ``config.caption_strip`` is on. An input that cannot be opened becomes a grey placeholder cell
    (listed in ``GridImage.unreadable``) so that the numbering never shifts.
    """
    config = config or GridConfig()
    if not images:
        raise ValueError("render_grid needs at least one image")
    if len(images) > grid_capacity(config):
        raise ValueError(
            f"{len(images)} images exceed one {config.rows}x{config.cols} grid "
            f"(capacity {grid_capacity(config)} with reference={config.reference!r}); split them into windows"
        )
    if labels is not None and len(labels) != len(images):
        raise ValueError("labels must have one entry per image")
    if captions is not None and len(captions) != len(images):
        raise ValueError("captions must have one entry per image")
    labels = [str(label) for label in labels] if labels is not None else [str(i + 1) for i in range(len(images))]

    with_reference = config.reference == "cell"
    entries: list[tuple[str, int | None, ImageInput, str | None]] = []
    if with_reference:
        entries.append((REFERENCE_LABEL, None, reference, None))
    for index, source in enumerate(images):
        entries.append((labels[index], index, source, captions[index] if captions else None))

    rows, cols = grid_shape(len(entries), config)
    size, gap = config.cell_size, config.gap
    caption_font_size = max(10, size // 14)
    strip = (caption_font_size * 3) // 2 + 4 if config.caption_strip else 0
    cell_height = size + strip
    canvas = Image.new(
        "RGB", (cols * size + (cols + 1) * gap, rows * cell_height + (rows + 1) * gap), config.background
    )
    draw = ImageDraw.Draw(canvas)
    caption_font = load_font(caption_font_size) if strip else None
    mark_font_size = max(12, round(size * config.mark_scale))
    inset = max(2, size // 64)

    cells: list[GridCell] = []
    unreadable: list[int] = []
    for position, (label, item, source, caption) in enumerate(entries):
        row, col = divmod(position, cols)
        x0 = gap + col * (size + gap)
        y0 = gap + row * (cell_height + gap)
        fitted = _cell_picture(source, size)
        readable = fitted is not None
        if fitted is None:
            if item is not None:
                unreadable.append(item)
            fitted = Image.new("RGB", (size, size), _PLACEHOLDER_FILL)
        px = x0 + (size - fitted.width) // 2
        py = y0 + (size - fitted.height) // 2
        canvas.paste(fitted, (px, py))
        mark_box = _draw_badge(draw, (x0 + inset, y0 + inset), label, mark_font_size)
        shown_caption = None
        if strip and caption_font is not None:
            shown_caption = _fit_caption(draw, caption or "", caption_font, size - 8)
            if shown_caption:
                draw.text(
                    (x0 + 4, y0 + size + 2), shown_caption, font=caption_font, fill=(255, 255, 255),
                    stroke_width=1, stroke_fill=(0, 0, 0),
                )
        cells.append(
            GridCell(
                label=label,
                item=item,
                box=(x0, y0, x0 + size, y0 + cell_height),
                image_box=(px, py, px + fitted.width, py + fitted.height),
                mark_box=mark_box,
                caption=shown_caption,
                readable=readable,
            )
        )

    buffer = io.BytesIO()
    # No metadata, fixed settings: the bytes depend only on the pixels (the judge's cache key hashes them).
    canvas.save(buffer, format="JPEG", quality=GRID_JPEG_QUALITY, optimize=False)
    cell_to_item = {int(cell.label): cell.item for cell in cells if cell.item is not None and cell.label.isdigit()}
    return GridImage(
        image=canvas, data=buffer.getvalue(), cells=cells, rows=rows, cols=cols,
        cell_to_item=cell_to_item, unreadable=unreadable,
    )
