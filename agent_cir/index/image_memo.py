"""Query-side images read and decoded once, through the one decoder (``decode``).

A query's reference image is wanted by several stages: the caption model (its bytes and their hash), the
retrieve stage (decoded, for the encoder), the judge and the verifier (bytes again, or a decoded grid cell),
and an in-process VLM decodes whatever it is sent. ``image_file(path)`` gives every reader of one file version
(path, size, mtime, inode: an edited file is a new version) the same ``ImageFile``, which reads the bytes once,
hashes them once and decodes them once, lazily. ``decoded(data)`` does the same for images that arrive as
bytes (a local VLM's base64 blocks), keyed by their sha256.

The memo is a least-recently-used table bounded by the bytes it holds (``AGENT_CIR_IMAGE_MEMO_MB``, default
256 MB: encoded bytes plus 3 bytes per decoded pixel), so a query's reference stays while the query's stages
run (a chunk of CIRR-sized references fits many times over) and nothing grows without bound; an image larger
than the budget is still decoded once per reader call, never kept; a file over ``MAX_MEMO_FILE_BYTES`` is
never read whole into memory to be decoded (the decoder streams it from disk, as for gallery files). Gallery indexing does not come here (it
reads each file once anyway). Decoded images are shared: readers must not modify them (PIL's resizing and
the encoders' preprocessing return new objects).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from agent_cir.index import decode
from agent_cir.index.files import open_regular
from agent_cir.index.reasons import REASON_UNREADABLE, BadImageError, one_line

DEFAULT_BUDGET_MB = 256
MAX_MEMO_FILE_BYTES = 64 * 1024 * 1024
"""Files larger than this are not memoised: decoded straight from disk each time, their bytes read on demand."""


def _budget_bytes() -> int:
    try:
        return max(0, int(float(os.environ.get("AGENT_CIR_IMAGE_MEMO_MB", DEFAULT_BUDGET_MB)) * 1024 * 1024))
    except ValueError:
        return DEFAULT_BUDGET_MB * 1024 * 1024


class ImageFile:
    """One version of one image file: ``data`` (bytes), ``sha256``, ``format`` and ``rgb()``, each computed once."""

    def __init__(self, path: str, data: bytes | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data = data
        self._sha256: str | None = None
        self._format: str | None | bool = False  # False: not probed yet
        self._rgb: Image.Image | None = None
        self._derived: dict[Any, Image.Image] = {}
        self._error: BadImageError | None = None
        self.memo_key: Any = None
        self.on_growth: Any = None
        """Called with the bytes added when the decoded image is kept (the memo's accounting)."""

    @property
    def data(self) -> bytes:
        with self._lock:
            if self._data is None:
                self._data = _read(self.path)
            return self._data

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.data).hexdigest()
        return self._sha256

    @property
    def format(self) -> str | None:
        """PIL format name from the header (JPEG, PNG, ...), None when the bytes are not an image."""
        if self._format is False:
            self._format = decode.image_format(self.data)
        return self._format  # type: ignore[return-value]

    def rgb(self) -> Image.Image:
        """Decoded 8-bit RGB (EXIF orientation, pixel limits: ``decode``). Raises ``BadImageError``; a bad file
        raises the same error again without being decoded again."""
        streamed = self._data is None and self.memo_key is None  # a large file outside the memo
        data = None if streamed else self.data
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._rgb is None:
                try:
                    self._rgb = decode.load_image(self.path) if data is None else decode.decode_bytes(data)
                except BadImageError as err:
                    self._error = err
                    raise
                if self.on_growth is not None:
                    self.on_growth(self, 3 * self._rgb.width * self._rgb.height)
            return self._rgb

    def derived(self, key: Any, make: Any) -> Image.Image:
        """``make(self.rgb())`` once per ``key`` (a grid cell's letterboxed picture at one cell size: the same
        candidate in another grid is not resized again)."""
        with self._lock:
            kept = self._derived.get(key)
        if kept is not None:
            return kept
        picture = make(self.rgb())
        with self._lock:
            kept = self._derived.setdefault(key, picture)
        if kept is picture and self.on_growth is not None:
            self.on_growth(self, 3 * picture.width * picture.height)
        return kept

    @property
    def nbytes(self) -> int:
        held = len(self._data) if self._data is not None else 0
        pictures = ([self._rgb] if self._rgb is not None else []) + list(self._derived.values())
        return held + sum(3 * p.width * p.height for p in pictures)


def _read(path: str) -> bytes:
    """The file's bytes, read as the decoder reads files (regular files only: ``files.open_regular``)."""
    try:
        with open_regular(path) as handle:
            return handle.read()
    except OSError as err:
        raise BadImageError(REASON_UNREADABLE, one_line(err)) from err


class ImageMemo:
    """The LRU table behind ``image_file`` / ``decoded`` (see the module docstring)."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget = _budget_bytes() if budget_bytes is None else budget_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[Any, ImageFile] = OrderedDict()
        self._held = 0

    def _grew(self, entry: ImageFile, added: int) -> None:
        with self._lock:
            if self._entries.get(entry.memo_key) is entry:
                self._held += added
                self._evict()

    def _evict(self) -> None:
        while self._held > self.budget and len(self._entries) > 1:
            _, oldest = self._entries.popitem(last=False)
            self._held -= oldest.nbytes
        if self._held > self.budget and self._entries:  # one entry alone over budget: not kept
            _, only = self._entries.popitem(last=False)
            self._held -= only.nbytes

    def _get(self, key: Any, make: Any) -> ImageFile:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        made = make()  # outside the lock: reading a file must not hold up the other readers
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:  # another thread made it meanwhile
                return entry
            made.on_growth = self._grew
            made.memo_key = key
            self._entries[key] = made
            self._held += made.nbytes
            self._evict()
            return made

    def file(self, path: str | Path) -> ImageFile:
        name = os.fspath(path)
        try:
            stat = os.stat(name)
        except OSError as err:
            raise BadImageError(REASON_UNREADABLE, one_line(err)) from err
        if stat.st_size > MAX_MEMO_FILE_BYTES:
            return ImageFile(name)  # not kept; decoded from disk, bytes read only if a caller asks
        key = ("file", os.path.abspath(name), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        return self._get(key, lambda: ImageFile(name, data=_read(name)))

    def bytes(self, data: bytes) -> ImageFile:
        digest = hashlib.sha256(data).hexdigest()
        entry = self._get(("bytes", digest), lambda: ImageFile("<bytes>", data=data))
        entry._sha256 = digest
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0

    def __len__(self) -> int:
        return len(self._entries)


MEMO = ImageMemo()


def image_file(path: str | Path) -> ImageFile:
    """The memoised ``ImageFile`` of ``path`` (its current version). Raises ``BadImageError`` when unreadable."""
    return MEMO.file(path)


def decoded(data: bytes) -> Image.Image:
    """``decode.decode_bytes(data)``, once per distinct content while it stays in the memo."""
    return MEMO.bytes(data).rgb()
