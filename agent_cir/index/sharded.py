"""A compressed IVF-PQ index built shard by shard and searched from disk: galleries that do not fit in RAM.

Layout of a sharded index folder::

    trained.index        the trained, empty IVF-PQ (coarse centroids + PQ codebooks), from a sample
    shards/NNNNN.index   one populated IVF-PQ per embedding shard (ids = global row numbers); a rerun
                         skips shards whose file is complete, so adding shards is incremental
    merged.ivfdata       every shard's inverted lists merged into faiss ``OnDiskInvertedLists``
    merged.index         the index header pointing at merged.ivfdata (read memory-mapped)
    sharded.json         factory, dimension, count, shard list, bytes per vector; and what search needs
                         beyond rows: the encoder record, the images folder, the exact vector files
    items/               the item table (ids, content hashes; ``sharded_items``), when built with ids

``agent-cir search -i FOLDER`` searches a sharded index like any other (``sharded_gallery.ShardedGallery``)
when it was built with ``ids=`` and ``encoder_info=``; without them it says which is missing.

Search memory-maps the inverted lists, so resident memory is the coarse centroids, the codebooks and the
pages the OS keeps of the lists that queries visit, not 4 x d bytes per vector. ``refine`` re-scores an
over-fetched short list with the exact vectors (memory-mapped embedding shards) when they are available.

Bytes per vector on disk (d = 512): ``IVFn,PQ64`` 64 code bytes + 8 id bytes = 72; ``IVFn,PQ32`` 40;
``IVFn,PQ128`` 136; the exact fp16 vectors used by ``refine`` add 2 x d = 1,024 (kept only if you keep them).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.atomic import write_text_atomic
from agent_cir.errors import AgentCirError
from agent_cir.index.sharded_items import write_items

TRAINED_NAME = "trained.index"
MERGED_NAME = "merged.index"
IVFDATA_NAME = "merged.ivfdata"
META_NAME = "sharded.json"
SHARDS_DIR = "shards"


class ShardedIndexError(AgentCirError):
    """A sharded index folder cannot be built or opened as asked."""


def _atomic_write_index(index: Any, path: Path) -> None:
    import faiss

    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, path)


def _as_float32(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(block, dtype=np.float32))


def train_compressed(sample: np.ndarray, factory: str = "IVF4096,PQ64") -> Any:
    """An empty inner-product IVF-PQ index trained on ``sample`` (rows: unit vectors)."""
    import faiss

    sample = _as_float32(sample)
    index = faiss.index_factory(sample.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError as err:
        raise ShardedIndexError(f"index type {factory!r} is not an IVF index; use e.g. IVF4096,PQ64") from err
    if ivf is None:
        raise ShardedIndexError(f"index type {factory!r} is not an IVF index; use e.g. IVF4096,PQ64")
    if len(sample) < ivf.nlist:
        raise ShardedIndexError(f"{factory}: training needs at least nlist = {ivf.nlist} vectors, got {len(sample)}")
    index.train(sample)
    return index


@dataclass
class ShardedBuild:
    folder: Path
    count: int
    shards: int
    shards_reused: int
    seconds_train: float
    seconds_add: float
    seconds_merge: float
    bytes_on_disk: int

    @property
    def bytes_per_vector(self) -> float:
        return self.bytes_on_disk / max(1, self.count)


def build_sharded(
    shards: Sequence[np.ndarray],
    out_dir: str | Path,
    factory: str = "IVF4096,PQ64",
    train_size: int = 200_000,
    seed: int = 0,
    progress: bool = False,
    ids: Sequence[str] | None = None,
    hashes: Sequence[str | None] | None = None,
    images_dir: str | Path | None = None,
    encoder_info: Mapping[str, Any] | None = None,
) -> ShardedBuild:
    """Train on a sample drawn across ``shards`` (arrays or memory maps, one per shard, in row order), add
    each shard into its own populated index, then merge them into on-disk inverted lists.

    Shard files already complete from an earlier run with the same trained index are reused.

    What makes the folder searchable by ``agent-cir search`` (``ShardedGallery``): ``ids`` (one gallery id per
    row, e.g. paths relative to ``images_dir``), ``hashes`` (sha256 of each file, for reference exclusion),
    ``encoder_info`` (the ``Encoder.info`` that made the vectors). Shards given as ``np.load(..., mmap_mode=
    "r")`` memory maps are recorded as the exact vectors (restricted search, a reference found in the gallery).
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk
    from tqdm.auto import tqdm

    folder = Path(out_dir)
    (folder / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    sizes = [len(shard) for shard in shards]
    total = int(sum(sizes))
    if total == 0:
        raise ShardedIndexError("no vectors to index")
    if ids is not None and len(ids) != total:
        raise ShardedIndexError(f"{len(ids)} ids for {total} vectors: give one id per row, in shard order")

    started = time.perf_counter()
    trained_path = folder / TRAINED_NAME
    if trained_path.is_file():
        trained = faiss.read_index(str(trained_path))
    else:
        rng = np.random.default_rng(seed)
        per_shard = [max(1, round(train_size * size / total)) for size in sizes]
        sample = np.concatenate(
            [_as_float32(shard[np.sort(rng.choice(len(shard), min(n, len(shard)), replace=False))])
             for shard, n in zip(shards, per_shard) if len(shard)]
        )
        trained = train_compressed(sample, factory)
        _atomic_write_index(trained, trained_path)
    seconds_train = time.perf_counter() - started

    started = time.perf_counter()
    shard_paths: list[str] = []
    reused = 0
    offset = 0
    for number, shard in enumerate(tqdm(shards, desc="adding shards", unit="shard", disable=not progress)):
        path = folder / SHARDS_DIR / f"{number:05d}.index"
        shard_paths.append(str(path))
        if path.is_file() and faiss.read_index(str(path), faiss.IO_FLAG_MMAP).ntotal == len(shard):
            reused += 1
        else:
            populated = faiss.clone_index(trained)
            step = 100_000
            for start in range(0, len(shard), step):
                block = _as_float32(shard[start:start + step])
                populated.add_with_ids(block, np.arange(offset + start, offset + start + len(block), dtype=np.int64))
            _atomic_write_index(populated, path)
            del populated
        offset += len(shard)
    seconds_add = time.perf_counter() - started

    started = time.perf_counter()
    merged = faiss.read_index(str(trained_path))
    ivfdata = folder / IVFDATA_NAME
    if ivfdata.exists():
        ivfdata.unlink()  # ours: rebuilt from the shard files every merge
    merge_ondisk(merged, shard_paths, str(ivfdata))
    _atomic_write_index(merged, folder / MERGED_NAME)
    seconds_merge = time.perf_counter() - started

    if ids is not None:
        write_items(folder, ids, hashes)
    bytes_on_disk = ivfdata.stat().st_size + (folder / MERGED_NAME).stat().st_size
    meta: dict[str, Any] = {
        "factory": factory, "dim": int(merged.d), "count": total, "shards": sizes,
        "bytes_on_disk": bytes_on_disk, "bytes_per_vector": bytes_on_disk / total,
        "items": ids is not None,
        "images_dir": str(Path(images_dir).resolve()) if images_dir is not None else None,
        "encoder": dict(encoder_info) if encoder_info is not None else None,
        "exact_vectors": _exact_files(shards, folder),
    }
    write_text_atomic(folder / META_NAME, json.dumps(meta, indent=2))
    return ShardedBuild(folder, total, len(shards), reused, seconds_train, seconds_add, seconds_merge, bytes_on_disk)


def _exact_files(shards: Sequence[np.ndarray], folder: Path) -> list[str] | None:
    """The .npy files behind memory-mapped shards (relative to ``folder`` when inside it), or None when any
    shard is an in-memory array (its vectors are gone after the build)."""
    files: list[str] = []
    for shard in shards:
        name = getattr(shard, "filename", None)
        if not isinstance(shard, np.memmap) or not name or not str(name).endswith(".npy"):
            return None
        path = Path(name).resolve()
        try:
            files.append(str(path.relative_to(folder.resolve())))
        except ValueError:
            files.append(str(path))
    return files


def open_exact_vectors(folder: str | Path, meta: Mapping[str, Any]) -> list[np.ndarray] | None:
    """The exact vector shards a sharded index recorded, memory-mapped; None when it recorded none."""
    files = meta.get("exact_vectors")
    if not files:
        return None
    shards = []
    for name in files:
        path = Path(folder) / name
        if not path.is_file():
            raise ShardedIndexError(f"{folder}: its exact vectors {path} are gone; put them back or rebuild")
        shards.append(np.load(path, mmap_mode="r"))
    return shards


class ShardedIndex:
    """A merged sharded index, searched with its inverted lists memory-mapped from disk."""

    def __init__(self, folder: str | Path, exact_shards: Sequence[np.ndarray] | None = None) -> None:
        import faiss

        self.folder = Path(folder)
        meta_path = self.folder / META_NAME
        if not meta_path.is_file():
            raise ShardedIndexError(f"{self.folder} holds no sharded index ({META_NAME} missing); build it first")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            count = int(self.meta["count"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ShardedIndexError(f"{meta_path} is damaged ({err}); rebuild the sharded index") from err
        try:
            # IO_FLAG_ONDISK_SAME_DIR: the .ivfdata is found next to the header and memory-mapped
            self.index = faiss.read_index(str(self.folder / MERGED_NAME), faiss.IO_FLAG_ONDISK_SAME_DIR)
        except RuntimeError as err:
            raise ShardedIndexError(
                f"{self.folder / MERGED_NAME} (or {IVFDATA_NAME} beside it) cannot be read; rebuild the sharded index"
            ) from err
        if self.index.ntotal != count:
            raise ShardedIndexError(
                f"{self.folder}: the merged index holds {self.index.ntotal} vectors but {META_NAME} says "
                f"{self.meta['count']}; rebuild it"
            )
        self.exact_shards = list(exact_shards) if exact_shards is not None else None
        if self.exact_shards is not None:
            self._starts = np.cumsum([0] + [len(s) for s in self.exact_shards])
            if self._starts[-1] != self.index.ntotal:
                raise ShardedIndexError("the exact vectors given for refine do not match the index's count")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_nprobe(self, nprobe: int) -> None:
        import faiss

        faiss.extract_index_ivf(self.index).nprobe = int(nprobe)

    def _exact_rows(self, rows: np.ndarray) -> np.ndarray:
        assert self.exact_shards is not None
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows), self.index.d), dtype=np.float32)
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            local = rows[mask] - self._starts[shard]
            order = np.argsort(local)  # sorted reads are kinder to a memory map
            picked = np.asarray(self.exact_shards[shard][local[order]], dtype=np.float32)
            block = np.empty_like(picked)
            block[order] = picked
            out[mask] = block
        return out

    def search(self, queries: np.ndarray, k: int, refine: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k). ``refine=R``: fetch R candidates by the compressed codes, re-score
        them with the exact vectors, keep the best k (needs ``exact_shards``)."""
        queries = _as_float32(np.atleast_2d(queries))
        if refine is None or refine <= k:
            return self.index.search(queries, k)
        if self.exact_shards is None:
            raise ShardedIndexError("refine needs the exact vectors: open the index with exact_shards=...")
        _, rows = self.index.search(queries, refine)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best = np.full((len(queries), k), -1, dtype=np.int64)
        for position, (query, row_list) in enumerate(zip(queries, rows)):
            valid = row_list[row_list >= 0]
            if not len(valid):
                continue
            exact = self._exact_rows(valid) @ query
            keep = np.argsort(-exact, kind="stable")[:k]
            scores[position, : len(keep)] = exact[keep]
            best[position, : len(keep)] = valid[keep]
        return scores, best


def exact_search_streaming(
    shards: Iterable[np.ndarray], queries: np.ndarray, k: int, block: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over shards read one block at a time (ground truth for recall)."""
    queries = _as_float32(np.atleast_2d(queries))
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for shard in shards:
        for start in range(0, len(shard), block):
            vectors = _as_float32(shard[start:start + block])
            scores = queries @ vectors.T
            take = min(k, scores.shape[1])
            top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
            merged_rows = np.concatenate([best_rows, top + offset + start], axis=1)
            order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(merged_scores, order, axis=1)
            best_rows = np.take_along_axis(merged_rows, order, axis=1)
        offset += len(shard)
    return best_scores, best_rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (both (n, k) row-id arrays)."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / truth.shape[1])
