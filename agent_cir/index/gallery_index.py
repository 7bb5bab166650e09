"""A gallery index on disk: embeddings (.npy), manifest (.jsonl), faiss index and metadata; incremental updates.

Layout of INDEX_DIR:
  embeddings.npy   float32 (count, dim), row i = the manifest entry with row == i (ok entries come first)
  manifest.jsonl   one entry per file: path (relative), size, mtime, sha256, status ok/skipped (+ reason)
  index.faiss      faiss.index_factory(dim, FACTORY, METRIC_INNER_PRODUCT), ids = rows
  meta.json        encoder info, weights, preprocessing, dim, count, agent_cir version, times, factory
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent_cir.encoders.base import Encoder, describe_encoder, encoder_identity
from agent_cir.errors import AgentCirError
from agent_cir.fusion import normalise, weighted_fusion
from agent_cir.hashing import content_hash
from agent_cir.index.decode import load_image
from agent_cir.index.loader import default_workers, iterate_batches
from agent_cir.index.manifest import MANIFEST_NAME, ManifestEntry, read_manifest, write_manifest
from agent_cir.index.scan import relative_files, scan_images
from agent_cir.types import Candidate

if TYPE_CHECKING:
    from agent_cir.config import EncoderConfig

META_NAME = "meta.json"
EMBEDDINGS_NAME = "embeddings.npy"
FAISS_NAME = "index.faiss"
FORMAT_VERSION = 1
DEFAULT_INDEX_TYPE = "Flat"


@dataclass
class BuildSummary:
    """What one ``GalleryIndex.build`` run did."""

    indexed: int = 0
    """Files encoded in this run."""
    reused: int = 0
    """Files whose embeddings were kept from the previous run (unchanged, or same content elsewhere)."""
    removed: int = 0
    """Entries of the previous run whose files are gone."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Bad files in the index now, by reason (including ones skipped in earlier runs and unchanged)."""
    total: int = 0
    """Images in the index after the run."""
    encode_seconds: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed,
            "reused": self.reused,
            "removed": self.removed,
            "skipped": dict(self.skipped),
            "skipped_total": self.skipped_total,
            "total": self.total,
            "encode_seconds": round(self.encode_seconds, 3),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "interrupted": self.interrupted,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _check_same_encoder(built_with: dict[str, Any], requested: dict[str, Any], index_dir: Path) -> None:
    if encoder_identity(built_with) == encoder_identity(requested):
        return
    differing = sorted(
        key
        for key in set(encoder_identity(built_with)) | set(encoder_identity(requested))
        if built_with.get(key) != requested.get(key)
    )
    raise AgentCirError(
        f"index {index_dir} was built with encoder {describe_encoder(built_with)} "
        f"(weights {built_with.get('weights')}), but {describe_encoder(requested)} "
        f"(weights {requested.get('weights')}) was requested (differs in: {', '.join(differing)}). "
        "Embeddings of different encoders cannot be mixed: use a new --out folder, or the same "
        "--model/--pretrained (and --backend) the index was built with."
    )


def _make_faiss_index(dim: int, factory: str) -> Any:
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise AgentCirError(
            f"--index-type {factory!r} is not a valid faiss index_factory string ({first_line}). "
            "Examples: Flat (exact, default), HNSW32, IVF256,Flat, IVF1024,PQ32"
        ) from None


