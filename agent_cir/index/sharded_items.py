"""The item table of a sharded index: which gallery item each row is (id, content hash), on disk.

A sharded index holds tens of millions of rows, so the table is never a Python list or dict: ids and hashes
are fixed-width numpy arrays read memory-mapped, and lookups (id -> row, hash -> rows) are binary searches in
a sorted copy of each column (``np.searchsorted``), so opening the table costs nothing and one lookup reads a
few pages. Files, in the sharded index folder::

    items/ids.npy          (n,) unicode: gallery ids (paths relative to ``images_dir``), row order
    items/hashes.npy       (n,) bytes: sha256 hex of each file's bytes ("" when unknown)
    items/ids_order.npy    (n,) int64: rows sorted by id     (for id -> row)
    items/hashes_order.npy (n,) int64: rows sorted by hash   (for hash -> rows, every copy)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

ITEMS_DIR = "items"
_FILES = ("ids", "hashes", "ids_order", "hashes_order")


def _save_atomic(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
    np.save(temporary, array)
    os.replace(temporary, path)


def write_items(folder: str | Path, ids: Sequence[str], hashes: Sequence[str | None] | None = None) -> None:
    """Write the table for ``ids`` (row order) and their content ``hashes`` (None: unknown)."""
    items = Path(folder) / ITEMS_DIR
    items.mkdir(parents=True, exist_ok=True)
    id_column = np.asarray([str(i) for i in ids], dtype=np.str_)
    digests = [h or "" for h in (hashes if hashes is not None else [""] * len(id_column))]
    if len(digests) != len(id_column):
        raise ValueError(f"{len(id_column)} ids but {len(digests)} hashes")
    hash_column = np.asarray(digests, dtype=np.bytes_)
    columns = {
        "ids": id_column,
        "hashes": hash_column,
        "ids_order": np.argsort(id_column, kind="stable").astype(np.int64),
        "hashes_order": np.argsort(hash_column, kind="stable").astype(np.int64),
    }
    for name in _FILES:
        _save_atomic(items / f"{name}.npy", columns[name])


def has_items(folder: str | Path) -> bool:
    return all((Path(folder) / ITEMS_DIR / f"{name}.npy").is_file() for name in _FILES)


class _Column(Sequence[str]):
    """A read-only sequence of str over a memory-mapped numpy column (``ids[row]`` as the ranking reads it)."""

    def __init__(self, values: np.ndarray, prefix: str | None = None, decode: bool = False) -> None:
        self._values = values
        self._prefix = prefix
        self._decode = decode

    def __len__(self) -> int:
        return len(self._values)

    def _one(self, value: object) -> str:
        text = value.decode("ascii") if self._decode else str(value)  # type: ignore[attr-defined]
        return os.path.join(self._prefix, text) if self._prefix is not None else text

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self._one(v) for v in self._values[row]]
        return self._one(self._values[int(row)])

    def __iter__(self) -> Iterator[str]:
        for value in self._values:
            yield self._one(value)


class ItemTable:
    """The table of one sharded index, memory-mapped (see the module docstring)."""

    def __init__(self, folder: str | Path, images_dir: str | None) -> None:
        items = Path(folder) / ITEMS_DIR
        columns = {name: np.load(items / f"{name}.npy", mmap_mode="r") for name in _FILES}
        self._ids = columns["ids"]
        self._hashes = columns["hashes"]
        self._ids_order = columns["ids_order"]
        self._hashes_order = columns["hashes_order"]
        self.ids: Sequence[str] = _Column(self._ids)
        self.hashes: Sequence[str] = _Column(self._hashes, decode=True)
        self.paths: Sequence[str] = _Column(self._ids, prefix=images_dir) if images_dir else self.ids

    def __len__(self) -> int:
        return len(self._ids)

    def _equal_range(self, column: np.ndarray, order: np.ndarray, key: object) -> np.ndarray:
        # order sorts column, so column[order] is sorted; searchsorted on the memory map reads log2(n) pages
        sorted_view = _SortedView(column, order)
        low = _bisect(sorted_view, key, right=False)
        high = _bisect(sorted_view, key, right=True)
        return np.sort(np.asarray(order[low:high], dtype=np.int64))

    def position(self, gallery_id: str) -> int | None:
        rows = self._equal_range(self._ids, self._ids_order, str(gallery_id))
        return int(rows[0]) if len(rows) else None

    def positions_of_hash(self, digest: str | None) -> list[int]:
        if not digest:
            return []
        try:
            key = digest.encode("ascii")
        except UnicodeEncodeError:
            return []
        return self._equal_range(self._hashes, self._hashes_order, key).tolist()


class _SortedView:
    """column[order[i]] without materialising column[order] (10M rows)."""

    def __init__(self, column: np.ndarray, order: np.ndarray) -> None:
        self.column, self.order = column, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> object:
        return self.column[int(self.order[i])]


def _bisect(values: _SortedView, key: object, right: bool) -> int:
    low, high = 0, len(values)
    while low < high:
        middle = (low + high) // 2
        value = values[middle]
        if value < key or (right and value == key):  # type: ignore[operator]
            low = middle + 1
        else:
            high = middle
    return low
