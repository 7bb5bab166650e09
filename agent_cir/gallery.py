"""What the retrieve stage scores against: image embeddings and/or gallery captions, aligned by id.

score(q, i) = (1 - g) * cos(q, image_i) + g * mean_j cos(q, caption_ij)

With g = 1 no image embeddings are needed (caption-only gallery, e.g. the CIRR text surrogate with a
text-only encoder); with no captions g is 0 and scoring is the plain image index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
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
    """The GalleryIndex this gallery came from, when it came from one."""

    def __post_init__(self) -> None:
        self._position = {gallery_id: i for i, gallery_id in enumerate(self.ids)}
        self._by_hash: dict[str, int] = {h: i for i, h in enumerate(self.hashes) if h}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_images(self) -> bool:
        return self.image_embeddings is not None

    @property
    def has_captions(self) -> bool:
        return self.caption_embeddings is not None and len(self.caption_embeddings) > 0

    def position(self, gallery_id: str) -> int | None:
        return self._position.get(gallery_id)

    def position_of_hash(self, content_hash: str | None) -> int | None:
        return self._by_hash.get(content_hash) if content_hash else None

    # ---------- construction ----------
    @classmethod
    def from_index(cls, index: Any, encoder: Any = None) -> RetrievalGallery:
        """An image gallery from an ``agent-cir index`` folder or a loaded GalleryIndex."""
        from agent_cir.index import GalleryIndex

        if not isinstance(index, GalleryIndex):
            index = GalleryIndex.load(index)
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
        for position, gallery_id in enumerate(self.ids):
            for text in table.get(gallery_id, []):
                texts.append(text)
                owners.append(position)
        self.captions = {gallery_id: table[gallery_id] for gallery_id in self.ids if gallery_id in table}
        self.caption_embeddings = embed_texts_cached(encoder, texts)
        self.caption_owner = np.asarray(owners, dtype=np.int64)
        return self

    @property
    def missing_captions(self) -> int:
        return sum(1 for gallery_id in self.ids if gallery_id not in self.captions)

    # ---------- scoring ----------
    def caption_scores(self, query: np.ndarray) -> np.ndarray:
        """mean_j cos(q, caption_ij) for every item (0 for items without captions)."""
        if not self.has_captions:
            raise GalleryError("this gallery has no captions; configure retrieve.gallery_captions")
        per_caption = self.caption_embeddings @ query
        sums = np.bincount(self.caption_owner, weights=per_caption, minlength=len(self.ids))
        counts = np.bincount(self.caption_owner, minlength=len(self.ids))
        return (sums / np.maximum(counts, 1)).astype(np.float32)

    def scores(self, query: np.ndarray, caption_weight: float = 0.0) -> np.ndarray:
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
        """The k best items by score (exact: a full dot product over the memory-mapped embeddings).
        ``exclude`` positions never appear; with ``restrict`` only those positions can."""
        scores = self.scores(query, caption_weight).astype(np.float64)
        excluded = {i for i in exclude if i is not None}
        allowed = set(range(len(scores))) if restrict is None else {i for i in restrict if i is not None}
        allowed -= excluded
        if len(allowed) < len(scores):
            mask = np.ones(len(scores), dtype=bool)
            if allowed:
                mask[np.fromiter(allowed, dtype=np.int64)] = False
            scores[mask] = -np.inf
        available = len(allowed)
        k = max(0, min(k, available))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        # Stable order: by score, ties broken by gallery position so runs are reproducible.
        top = top[np.lexsort((top, -scores[top]))]
        return [
            Candidate(id=self.ids[i], score=float(scores[i]), path=self.paths[i], rank=rank)
            for rank, i in enumerate(top, start=1)
        ]
