"""What the retrieve stage scores against: image embeddings and/or gallery captions, aligned by id.

score(q, i) = (1 - g) * cos(q, image_i) + g * mean_j cos(q, caption_ij)

With g = 1 no image embeddings are needed (caption-only gallery, e.g. the CIRR text surrogate with a
text-only encoder); with no captions g is 0 and scoring is the plain image index. The score is linear in
q, so the search runs as one inner-product search over composite item vectors
(``composite_vectors``); ``agent_cir.retrieval.SearchEngine`` does the searching.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.errors import AgentCirError
from agent_cir.fusion import normalise
from agent_cir.hashing import stable_hash
from agent_cir.types import Candidate


class GalleryError(AgentCirError):
    """The gallery (index folder or captions file) cannot be used as asked."""


def captions_of(source: Mapping[str, Any] | Callable[[str], Any] | None, gallery_id: str,
                limit: int | None = None) -> list[str]:
    """The non-blank captions of ``gallery_id`` in a caption source (a mapping id -> caption(s), or a function
    of the id), at most ``limit``; [] when it has none. What the judge's caption strip and the verifier read."""
    if source is None:
        return []
    value = source(gallery_id) if callable(source) else source.get(gallery_id)
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v) for v in values if str(v).strip()][:limit]


def load_gallery_captions(source: str | Path | Mapping[str, Any]) -> dict[str, list[str]]:
    """Read gallery captions: a JSON object ``{id: caption | [captions]}`` or a list of
    ``{"candidate"|"id": id, "captions"|"caption": ...}`` records. Empty captions are dropped."""
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        where = "<captions dict>"
    else:
        where = str(source)
        path = Path(source).expanduser()
        if not path.is_file():
            raise GalleryError(f"gallery captions file {path} does not exist; pass the JSON of id -> captions")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GalleryError(f"gallery captions file {path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(raw, Mapping):
        pairs = raw.items()
    elif isinstance(raw, list):
        pairs = []
        for position, record in enumerate(raw):
            if not isinstance(record, Mapping):
                raise GalleryError(f"gallery captions {where}: entry {position} is not an object")
            key = record.get("candidate", record.get("id", record.get("image")))
            value = record.get("captions", record.get("caption"))
            if key is None or value is None:
                raise GalleryError(
                    f"gallery captions {where}: entry {position} needs an id ('candidate' or 'id') and 'captions'"
                )
            pairs.append((key, value))
    else:
        raise GalleryError(f"gallery captions {where}: expected an object or a list, got {type(raw).__name__}")
    captions: dict[str, list[str]] = {}
    for key, value in pairs:
        texts = [value] if isinstance(value, str) else list(value)
        texts = [str(t).strip() for t in texts if str(t).strip()]
        if texts:
            captions.setdefault(str(key), []).extend(texts)
    return captions


def _embedding_cache_dir() -> Path:
    root = os.environ.get("AGENT_CIR_EMBED_CACHE")
    if root:
        return Path(root)
    cache_file = os.environ.get("AGENT_CIR_CACHE")
    if cache_file:
        return Path(cache_file).parent / "embeddings"
    return Path.home() / ".cache" / "agent_cir" / "embeddings"


def embed_texts_cached(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """Text embeddings, cached on disk by encoder identity + texts (gallery captions are re-used across runs)."""
    key = stable_hash({"encoder": encoder.info, "texts": list(texts)})
    path = _embedding_cache_dir() / f"{key}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            return cached
    vectors = normalise(np.asarray(encoder.encode_texts(list(texts)), dtype=np.float32)) if texts else np.zeros(
        (0, int(encoder.dim)), dtype=np.float32
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors


@dataclass
class RetrievalGallery:
    ids: list[str]
    paths: list[str | None]
    hashes: list[str | None]
    image_embeddings: np.ndarray | None = None
    caption_embeddings: np.ndarray | None = None
    caption_owner: np.ndarray | None = None
    """For each caption row, the gallery position it belongs to."""
    captions: dict[str, list[str]] = field(default_factory=dict)
    encoder_info: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    index: Any = None
    """The GalleryIndex this gallery came from, when it came from one (its faiss structure is searched)."""
    caption_slot: np.ndarray | None = None
    """For each caption row, its order j among its item's captions (0-based): WeiMoCIR pairs caption j with j."""
    lookup: Any = None
    """Answers ``position(id)`` and ``positions_of_hash(hash)`` in place of in-memory dicts (a sharded index's
    memory-mapped item table: 10M ids never become a dict). None: dicts built from ``ids`` and ``hashes``."""

    def __post_init__(self) -> None:
        self._position: dict[str, int] = {}
        self._by_hash: dict[str, list[int]] = {}
        if self.lookup is None:
            self._position = {gallery_id: i for i, gallery_id in enumerate(self.ids)}
            for position, digest in enumerate(self.hashes):
                if digest:
                    self._by_hash.setdefault(digest, []).append(position)
        self._engine: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_images(self) -> bool:
        return self.image_embeddings is not None

    @property
    def has_captions(self) -> bool:
        return self.caption_embeddings is not None and len(self.caption_embeddings) > 0

    def position(self, gallery_id: str) -> int | None:
        if self.lookup is not None:
            return self.lookup.position(gallery_id)
        return self._position.get(gallery_id)

    def positions_of_hash(self, content_hash: str | None) -> list[int]:
        """Every gallery position holding this content (byte-identical copies share a hash)."""
        if self.lookup is not None:
            return self.lookup.positions_of_hash(content_hash)
        return list(self._by_hash.get(content_hash, ())) if content_hash else []

    def copies_of(self, position: int) -> list[int]:
        """``position`` and every other position with the same content hash."""
        digest = self.hashes[position] if 0 <= position < len(self.hashes) else None
        return self.positions_of_hash(digest) or [position]

    @property
    def engine(self) -> Any:
        """The faiss search engine over this gallery (built on first use, then cached)."""
        if self._engine is None:
            from agent_cir.retrieval.engine import SearchEngine

            self._engine = SearchEngine(self)
        return self._engine

    # ---------- construction ----------
    @classmethod
    def from_index(cls, index: Any, encoder: Any = None) -> RetrievalGallery:
        """An image gallery from an index folder (``agent-cir index``, or a sharded one) or an opened index."""
        from agent_cir.index.sharded_gallery import ShardedGallery, open_index

        index = open_index(index)
        if isinstance(index, ShardedGallery):
            # Same object for paths: the engine sees rows == positions without comparing 10M strings.
            return cls(ids=index.ids, paths=index.paths, hashes=index.hashes,  # type: ignore[arg-type]
                       image_embeddings=index.embeddings, encoder_info=dict(index.encoder_info),  # type: ignore[arg-type]
                       source=str(index.root), index=index, lookup=index)
        embeddings = np.asarray(index.embeddings, dtype=np.float32)
        return cls(
            ids=list(index.ids),
            paths=[str(p) for p in index.paths],
            hashes=list(index.hashes),
            image_embeddings=embeddings,
            encoder_info=dict(index.encoder_info),
            source=str(getattr(index, "root", "")),
            index=index,
        )

    @classmethod
    def from_captions(
        cls,
        captions: str | Path | Mapping[str, Any],
        encoder: Any,
        ids: Sequence[str] | None = None,
    ) -> RetrievalGallery:
        """A caption-only gallery: each item is represented by its captions (no image embeddings)."""
        table = load_gallery_captions(captions)
        wanted = list(ids) if ids is not None else sorted(table)
        gallery = cls(
            ids=wanted,
            paths=[None] * len(wanted),
            hashes=[None] * len(wanted),
            encoder_info=dict(encoder.info),
            source=str(captions) if not isinstance(captions, Mapping) else "<captions dict>",
        )
        return gallery.with_captions(table, encoder)

    def with_captions(self, captions: str | Path | Mapping[str, Any], encoder: Any) -> RetrievalGallery:
        """Attach gallery captions (embedded with ``encoder``'s text side). Items without captions keep
        an image-only score; the trace of the run says how many lacked captions."""
        table = captions if isinstance(captions, dict) and all(isinstance(v, list) for v in captions.values()) else None
        table = table if table is not None else load_gallery_captions(captions)
        texts: list[str] = []
        owners: list[int] = []
        slots: list[int] = []
        for position, gallery_id in enumerate(self.ids):
            for slot, text in enumerate(table.get(gallery_id, [])):
                texts.append(text)
                owners.append(position)
                slots.append(slot)
        self.captions = {gallery_id: table[gallery_id] for gallery_id in self.ids if gallery_id in table}
        self.caption_embeddings = embed_texts_cached(encoder, texts)
        self.caption_owner = np.asarray(owners, dtype=np.int64)
        self.caption_slot = np.asarray(slots, dtype=np.int64)
        self._engine = None  # the composition changed: cached composite indexes are stale
        return self

    # ---------- scoring ----------
    @property
    def captions_per_item(self) -> int:
        """The most captions any item has (0 without captions)."""
        if not self.has_captions:
            return 0
        return int(np.bincount(self.caption_owner, minlength=len(self.ids)).max())

    def mean_caption_vectors(self) -> np.ndarray:
        """(n, d): mean_j caption_ij per item (zeros for items without captions), so that
        <q, mean_j caption_ij> = mean_j cos(q, caption_ij) for unit captions."""
        if not self.has_captions:
            raise GalleryError("this gallery has no captions; configure retrieve.gallery_captions")
        dim = self.caption_embeddings.shape[1]
        sums = np.zeros((len(self.ids), dim), dtype=np.float64)
        np.add.at(sums, self.caption_owner, self.caption_embeddings)
        counts = np.bincount(self.caption_owner, minlength=len(self.ids))
        return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)

    def slot_caption_vectors(self, slots: int) -> np.ndarray:
        """(n, slots, d): caption j of each item in slot j (zeros where an item has fewer captions)."""
        if not self.has_captions:
            raise GalleryError("this gallery has no captions; configure retrieve.gallery_captions")
        dim = self.caption_embeddings.shape[1]
        out = np.zeros((len(self.ids), slots, dim), dtype=np.float32)
        keep = self.caption_slot < slots
        out[self.caption_owner[keep], self.caption_slot[keep]] = self.caption_embeddings[keep]
        return out

    def caption_rows_of(self, position: int) -> np.ndarray:
        """The caption embeddings of one item, in caption order (j = 0, 1, ...)."""
        if not self.has_captions:
            return np.zeros((0, 0), dtype=np.float32)
        rows = np.flatnonzero(self.caption_owner == position)
        rows = rows[np.argsort(self.caption_slot[rows], kind="stable")]
        return np.asarray(self.caption_embeddings[rows], dtype=np.float32)

    def composite_vectors(self, caption_weight: float, paired_slots: int | None = None) -> np.ndarray:
        """Item vectors V with score(q, i) = <Q, V_i> for the query layout of ``retrieval.composite_query``.

        mean pairing:   V_i = (1 - g) image_i + g mean_j caption_ij                 (d columns)
        paired (J):     V_i = [image_i, caption_i1, ..., caption_iJ]                 ((1 + J) d columns;
                        the weights live in the query: [(1 - g) q_img, g/J q_1, ..., g/J q_J])
        Without images (caption-only), the image part is absent.
        """
        parts: list[np.ndarray] = []
        if paired_slots is not None:
            if self.has_images and caption_weight < 1.0:
                parts.append(np.asarray(self.image_embeddings, dtype=np.float32))
            slots = self.slot_caption_vectors(paired_slots)
            parts.append(slots.reshape(len(self.ids), -1))
            return np.ascontiguousarray(np.concatenate(parts, axis=1))
        if caption_weight >= 1.0 or not self.has_images:
            return np.ascontiguousarray(self.mean_caption_vectors())
        images = np.asarray(self.image_embeddings, dtype=np.float32)
        if caption_weight <= 0.0 or not self.has_captions:
            return np.ascontiguousarray(images)
        return np.ascontiguousarray((1.0 - caption_weight) * images + caption_weight * self.mean_caption_vectors())

    def caption_scores(self, query: np.ndarray) -> np.ndarray:
        """mean_j cos(q, caption_ij) for every item (0 for items without captions)."""
        if not self.has_captions:
            raise GalleryError("this gallery has no captions; configure retrieve.gallery_captions")
        per_caption = self.caption_embeddings @ query
        sums = np.bincount(self.caption_owner, weights=per_caption, minlength=len(self.ids))
        counts = np.bincount(self.caption_owner, minlength=len(self.ids))
        return (sums / np.maximum(counts, 1)).astype(np.float32)

    def scores(self, query: np.ndarray, caption_weight: float = 0.0) -> np.ndarray:
        """Exact scores of one query against every item (a reference implementation; search uses the engine)."""
        query = normalise(np.asarray(query, dtype=np.float32).reshape(-1))
        if caption_weight >= 1.0 or not self.has_images:
            if not self.has_captions:
                raise GalleryError("the gallery has neither image embeddings nor captions to score")
            return self.caption_scores(query)
        image_scores = np.asarray(self.image_embeddings @ query, dtype=np.float32)
        if caption_weight <= 0.0 or not self.has_captions:
            return image_scores
        return (1.0 - caption_weight) * image_scores + caption_weight * self.caption_scores(query)

    def top_k(
        self,
        query: np.ndarray,
        k: int,
        caption_weight: float = 0.0,
        exclude: Iterable[int] = (),
        restrict: Iterable[int] | None = None,
    ) -> list[Candidate]:
        """The k best items for one (normalised) query, through the faiss engine. ``exclude`` positions never
        appear; with ``restrict`` only those positions can. Ties are broken by gallery position."""
        query = normalise(np.asarray(query, dtype=np.float32).reshape(-1))
        return self.engine.search(
            query[None, :],
            k,
            caption_weight=caption_weight,
            exclude=[[i for i in exclude if i is not None]],
            restrict=[None if restrict is None else [i for i in restrict if i is not None]],
        )[0].head()
