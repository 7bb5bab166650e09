"""Retrieve stage: target description(s) (+ reference image) -> one query vector -> top-k from the gallery.

Modes: ``text`` (mean of the normalised description embeddings), ``image`` (the reference alone),
``fusion`` (q = normalise((1-alpha) img + alpha txt)), ``pdv`` (directional: d = txt(target) - txt(caption);
q = normalise((1-b)(img + a d) + b (txt(target) + a d))). Gallery captions, when configured, mix in as
score = (1-g) cos(q, image) + g mean_j cos(q, caption_j).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent_cir.config import RetrieveConfig
from agent_cir.errors import AgentCirError
from agent_cir.fusion import mean_embedding, pdv_fusion, weighted_fusion
from agent_cir.gallery import RetrievalGallery
from agent_cir.types import QueryState, StageRecord


class QueryInputError(AgentCirError):
    """A query cannot be run as given (missing reference image, no text)."""


def _join_caption_and_modification(caption: str, modification: str) -> str:
    return f"{caption.strip().rstrip('.')}. {modification.strip()}"


class RetrieveStage:
    name = "retrieve"

    def __init__(self, config: RetrieveConfig, encoder: Any, gallery: RetrievalGallery) -> None:
        self.config = config
        self.encoder = encoder
        self.gallery = gallery
        if config.gallery_captions is not None:
            self.caption_weight = config.gallery_captions.weight
        else:
            # A captions-only gallery can only be scored through its captions.
            self.caption_weight = 0.0 if gallery.has_images else 1.0
        if self.caption_weight > 0 and not gallery.has_captions:
            raise AgentCirError(
                "retrieve.gallery_captions is set but the gallery has no captions attached; "
                "build the gallery with its captions file (RetrievalGallery.with_captions)"
            )
        if self.caption_weight < 1.0 and not gallery.has_images:
            raise AgentCirError(
                f"the gallery ({gallery.source or 'captions only'}) has no image embeddings, so "
                f"retrieve.gallery_captions.weight must be 1.0 (it is {self.caption_weight}); "
                "or index the images with `agent-cir index` and pass --index"
            )
        if config.mode in ("image", "fusion", "pdv") and not gallery.has_images and self.caption_weight >= 1.0:
            # Caption-only galleries live in a text space: there is no reference image vector to fuse.
            raise AgentCirError(
                f"retrieve.mode {config.mode!r} needs image embeddings, but this gallery is captions only; "
                "use mode: text"
            )

    # ---------- query texts ----------
    def _query_texts(self, state: QueryState, notes: list[str]) -> list[str]:
        query = state.query
        source = self.config.text_source
        captions = state.captions or ([query.reference_caption] if query.reference_caption else [])
        if source in ("target", "target+modification"):
            if state.target_descriptions:
                extra = [query.text] if source == "target+modification" and query.text else []
                return list(dict.fromkeys([*state.target_descriptions, *extra]))
            notes.append("no target description was produced: retrieving with the modification text")
            state.description_source = state.description_source or "modification"
            state.target_descriptions = [query.text]
            return [query.text]
        if source == "modification":
            return [query.text]
        if not captions:
            raise QueryInputError(
                f"query {query.id}: retrieve.text_source is {source!r} but the query has no caption "
                "(enable the caption stage or supply reference_caption)"
            )
        if source == "caption":
            return list(captions)
        return [_join_caption_and_modification(caption, query.text) for caption in captions]

    # ---------- reference image ----------
    def _reference_position(self, state: QueryState) -> int | None:
        query = state.query
        if query.reference_id is not None:
            position = self.gallery.position(query.reference_id)
            if position is not None:
                return position
        return self.gallery.position_of_hash(state.image_hash)

    def _image_vector(self, state: QueryState, reference_position: int | None) -> np.ndarray:
        query = state.query
        if reference_position is not None and self.gallery.has_images:
            return np.asarray(self.gallery.image_embeddings[reference_position], dtype=np.float32)
        if not query.image:
            raise QueryInputError(
                f"query {query.id}: retrieve.mode {self.config.mode!r} needs a reference image; pass --image "
                "or use mode: text"
            )
        try:
            with Image.open(query.image) as image:
                image.load()
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise QueryInputError(f"query {query.id}: cannot read reference image {query.image}: {err}") from None
        return np.asarray(self.encoder.encode_images([rgb]), dtype=np.float32)[0]

    def _restriction(self, state: QueryState, notes: list[str]) -> list[int] | None:
        wanted = state.query.candidate_ids
        if wanted is None:
            return None
        positions = [self.gallery.position(gallery_id) for gallery_id in wanted]
        missing = [gallery_id for gallery_id, pos in zip(wanted, positions) if pos is None]
        if missing:
            notes.append(f"{len(missing)} candidate ids are not in the gallery: {', '.join(missing[:5])}")
        return [pos for pos in positions if pos is not None]

    # ---------- run ----------
    def run(self, state: QueryState) -> StageRecord:
        config = self.config
        notes: list[str] = []
        texts = self._query_texts(state, notes) if config.mode != "image" else []
        reference_position = self._reference_position(state)
        mode = config.mode
        caption_vector = None
        if mode == "pdv":
            captions = state.captions or ([state.query.reference_caption] if state.query.reference_caption else [])
            if captions:
                caption_vector = mean_embedding(self.encoder.encode_texts(captions))
            else:
                notes.append("pdv needs a reference caption and none exists: used weighted fusion instead")
                mode = "fusion"
        text_vector = mean_embedding(self.encoder.encode_texts(texts)) if texts else None
        if mode == "text":
            query_vector = text_vector
        elif mode == "image":
            query_vector = self._image_vector(state, reference_position)
        elif mode == "fusion":
            query_vector = weighted_fusion(self._image_vector(state, reference_position), text_vector, config.alpha)
        else:
            query_vector = pdv_fusion(
                self._image_vector(state, reference_position), text_vector, caption_vector, config.pdv_a, config.pdv_b
            )
        excluded = [reference_position] if (config.exclude_reference and reference_position is not None) else []
        restrict = self._restriction(state, notes)
        candidates = self.gallery.top_k(query_vector, config.k, self.caption_weight, exclude=excluded, restrict=restrict)
        state.candidates = candidates
        output = {
            "mode": mode,
            "k": config.k,
            "query_texts": texts,
            "caption_weight": self.caption_weight,
            "excluded": [self.gallery.ids[i] for i in excluded],
            "candidates": [{"rank": c.rank, "id": c.id, "score": round(c.score, 6)} for c in candidates],
        }
        if restrict is not None:
            output["restricted_to"] = len(restrict)
        if mode == "fusion":
            output["alpha"] = config.alpha
        if mode == "pdv":
            output.update({"pdv_a": config.pdv_a, "pdv_b": config.pdv_b})
        return StageRecord(stage=self.name, output=output, notes=notes)
