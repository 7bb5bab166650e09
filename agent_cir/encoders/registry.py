"""Encoder backends by name: ``encoder.backend`` in a recipe is validated against these keys and
``create_encoder`` builds from them. Adding a backend is one entry here (its factory imports its library
only when used, so this module stays light enough for the recipe schema to read)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders.base import Encoder


def _open_clip(config: EncoderConfig) -> Encoder:
    from agent_cir.encoders.open_clip_encoder import OpenClipEncoder

    return OpenClipEncoder(
        model=config.model,
        pretrained=config.pretrained,
        device=config.device,
        precision=config.precision,
        batch_size=config.batch_size,
        preprocess=config.preprocess,
        target_ratio=config.target_ratio,
        normalize=config.normalize,
    )


def _hf(config: EncoderConfig) -> Encoder:
    from agent_cir.encoders.hf_encoder import HFEncoder

    return HFEncoder(
        config.model,
        device=config.device,
        precision=config.precision,
        batch_size=config.batch_size,
        preprocess=config.preprocess,
        target_ratio=config.target_ratio,
        normalize=config.normalize,
    )


def _sentence_transformers(config: EncoderConfig) -> Encoder:
    from agent_cir.encoders.text_encoder import SentenceTransformerTextEncoder

    return SentenceTransformerTextEncoder(
        config.model, device=config.device, precision=config.precision, batch_size=config.batch_size
    )


ENCODER_BACKENDS: dict[str, Callable[[EncoderConfig], Encoder]] = {
    "open_clip": _open_clip,
    "hf": _hf,
    "sentence-transformers": _sentence_transformers,
}
"""Encoder backend name -> factory. The one list of encoder backends: the recipe schema reads its keys."""
