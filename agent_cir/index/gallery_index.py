"""A gallery index on disk, opened for search: ids, paths, hashes, embeddings and the faiss index of the
current verified generation. The pieces live next to this file, one job each:

  scan.py        find and classify gallery files (regular files only, symlink policy)
  plan.py        diff against the previous generation: encode / reuse / skip / drop
  encode.py      encoding engines (``local_engine``; the engine interface other engines implement)
  checkpoint.py  durable per-batch checkpoints of a build in progress
  faiss_io.py    faiss index construction and search tuning
  generation.py  on-disk layout, atomic publish, verification on load (layout described there)
  lock.py        one writer per index folder
  build.py       the build itself, tying the above together
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent_cir.encoders.base import Encoder, describe_encoder
from agent_cir.errors import AgentCirError
from agent_cir.index.build import BuildSummary, check_same_encoder
from agent_cir.index.encode import EncodeEngine, encode_image_file
from agent_cir.index.encoder_meta import encoder_config_from_meta
from agent_cir.index.faiss_io import DEFAULT_INDEX_TYPE, tune_search
from agent_cir.index.files import read_hash
from agent_cir.index.generation import Generation, open_generation
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.reasons import BadImageError
from agent_cir.types import Candidate

if TYPE_CHECKING:
    from agent_cir.config import EncoderConfig

__all__ = ["DEFAULT_INDEX_TYPE", "BuildSummary", "GalleryIndex", "encode_image_file", "encoder_config_from_meta"]


class GalleryIndex:
    """An indexed image folder. Build with ``GalleryIndex.build``, open with ``GalleryIndex.load``.

    ``directory`` is the index folder (``--out``); the files read are those of its current generation
    (``generation``, in ``generation_dir``), verified on open (``generation.open_generation``).
    """

    def __init__(self, directory: str | Path, verify: bool | None = None) -> None:
        self.directory = Path(directory)
        current: Generation = open_generation(self.directory, verify=verify)
        self._generation = current
        self.meta: dict[str, Any] = current.meta
        self.entries: list[ManifestEntry] = current.entries
        self._ok = sorted((e for e in self.entries if e.status == "ok"), key=lambda e: int(e.row))  # type: ignore[arg-type]
        self._embeddings: np.ndarray = current.embeddings
        self._faiss: Any = None
        self.build_summary: BuildSummary | None = None
        self._hash_rows: dict[str, list[int]] = {}
        for entry in self._ok:
            self._hash_rows.setdefault(entry.hash, []).append(int(entry.row))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ opening and properties
    @classmethod
    def load(cls, directory: str | Path, verify: bool | None = None) -> GalleryIndex:
        """Open the current generation of ``directory``. ``verify``: True checks every file's sha256,
        False sizes and counts only, None (default) the full check for generations up to 512 MiB."""
        return cls(directory, verify=verify)

    def __len__(self) -> int:
        return len(self._ok)

    @property
    def root(self) -> Path:
        """The index folder (alias of ``directory``)."""
        return self.directory

    @property
    def generation(self) -> str:
        """Name of the generation in use (``gen-<id>``, or ``legacy`` for a pre-generation flat folder)."""
        return self._generation.name

    @property
    def generation_dir(self) -> Path:
        """The folder holding this generation's meta.json, manifest.jsonl, embeddings.npy and index.faiss."""
        return self._generation.directory

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
        return self._embeddings

    @property
    def encoder_info(self) -> dict[str, Any]:
        return dict(self.meta["encoder"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def faiss_index(self) -> Any:
        """The faiss index (read on first use, its ntotal and dimension checked against the embeddings)."""
        if self._faiss is None:
            self._faiss = self._generation.read_faiss()
            tune_search(self._faiss)
        return self._faiss

    def rows_of_hash(self, digest: str) -> list[int]:
        return list(self._hash_rows.get(digest, []))

    def load_encoder(self, device: str | None = None) -> Encoder:
        """The encoder this index was built with (same backend, model and weights)."""
        from agent_cir.encoders import create_encoder

        return create_encoder(encoder_config_from_meta(self.meta, device=device))

    def check_encoder(self, encoder: Encoder) -> None:
        """Raise a clear error when ``encoder`` is not the one the index was built with."""
        check_same_encoder(self.encoder_info, encoder.info, self.directory)

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
        follow_symlinks: bool = False,
        wait: bool = False,
        engine: str | EncodeEngine = "local",
        engine_options: dict[str, Any] | None = None,
        twins: Any = None,
    ) -> GalleryIndex:
        """Index (or update the index of) ``images_dir`` into ``out_dir``; returns the loaded index, whose
        ``build_summary`` says what happened. Only new or changed files are encoded; removed ones are dropped.

        ``files``: index only these images (absolute or relative to ``images_dir``), e.g. a benchmark split.
        ``follow_symlinks``: also index file symlinks whose target lies outside ``images_dir``.
        ``wait``: when another process is writing ``out_dir``, wait for it instead of failing at once.
        ``engine``: an ``ENGINES`` name or an ``EncodeEngine`` (see encode.py); ``engine_options`` its settings.
        ``twins``: an ``agent_cir.index.twins.TwinsRequest``: draw the synthetic twins (Paracosm) right after.
        The new index is published atomically; a killed run keeps its finished batches for the next run, and
        an interrupted one (Ctrl-C) publishes everything encoded so far, then re-raises.
        """
        from agent_cir.index.build import build_index

        return build_index(
            cls, images_dir, out_dir, encoder, batch_size=batch_size, workers=workers, index_type=index_type,
            files=files, progress=progress, follow_symlinks=follow_symlinks, wait=wait, engine=engine,
            engine_options=engine_options, twins=twins,
        )


def reference_hash(image: str | Path) -> str:
    """Content hash of a reference image (regular files only), for excluding its copies from results."""
    try:
        return read_hash(image)
    except BadImageError as err:
        raise AgentCirError(f"reference image {image} cannot be used: {err}") from err