def build_faiss_index(embeddings: np.ndarray, factory: str) -> Any:
    """faiss index over the rows (ids = row numbers), trained first when the factory needs it."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count, dim = embeddings.shape
    index = _make_faiss_index(dim, factory)
    if not index.is_trained:
        if count == 0:
            raise AgentCirError(f"--index-type {factory!r} needs training vectors, but the gallery has no images")
        try:
            index.train(embeddings)
        except RuntimeError as err:
            raise AgentCirError(
                f"--index-type {factory!r} could not be trained on {count} vectors "
                f"({' '.join(str(err).split())[-200:]}). Use fewer clusters / PQ centroids, or Flat for a "
                "gallery this small."
            ) from None
    if count:
        if factory.replace(" ", "").upper().startswith("IDMAP"):
            index.add_with_ids(embeddings, np.arange(count, dtype=np.int64))
        else:
            index.add(embeddings)
    _tune_search(index)
    return index


def _tune_search(index: Any) -> None:
    """IVF indexes probe one list by default, which loses most neighbours; probe a few more."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return
    ivf.nprobe = min(ivf.nlist, max(8, ivf.nlist // 16))


class GalleryIndex:
    """An indexed image folder. Build with ``GalleryIndex.build``, open with ``GalleryIndex.load``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META_NAME
        if not meta_path.is_file():
            raise AgentCirError(
                f"no gallery index in {self.directory} (missing {META_NAME}); build one with "
                f"`agent-cir index IMAGES_DIR --out {self.directory}`"
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise AgentCirError(f"{meta_path} is damaged ({err}); rebuild the index with a new --out") from None
        for name in (MANIFEST_NAME, EMBEDDINGS_NAME, FAISS_NAME):
            if not (self.directory / name).is_file():
                raise AgentCirError(f"index {self.directory} is incomplete: {name} is missing; re-run agent-cir index")
        self.entries: list[ManifestEntry] = read_manifest(self.directory / MANIFEST_NAME)
        self._ok = sorted((e for e in self.entries if e.status == "ok"), key=lambda e: e.row if e.row is not None else -1)
        self._embeddings: np.ndarray | None = None
        self._faiss: Any = None
        self.build_summary: BuildSummary | None = None
        if [e.row for e in self._ok] != list(range(len(self._ok))) or len(self._ok) != self.meta.get("count"):
            raise AgentCirError(
                f"index {self.directory} is inconsistent (manifest rows do not match meta.json count "
                f"{self.meta.get('count')}); rebuild it with a new --out"
            )
        self._hash_rows: dict[str, list[int]] = {}
        for entry in self._ok:
            self._hash_rows.setdefault(entry.hash, []).append(int(entry.row))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ opening and properties
    @classmethod
    def load(cls, directory: str | Path) -> GalleryIndex:
        return cls(directory)

    def __len__(self) -> int:
        return len(self._ok)

    @property
    def root(self) -> Path:
        """The index folder (alias of ``directory``)."""
        return self.directory

    @property
    def images_dir(self) -> Path:
        return Path(self.meta["images_dir"])

    @property
    def ids(self) -> list[str]:
        """Gallery ids (paths relative to the indexed folder), in row order."""
        return [e.path for e in self._ok]

    @property
    def paths(self) -> list[str]:
        """Absolute image paths, in row order."""
        root = self.images_dir
        return [str(root / e.path) for e in self._ok]

    @property
    def hashes(self) -> list[str]:
        return [e.hash for e in self._ok]

    @property
    def skipped(self) -> list[ManifestEntry]:
        return [e for e in self.entries if e.status == "skipped"]

    @property
    def embeddings(self) -> np.ndarray:
        """(count, dim) float32, memory-mapped read-only."""
        if self._embeddings is None:
            self._embeddings = np.load(self.directory / EMBEDDINGS_NAME, mmap_mode="r")
        return self._embeddings

    @property
    def encoder_info(self) -> dict[str, Any]:
        return dict(self.meta["encoder"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def faiss_index(self) -> Any:
        if self._faiss is None:
            import faiss

            self._faiss = faiss.read_index(str(self.directory / FAISS_NAME))
            _tune_search(self._faiss)
        return self._faiss

    def rows_of_hash(self, digest: str) -> list[int]:
        return list(self._hash_rows.get(digest, []))

    def load_encoder(self, device: str | None = None) -> Encoder:
        """The encoder this index was built with (same backend, model and weights)."""
        from agent_cir.encoders import create_encoder

        return create_encoder(encoder_config_from_meta(self.meta, device=device))

    def check_encoder(self, encoder: Encoder) -> None:
        """Raise a clear error when ``encoder`` is not the one the index was built with."""
        _check_same_encoder(self.encoder_info, encoder.info, self.directory)

    # ------------------------------------------------------------------ search
    def search_vectors(
        self, q: np.ndarray, k: int, exclude_hashes: Iterable[str] = ()
    ) -> list[Candidate] | list[list[Candidate]]:
        """Top-k gallery items by inner product. ``q`` (dim,) -> list[Candidate]; (n, dim) -> one list per row.

        Items whose content hash is in ``exclude_hashes`` are left out (e.g. the reference image itself);
        ranks are 1..k after exclusion.
        """
        q = np.asarray(q, dtype=np.float32)
        single = q.ndim == 1
        queries = np.ascontiguousarray(np.atleast_2d(q))
        if queries.shape[1] != self.dim:
            raise AgentCirError(
                f"query vectors have dimension {queries.shape[1]}, but index {self.directory} holds {self.dim}-d "
                f"embeddings of {describe_encoder(self.encoder_info)}; encode queries with that encoder"
            )
        excluded_rows = {row for digest in set(exclude_hashes) for row in self._hash_rows.get(digest, [])}
        results: list[list[Candidate]] = []
        if len(self) == 0 or k <= 0:
            results = [[] for _ in range(len(queries))]
        else:
            fetch = min(len(self), k + len(excluded_rows))
            scores, rows = self.faiss_index.search(queries, fetch)
            ids, root = self.ids, self.images_dir
            for score_row, id_row in zip(scores, rows):
                ranking: list[Candidate] = []
                for score, row in zip(score_row, id_row):
                    if row < 0 or int(row) in excluded_rows:
                        continue
                    ranking.append(
                        Candidate(id=ids[row], score=float(score), path=str(root / ids[row]), rank=len(ranking) + 1)
                    )
                    if len(ranking) == k:
                        break
                results.append(ranking)
        return results[0] if single else results

    def search(
        self,
        encoder: Encoder,
        image: str | Path | None = None,
        text: str | None = None,
        mode: str = "fusion",
        alpha: float = 0.8,
        k: int = 50,
        exclude_reference: bool = True,
    ) -> list[Candidate]:
        """Composed query without an LLM: 'text' (modification text only), 'image' (reference only), or
        'fusion': q = normalise((1 - alpha) * img + alpha * txt). The reference image is left out of its
        own results when its content is in the gallery (``exclude_reference``)."""
        if mode not in ("text", "image", "fusion"):
            raise AgentCirError(f"mode must be text, image or fusion, got {mode!r}")
        if mode in ("image", "fusion") and image is None:
            raise AgentCirError(f"mode {mode!r} needs a reference image (--image)")
        if mode in ("text", "fusion") and not (text and text.strip()):
            raise AgentCirError(f"mode {mode!r} needs a modification text (--text)")
        if not 0.0 <= alpha <= 1.0:
            raise AgentCirError(f"alpha must be between 0 and 1, got {alpha}")
        self.check_encoder(encoder)
        image_vector = text_vector = None
        if image is not None and mode != "text":
            image_vector = encode_image_file(encoder, image)
        if mode != "image":
            text_vector = encoder.encode_texts([text])[0]  # type: ignore[list-item]
        if mode == "fusion":
            query = weighted_fusion(image_vector, text_vector, alpha)  # type: ignore[arg-type]
        else:
            query = normalise(image_vector if mode == "image" else text_vector)  # type: ignore[arg-type]
        exclude = [content_hash(image)] if (exclude_reference and image is not None) else []
        return self.search_vectors(query, k, exclude_hashes=exclude)  # type: ignore[return-value]

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        images_dir: str | Path,
        out_dir: str | Path,
        encoder: Encoder,
        batch_size: int | None = None,
        workers: int | None = None,
        index_type: str = DEFAULT_INDEX_TYPE,
        files: Sequence[str | Path] | None = None,
        progress: bool = True,
    ) -> GalleryIndex:
        """Index (or update the index of) ``images_dir`` into ``out_dir``; returns the loaded index, whose
        ``build_summary`` says what happened. Only new or changed files are encoded; removed ones are dropped.

        ``files``: index only these images (absolute or relative to ``images_dir``), e.g. a benchmark split.
        An interrupted run (Ctrl-C) still writes everything encoded so far, then re-raises.
        """
        from agent_cir import __version__

        started = time.perf_counter()
        if "image" not in getattr(encoder, "modalities", ("image", "text")):
            raise AgentCirError(
                f"encoder {describe_encoder(encoder.info)} encodes text only; indexing images needs an image-text "
                "encoder (backend open_clip or hf)"
            )
        root = Path(images_dir).expanduser().resolve()
        out = Path(out_dir).expanduser()
        if not root.is_dir():
            raise AgentCirError(f"images folder not found: {root}")
        batch_size = batch_size or getattr(encoder, "batch_size", 64)
        workers = default_workers() if workers is None else workers
        dim = int(encoder.dim)
        _make_faiss_index(dim, index_type)  # fail on a bad factory string before any encoding

        previous: GalleryIndex | None = None
        if (out / META_NAME).is_file():
            previous = cls(out)
            _check_same_encoder(previous.encoder_info, encoder.info, out)
            if Path(previous.meta["images_dir"]) != root:
                raise AgentCirError(
                    f"index {out} was built from {previous.meta['images_dir']}, not {root}; use a new --out"
                )
        rels = relative_files(root, files) if files is not None else scan_images(root)
        if not rels:
            raise AgentCirError(
                f"no images found in {root} (looked recursively for .jpg .jpeg .png .webp .bmp .gif files)"
            )

        summary = BuildSummary()
        old_by_path = {e.path: e for e in previous.entries} if previous else {}
        summary.removed = len(set(old_by_path) - set(rels))
        old_embeddings = previous.embeddings if previous else None
        reusable_rows = dict(previous._hash_rows) if previous else {}

        # Decide per file: reuse (same size+mtime, or same content hash) or encode.
        entries: dict[str, ManifestEntry] = {}
        source_row: dict[str, int] = {}
        to_encode: list[ManifestEntry] = []
        for rel in rels:
            stat = (root / rel).stat()
            old = old_by_path.get(rel)
            if old is not None and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns:
                entries[rel] = old
                if old.status == "ok":
                    source_row[rel] = int(old.row)  # type: ignore[arg-type]
                    summary.reused += 1
                continue
            entry = ManifestEntry(
                path=rel, size=stat.st_size, mtime=stat.st_mtime, mtime_ns=stat.st_mtime_ns, hash=content_hash(root / rel)
            )
            entries[rel] = entry
            if entry.hash in reusable_rows:
                source_row[rel] = reusable_rows[entry.hash][0]
                summary.reused += 1
            elif old is not None and old.status == "skipped" and old.hash == entry.hash:
                entry.status, entry.reason, entry.detail = "skipped", old.reason, old.detail
            else:
                to_encode.append(entry)

        new_vectors: dict[str, np.ndarray] = {}
        encode_started = time.perf_counter()
        try:
            _encode_entries(root, to_encode, encoder, batch_size, workers, progress, new_vectors)
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.encode_seconds = time.perf_counter() - encode_started
        if summary.interrupted:
            # Files not reached are left out of this index; the next run encodes them.
            for entry in to_encode:
                if entry.status == "ok" and entry.path not in new_vectors:
                    entries.pop(entry.path, None)
        summary.indexed = len(new_vectors)

        ok = sorted((e for e in entries.values() if e.status == "ok"), key=lambda e: e.path)
        skipped = sorted((e for e in entries.values() if e.status == "skipped"), key=lambda e: e.path)
        matrix = np.zeros((len(ok), dim), dtype=np.float32)
        for row, entry in enumerate(ok):
            if entry.path in new_vectors:
                matrix[row] = new_vectors[entry.path]
            else:
                matrix[row] = old_embeddings[source_row[entry.path]]  # type: ignore[index]
        final_entries = []
        for row, entry in enumerate(ok):
            final_entries.append(
                ManifestEntry(entry.path, entry.size, entry.mtime, entry.mtime_ns, entry.hash, "ok", row)
            )
        for entry in skipped:
            final_entries.append(
                ManifestEntry(
                    entry.path, entry.size, entry.mtime, entry.mtime_ns, entry.hash, "skipped", None,
                    entry.reason, entry.detail,
                )
            )
        summary.skipped = dict(sorted(Counter(e.reason or "unknown" for e in skipped).items()))
        summary.total = len(ok)

        faiss_index = build_faiss_index(matrix, index_type)
        out.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            previous._embeddings = None  # release the memory map before replacing the file
            old_embeddings = None
        _save_npy(out / EMBEDDINGS_NAME, matrix)
        import faiss

        faiss.write_index(faiss_index, str(out / (FAISS_NAME + ".tmp")))
        os.replace(out / (FAISS_NAME + ".tmp"), out / FAISS_NAME)
        write_manifest(out / MANIFEST_NAME, final_entries)
        info = dict(encoder.info)
        meta = {
            "format_version": FORMAT_VERSION,
            "agent_cir_version": __version__,
            "created": previous.meta.get("created", _now()) if previous else _now(),
            "updated": _now(),
            "images_dir": str(root),
            "encoder": info,
            "weights": info.get("weights"),
            "preprocess": info.get("preprocess"),
            "dim": dim,
            "count": len(ok),
            "skipped": summary.skipped_total,
            "index_factory": index_type,
            "metric": "inner_product",
            "files": {"embeddings": EMBEDDINGS_NAME, "manifest": MANIFEST_NAME, "faiss": FAISS_NAME},
            "last_build": summary.to_dict(),
        }
        summary.seconds = time.perf_counter() - started
        meta["last_build"] = summary.to_dict()
        _write_json(out / META_NAME, meta)
        index = cls(out)
        index.build_summary = summary
        if summary.interrupted:
            raise KeyboardInterrupt
        return index


def _save_npy(path: Path, matrix: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, matrix)
    os.replace(tmp, path)


def _encode_entries(
    root: Path,
    entries: list[ManifestEntry],
    encoder: Encoder,
    batch_size: int,
    workers: int,
    progress: bool,
    out: dict[str, np.ndarray],
) -> None:
    """Encode ``entries`` into ``out`` (path -> vector); bad files get status 'skipped' and a reason."""
    if not entries:
        return
    from tqdm.auto import tqdm

    paths = [str(root / e.path) for e in entries]
    workers = min(workers, max(1, (len(paths) + batch_size - 1) // batch_size)) if workers > 0 else 0
    with tqdm(total=len(paths), unit="img", desc="encoding", disable=not progress, dynamic_ncols=True) as bar:
        for batch in iterate_batches(paths, encoder.preprocess, batch_size, workers):
            for position, reason, detail in batch.failures:
                entry = entries[position]
                entry.status, entry.reason, entry.detail = "skipped", reason, detail
            if batch.pixels is not None:
                vectors = encoder.encode_images(batch.pixels, batch_size=batch_size)
                for position, vector in zip(batch.positions, vectors):
                    out[entries[position].path] = vector
            bar.update(len(batch.positions) + len(batch.failures))


def encode_image_file(encoder: Encoder, image: str | Path) -> np.ndarray:
    """Encode one image file exactly as the indexer does (same decoding); raises AgentCirError if unusable."""
    from agent_cir.index.decode import BadImageError

    if not Path(image).is_file():
        raise AgentCirError(f"reference image not found: {image}")
    try:
        picture = load_image(image)
    except BadImageError as err:
        raise AgentCirError(f"reference image {image} cannot be used: {err}") from None
    return encoder.encode_images([picture])[0]


def encoder_config_from_meta(meta: dict[str, Any], device: str | None = None) -> EncoderConfig:
    """The EncoderConfig that rebuilds the encoder an index was made with (``meta`` = meta.json contents)."""
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders.preprocessing import DEFAULT_TARGET_RATIO, preprocessing_of

    info = meta.get("encoder", meta)
    try:
        backend, model = info["backend"], info["model"]
    except KeyError:
        raise AgentCirError("index metadata has no encoder backend/model; rebuild the index") from None
    method, ratio = preprocessing_of(info)
    return EncoderConfig(
        backend=backend,
        model=model,
        pretrained=info.get("pretrained"),
        precision=info.get("precision", "fp32"),
        device=device or info.get("device", "cpu"),
        preprocess=method or "center_crop",  # type: ignore[arg-type]
        target_ratio=ratio or DEFAULT_TARGET_RATIO,
    )
