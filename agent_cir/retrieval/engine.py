"""One retrieval engine over faiss: every ranking of a RetrievalGallery is computed here.

Two kinds of structure, chosen per search:
- plain image retrieval searches the gallery index's own faiss structure (whatever ``index_factory``
  built: Flat, HNSW, IVF-PQ...), with its nprobe / efSearch settings;
- caption galleries and image+caption mixes are linear in the query, so they are one exact inner-product
  search over composite item vectors (``RetrievalGallery.composite_vectors``) in a Flat index built once per
  gallery composition and cached.
Each call searches all queries of a batch in one faiss call. Exclusions (every copy of a reference) are
handled by over-fetching and filtering, with a guarantee of k results: queries left short are searched
again with a larger fetch, and as a last resort (an ANN index returning fewer neighbours than asked) scored
exactly over the stored vectors. Per-query candidate restrictions (GeneCIS's 15) are scored exactly over the
stored vectors of those candidates only. No per-query set over the whole gallery is ever built.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent_cir.errors import AgentCirError
from agent_cir.retrieval.ranking import Ranking


@dataclass
class _Structure:
    """A searchable faiss index plus how its rows map to gallery positions."""

    index: Any
    vectors: Any
    """Exact item vectors in gallery-position order (used for restriction and the exact fallback): an array,
    or a row source with ``shape``, ``rows[array]`` and ``scores(query)`` (a sharded index's exact vectors)."""
    row_to_position: np.ndarray | None
    """faiss row -> gallery position (-1: not in this gallery); None when rows are positions."""
    description: str
    unmapped_rows: int = 0
    tuned: Any = None
    """The faiss index that search-time settings (nprobe, efSearch) apply to, when ``index`` wraps it (a
    sharded index searched with exact re-scoring); None: ``index`` itself."""


def _faiss() -> Any:
    import faiss

    return faiss


def apply_search_settings(index: Any, nprobe: int | None = None, ef_search: int | None = None,
                          extra: dict[str, float] | None = None) -> dict[str, float]:
    """Set faiss search-time parameters that apply to ``index`` (through faiss.ParameterSpace, which reaches
    inside IndexPreTransform / IndexRefine wrappers). Returns the settings that were applied."""
    faiss = _faiss()
    wanted: dict[str, float] = {}
    if nprobe is not None:
        wanted["nprobe"] = nprobe
    if ef_search is not None:
        wanted["efSearch"] = ef_search
    wanted.update(extra or {})
    applied: dict[str, float] = {}
    space = faiss.ParameterSpace()
    for name, value in wanted.items():
        if name == "nprobe":
            try:
                ivf = faiss.extract_index_ivf(index)
            except (RuntimeError, AttributeError):
                continue  # not an IVF index: nprobe has no meaning here
            ivf.nprobe = int(min(value, ivf.nlist))
            applied[name] = ivf.nprobe
            continue
        if name == "efSearch" and not _has_hnsw(index):
            continue
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError as err:
            raise AgentCirError(
                f"faiss search setting {name}={value} does not apply to this index "
                f"({' '.join(str(err).split())[-160:]}); remove it from retrieve.faiss_params"
            ) from err
        applied[name] = value
    return applied


def _has_hnsw(index: Any) -> bool:
    faiss = _faiss()
    current = index
    for _ in range(4):
        current = faiss.downcast_index(current)
        if hasattr(current, "hnsw"):
            return True
        inner = getattr(current, "index", None) or getattr(current, "base_index", None)
        if inner is None:
            return False
        current = inner
    return False


def describe_index(index: Any) -> str:
    faiss = _faiss()
    return type(faiss.downcast_index(index)).__name__


class SearchEngine:
    """Batched top-k search over one RetrievalGallery (see the module docstring)."""

    def __init__(self, gallery: Any) -> None:
        self.gallery = gallery
        self._lock = threading.Lock()
        self._structures: dict[tuple[Any, ...], _Structure] = {}
        self.settings: dict[str, float] = {}

    # ------------------------------------------------------------------ configuration
    def configure(self, nprobe: int | None = None, ef_search: int | None = None,
                  faiss_params: dict[str, float] | None = None) -> dict[str, float]:
        """Search-time settings of the image index (nprobe for IVF, efSearch for HNSW, any ParameterSpace key)."""
        if nprobe is None and ef_search is None and not faiss_params:
            return self.settings
        structure = self._image_structure()
        tuned = structure.tuned if structure.tuned is not None else structure.index
        self.settings = apply_search_settings(tuned, nprobe, ef_search, faiss_params)
        return self.settings

    # ------------------------------------------------------------------ structures
    def _image_structure(self) -> _Structure:
        with self._lock:
            cached = self._structures.get(("image",))
            if cached is not None:
                return cached
            gallery = self.gallery
            if not gallery.has_images:
                raise AgentCirError("this gallery has no image embeddings to search")
            vectors = gallery.image_embeddings
            if isinstance(vectors, np.ndarray) or not hasattr(vectors, "scores"):
                vectors = np.asarray(vectors, dtype=np.float32)
            # else: a row source over data that does not fit in RAM (a sharded index's exact vectors)
            structure = self._index_structure(vectors)
            if structure is None:
                index = _faiss().IndexFlatIP(vectors.shape[1])
                index.add(np.ascontiguousarray(vectors))
                structure = _Structure(index, vectors, None, "Flat (exact, over the gallery's image embeddings)")
            self._structures[("image",)] = structure
            return structure

    def _index_structure(self, vectors: np.ndarray) -> _Structure | None:
        """The gallery index's own faiss structure, when its rows can be mapped to gallery positions."""
        gallery = self.gallery
        index = getattr(gallery, "index", None)
        if index is None or not hasattr(index, "faiss_index"):
            return None
        factory = str(getattr(index, "meta", {}).get("index_factory", "?"))
        shared = index.paths is gallery.paths  # one table (a sharded index): rows are positions, no 10M compare
        index_paths = [] if shared else [str(p) for p in index.paths]
        if shared or index_paths == [str(p) for p in gallery.paths]:
            mapping = None
            unmapped = 0
        else:
            row_of_path = {path: row for row, path in enumerate(index_paths)}
            rows = [row_of_path.get(str(path)) for path in gallery.paths]
            if any(row is None for row in rows):
                return None  # gallery items the index does not hold: search the gallery's own vectors
            mapping = np.full(len(index_paths), -1, dtype=np.int64)
            mapping[np.asarray(rows, dtype=np.int64)] = np.arange(len(rows), dtype=np.int64)
            unmapped = int((mapping < 0).sum())
        faiss_index = index.faiss_index
        if faiss_index.d != vectors.shape[1]:
            return None
        searcher = getattr(index, "searcher", None)  # e.g. codes + exact re-scoring of a sharded index
        if searcher is not None:
            return _Structure(searcher, vectors, mapping, f"index {factory} ({describe_index(faiss_index)}, "
                              f"{searcher.description})", unmapped, tuned=faiss_index)
        return _Structure(faiss_index, vectors, mapping, f"index {factory} ({describe_index(faiss_index)})", unmapped)

    def _composite_structure(self, caption_weight: float, paired_slots: int | None) -> _Structure:
        key = ("composite", round(float(caption_weight), 9), paired_slots)
        with self._lock:
            cached = self._structures.get(key)
            if cached is not None:
                return cached
            vectors = self.gallery.composite_vectors(caption_weight, paired_slots)
            index = _faiss().IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            what = "paired captions" if paired_slots else "image+caption mix" if self.gallery.has_images and caption_weight < 1 else "captions"
            structure = _Structure(index, vectors, None, f"Flat (exact, composite vectors: {what})")
            self._structures[key] = structure
            return structure

    def structure_for(self, caption_weight: float = 0.0, paired_slots: int | None = None) -> _Structure:
        gallery = self.gallery
        if paired_slots is None and gallery.has_images and (caption_weight <= 0.0 or not gallery.has_captions):
            return self._image_structure()
        if not gallery.has_captions:
            raise AgentCirError("the gallery has neither image embeddings nor captions to score")
        return self._composite_structure(caption_weight, paired_slots)

    def describe(self, caption_weight: float = 0.0, paired_slots: int | None = None) -> str:
        return self.structure_for(caption_weight, paired_slots).description

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        caption_weight: float = 0.0,
        paired_slots: int | None = None,
        exclude: Sequence[Sequence[int]] | None = None,
        restrict: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Ranking]:
        """The top-k ``Ranking`` of each query row (queries laid out as ``composite_query`` builds them).

        ``exclude[i]``: gallery positions query i must never return. ``restrict[i]``: when not None, the only
        positions query i may return (scored exactly). Ranks are 1..k; ties are broken by gallery position.
        """
        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        count = len(queries)
        exclude = list(exclude) if exclude is not None else [[] for _ in range(count)]
        restrict = list(restrict) if restrict is not None else [None] * count
        if len(exclude) != count or len(restrict) != count:
            raise ValueError("exclude and restrict need one entry per query")
        structure = self.structure_for(caption_weight, paired_slots)
        if queries.shape[1] != structure.vectors.shape[1]:
            raise AgentCirError(
                f"query vectors have dimension {queries.shape[1]}, but the gallery's search vectors have "
                f"{structure.vectors.shape[1]}; encode queries with the gallery's encoder"
            )
        results: list[Ranking | None] = [None] * count
        free = [i for i in range(count) if restrict[i] is None]
        for i in range(count):
            if restrict[i] is not None:
                results[i] = self._restricted(structure, queries[i], k, restrict[i], exclude[i])
        if free and k > 0 and len(self.gallery):
            for i, ranking in zip(free, self._search_free(structure, queries[free], k, [exclude[i] for i in free])):
                results[i] = ranking
        return [r if r is not None else self._empty() for r in results]

    def _empty(self) -> Ranking:
        gallery = self.gallery
        return Ranking.from_arrays(np.zeros(0, np.int64), np.zeros(0), gallery.ids, gallery.paths, gallery.position)

    def _candidates(self, positions: np.ndarray, scores: np.ndarray, k: int) -> Ranking:
        # Column-wise: whole-gallery rankings (k = gallery size in benchmarks) never become objects here.
        order = np.lexsort((positions, -scores.astype(np.float64)))[:k]
        gallery = self.gallery
        return Ranking.from_arrays(positions[order], scores[order], gallery.ids, gallery.paths, gallery.position)

    def _restricted(self, structure: _Structure, query: np.ndarray, k: int, allowed: Sequence[int],
                    excluded: Sequence[int]) -> Ranking:
        positions = np.unique(np.asarray([p for p in allowed if p is not None], dtype=np.int64))
        if len(excluded):
            positions = positions[~np.isin(positions, np.asarray(list(excluded), dtype=np.int64))]
        if len(positions) == 0 or k <= 0:
            return self._empty()
        scores = np.asarray(structure.vectors[positions], dtype=np.float32) @ query
        return self._candidates(positions, scores, k)

    def _search_free(self, structure: _Structure, queries: np.ndarray, k: int,
                     excluded: list[Sequence[int]]) -> list[Ranking]:
        total = int(structure.index.ntotal)
        size = len(self.gallery)
        excluded_arrays = [np.unique(np.asarray(list(e), dtype=np.int64)) for e in excluded]
        wanted = [min(k, size - int(((e >= 0) & (e < size)).sum())) for e in excluded_arrays]
        most_excluded = max((len(e) for e in excluded_arrays), default=0)
        fetch = min(total, k + most_excluded + structure.unmapped_rows)
        pending = list(range(len(queries)))
        rankings: list[Ranking] = [self._empty() for _ in queries]
        while pending:
            scores, rows = structure.index.search(np.ascontiguousarray(queries[pending]), fetch)
            short: list[int] = []
            for local, i in enumerate(pending):
                row_ids, row_scores = rows[local], scores[local]
                keep = row_ids >= 0
                positions = row_ids[keep]
                kept_scores = row_scores[keep]
                if structure.row_to_position is not None:
                    positions = structure.row_to_position[positions]
                    mapped = positions >= 0
                    positions, kept_scores = positions[mapped], kept_scores[mapped]
                if len(excluded_arrays[i]):
                    allowed = ~np.isin(positions, excluded_arrays[i])
                    positions, kept_scores = positions[allowed], kept_scores[allowed]
                if len(positions) >= wanted[i]:
                    rankings[i] = self._candidates(positions, kept_scores, k)
                elif fetch >= total:
                    rankings[i] = self._exact(structure, queries[i], k, excluded_arrays[i])
                else:
                    short.append(i)
            pending = short
            fetch = min(total, fetch * 2)
        return rankings

    def _exact(self, structure: _Structure, query: np.ndarray, k: int, excluded: np.ndarray) -> Ranking:
        """Last resort for a query the ANN structure left short of k results: an exact scan."""
        vectors = structure.vectors
        exact = vectors @ query if isinstance(vectors, np.ndarray) else vectors.scores(query)
        scores = np.asarray(exact, dtype=np.float32)
        positions = np.arange(len(scores), dtype=np.int64)
        if len(excluded):
            keep = ~np.isin(positions, excluded)
            positions, scores = positions[keep], scores[keep]
        if len(positions) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            positions, scores = positions[top], scores[top]
        return self._candidates(positions, scores, k)


def composite_query(
    image_query: np.ndarray | None,
    caption_queries: np.ndarray | None,
    caption_weight: float,
    has_images: bool,
) -> np.ndarray:
    """The query row matching ``composite_vectors(caption_weight, paired_slots=J)``:
    [(1 - g) q_img, g/J q_1, ..., g/J q_J] (the image part only when the gallery has images and g < 1).

    Its inner product with [image_i, caption_i1, ..., caption_iJ] is
    (1 - g) <q_img, image_i> + g * mean_j <q_j, caption_ij>, WeiMoCIR's score.
    """
    parts: list[np.ndarray] = []
    if has_images and caption_weight < 1.0:
        if image_query is None:
            raise ValueError("the image part of a paired query is missing")
        parts.append((1.0 - caption_weight) * np.asarray(image_query, dtype=np.float32))
    if caption_queries is not None:
        slots = np.atleast_2d(np.asarray(caption_queries, dtype=np.float32))
        parts.append((caption_weight / len(slots)) * slots.reshape(-1))
    return np.concatenate(parts).astype(np.float32)
