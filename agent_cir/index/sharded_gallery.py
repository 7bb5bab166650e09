"""A sharded index opened for search the way a ``GalleryIndex`` is: ids, paths, hashes, the encoder record and
a faiss structure, so that ``RetrievalGallery.from_index`` and ``SearchEngine`` take one path for both kinds.

Nothing here is proportional to the gallery in memory: the item table is memory-mapped (``sharded_items``),
the inverted lists too (``ShardedIndex``), and the exact vectors (when the build recorded them) are rows read
on demand (``ExactRows``). ``open_index`` picks the kind of an index folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.index.build import check_same_encoder
from agent_cir.index.faiss_io import tune_search
from agent_cir.index.gallery_index import GalleryIndex
from agent_cir.index.sharded import META_NAME, ShardedIndex, ShardedIndexError, open_exact_vectors
from agent_cir.index.sharded_items import ItemTable, has_items

EXACT_BLOCK = 200_000
"""Rows scored per block by an exact scan over the shards (bounded memory: 200k x d float32)."""


class ExactRows:
    """The exact vectors of a sharded index as one (n, d) row source over memory-mapped shards: ``rows[i]``,
    ``rows[array]`` and ``scores(query)`` (an exact scan, block by block). Nothing is loaded up front."""

    def __init__(self, index: ShardedIndex) -> None:
        self._index = index
        self.shape = (len(index), int(index.index.d))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        if np.isscalar(rows):
            return self._index._exact_rows(np.asarray([int(rows)], dtype=np.int64))[0]
        return self._index._exact_rows(np.asarray(rows, dtype=np.int64).reshape(-1))

    def scores(self, query: np.ndarray) -> np.ndarray:
        """<row_i, query> for every row (what a last-resort exact search needs), one block at a time."""
        query = np.asarray(query, dtype=np.float32)
        parts = []
        for shard in self._index.exact_shards or []:
            for start in range(0, len(shard), EXACT_BLOCK):
                parts.append(np.asarray(shard[start:start + EXACT_BLOCK], dtype=np.float32) @ query)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class MissingRows:
    """Stands for the exact vectors of a sharded index built without them: searching the codes works, what
    needs an exact row (a restricted candidate list, a reference image found in the gallery) says why not."""

    def __init__(self, index: ShardedIndex) -> None:
        self._folder = index.folder
        self.shape = (len(index), int(index.index.d))

    def __len__(self) -> int:
        return self.shape[0]

    def _refuse(self) -> ShardedIndexError:
        return ShardedIndexError(
            f"sharded index {self._folder} keeps no exact vectors (built from in-memory arrays), and this query "
            "needs one (a candidate restriction or a reference image taken from the gallery); rebuild it from "
            "np.load(..., mmap_mode='r') shards so that their files are recorded, or give the reference as a file"
        )

    def __getitem__(self, rows: Any) -> np.ndarray:
        raise self._refuse()

    def scores(self, query: np.ndarray) -> np.ndarray:
        raise self._refuse()


REFINE_FACTOR = 10
"""Candidates fetched by the compressed codes per result wanted, then re-scored with the exact vectors: on the
10M benchmark PQ64 codes alone reach recall@50 0.544, 500 re-scored for k = 50 reach 0.996 (RESULTS.md)."""


class RefinedSearch:
    """``search(queries, k)`` as a faiss index answers it, but re-scoring ``factor x k`` code candidates with
    the exact vectors (``ShardedIndex.search(..., refine=...)``)."""

    def __init__(self, sharded: ShardedIndex, factor: int = REFINE_FACTOR) -> None:
        self.sharded = sharded
        self.factor = int(factor)
        self.ntotal = len(sharded)
        self.d = int(sharded.index.d)
        self.description = f"codes re-scored exactly, {self.factor} x k candidates"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sharded.search(queries, k, refine=min(self.ntotal, self.factor * int(k)))


class ShardedGallery:
    """A sharded index folder (``build_sharded`` with ``ids=`` and ``encoder_info=``) opened for search."""

    def __init__(self, folder: str | Path, refine_factor: int | None = REFINE_FACTOR) -> None:
        """``refine_factor``: re-score that many code candidates per result with the exact vectors (when the
        build recorded them); None or 0: the codes' order as it is."""
        self.directory = Path(folder)
        self.sharded = ShardedIndex(self.directory)
        meta = self.sharded.meta
        missing = []
        if not meta.get("items") or not has_items(self.directory):
            missing.append("the item ids (build_sharded(..., ids=[one id per row], hashes=[...]))")
        if not meta.get("encoder"):
            missing.append("the encoder record (build_sharded(..., encoder_info=encoder.info))")
        if missing:
            raise ShardedIndexError(
                f"sharded index {self.directory} cannot be searched by agent-cir: it lacks {' and '.join(missing)}; "
                "rebuild it with them (the trained index and shard files are reused)"
            )
        self.meta: dict[str, Any] = {**meta, "index_factory": meta.get("factory", "?")}
        exact = open_exact_vectors(self.directory, meta)
        if exact is not None:
            self.sharded = ShardedIndex(self.directory, exact_shards=exact)
        tune_search(self.sharded.index)
        self.items = ItemTable(self.directory, meta.get("images_dir"))
        if len(self.items) != len(self.sharded):
            raise ShardedIndexError(
                f"sharded index {self.directory}: {len(self.items)} item ids for {len(self.sharded)} vectors; rebuild it"
            )
        self._rows = ExactRows(self.sharded) if exact is not None else MissingRows(self.sharded)
        self.searcher = RefinedSearch(self.sharded, refine_factor) if exact is not None and refine_factor else None
        """What the engine searches instead of ``faiss_index`` (None: the faiss index itself)."""

    def __len__(self) -> int:
        return len(self.sharded)

    @property
    def root(self) -> Path:
        return self.directory

    @property
    def ids(self) -> Sequence[str]:
        return self.items.ids

    @property
    def paths(self) -> Sequence[str]:
        """Absolute paths (``images_dir`` / id) when the build named the images folder, else the ids."""
        return self.items.paths

    @property
    def hashes(self) -> Sequence[str]:
        return self.items.hashes

    @property
    def embeddings(self) -> ExactRows | MissingRows:
        """The exact vectors, read on demand (``MissingRows`` when the build kept none: codes only)."""
        return self._rows

    @property
    def encoder_info(self) -> dict[str, Any]:
        return dict(self.meta["encoder"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def faiss_index(self) -> Any:
        return self.sharded.index

    def position(self, gallery_id: str) -> int | None:
        return self.items.position(gallery_id)

    def positions_of_hash(self, digest: str | None) -> list[int]:
        return self.items.positions_of_hash(digest)

    def check_encoder(self, encoder: Any) -> None:
        check_same_encoder(self.encoder_info, encoder.info, self.directory)


def is_sharded(folder: str | Path) -> bool:
    return (Path(folder) / META_NAME).is_file()


def open_index(folder: str | Path | Any) -> Any:
    """An index folder opened for search: a ``ShardedGallery`` for a sharded one, else a ``GalleryIndex``.
    An already opened index is returned as it is."""
    if not isinstance(folder, (str, Path)):
        return folder
    if is_sharded(folder):
        return ShardedGallery(folder)
    return GalleryIndex.load(folder)
