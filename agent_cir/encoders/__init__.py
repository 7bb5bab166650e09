"""Image-text encoders behind one interface; ``create_encoder(EncoderConfig)`` picks the backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def create_encoder(config: EncoderConfig) -> Encoder:
    """Build the encoder a configuration names (backends are imported only when used)."""
    if config.backend == "open_clip":
        from agent_cir.encoders.open_clip_encoder import OpenClipEncoder

        return OpenClipEncoder(
            model=config.model,
            pretrained=config.pretrained,
            device=config.device,
            precision=config.precision,
            batch_size=config.batch_size,
            preprocess=config.preprocess,
            target_ratio=config.target_ratio,
        )
    if config.backend == "hf":
        from agent_cir.encoders.hf_encoder import HFEncoder

        return HFEncoder(
            config.model,
            device=config.device,
            precision=config.precision,
            batch_size=config.batch_size,
            preprocess=config.preprocess,
            target_ratio=config.target_ratio,
        )
    if config.backend == "sentence-transformers":
        from agent_cir.encoders.text_encoder import SentenceTransformerTextEncoder

        return SentenceTransformerTextEncoder(
            config.model, device=config.device, precision=config.precision, batch_size=config.batch_size
        )
    raise ValueError(f"unknown encoder backend {config.backend!r}")
