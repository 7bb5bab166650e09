"""``GalleryIndex.search``: a composed query without an LLM, ranked by the same engine as the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.fusion import normalise, weighted_fusion
from agent_cir.types import Candidate


def search_index(
    index: Any,
    encoder: Any,
    image: str | Path | None = None,
    text: str | None = None,
    mode: str = "fusion",
    alpha: float = 0.8,
    k: int = 50,
    exclude_reference: bool = True,
) -> list[Candidate]:
    """'text' (modification text only), 'image' (reference only) or 'fusion':
    q = normalise((1 - alpha) * img + alpha * txt). Every gallery copy of the reference image (same content)
    is left out of its results when ``exclude_reference``. The reference is decoded as the indexer decodes
    gallery images (``encode_image_file``: EXIF orientation, bomb guard)."""
    from agent_cir.retrieval.gallery import RetrievalGallery
    from agent_cir.index.gallery_index import encode_image_file, reference_hash

    if mode not in ("text", "image", "fusion"):
        raise AgentCirError(f"mode must be text, image or fusion, got {mode!r}")
    if mode in ("image", "fusion") and image is None:
        raise AgentCirError(f"mode {mode!r} needs a reference image (--image)")
    if mode in ("text", "fusion") and not (text and text.strip()):
        raise AgentCirError(f"mode {mode!r} needs a modification text (--text)")
    if not 0.0 <= alpha <= 1.0:
        raise AgentCirError(f"alpha must be between 0 and 1, got {alpha}")
    index.check_encoder(encoder)
    image_vector = encode_image_file(encoder, image) if (image is not None and mode != "text") else None
    text_vector = encoder.encode_texts([text])[0] if mode != "image" else None
    if mode == "fusion":
        query = weighted_fusion(image_vector, text_vector, alpha)
    else:
        query = normalise(image_vector if mode == "image" else text_vector)
    gallery = RetrievalGallery.from_index(index)
    excluded = gallery.positions_of_hash(reference_hash(image)) if (exclude_reference and image is not None) else []
    return gallery.engine.search(query[None, :], k, exclude=[excluded])[0].head()
