"""Image-text encoders behind one interface; ``create_encoder(EncoderConfig)`` picks the backend."""

from __future__ import annotations

from typing import Callable, TYPE_CHECKING

from agent_cir.encoders.base import Encoder, ModelWeightsError, describe_encoder, encoder_identity
from agent_cir.encoders.identity import EncoderMismatchError, check_compatible
from agent_cir.encoders.preprocessing import PREPROCESS_METHODS, TargetPad

if TYPE_CHECKING:
    from agent_cir.config import EncoderConfig

__all__ = [
    "PREPROCESS_METHODS",
    "Encoder",
    "EncoderMismatchError",
    "ModelWeightsError",
    "TargetPad",
    "check_compatible",
    "create_encoder",
    "describe_encoder",
    "encoder_identity",
]


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
"""Encoder backend name -> factory (each imports its library only when used). Add a backend here."""


def create_encoder(config: EncoderConfig) -> Encoder:
    """Build the encoder a configuration names (backends are imported only when used)."""
    factory = ENCODER_BACKENDS.get(config.backend)
    if factory is None:
        raise ValueError(f"unknown encoder backend {config.backend!r} (known: {', '.join(ENCODER_BACKENDS)})")
    return factory(config)
