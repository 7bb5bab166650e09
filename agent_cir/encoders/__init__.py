"""Image-text encoders behind one interface; ``create_encoder(EncoderConfig)`` picks the backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_cir.encoders.base import Encoder, ModelWeightsError, describe_encoder, encoder_identity
from agent_cir.encoders.identity import EncoderMismatchError, check_compatible
from agent_cir.encoders.preprocessing import PREPROCESS_METHODS, TargetPad
from agent_cir.encoders.registry import ENCODER_BACKENDS

if TYPE_CHECKING:
    from agent_cir.config import EncoderConfig

__all__ = [
    "ENCODER_BACKENDS",
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
    factory = ENCODER_BACKENDS.get(config.backend)
    if factory is None:  # the schema refuses unknown names; this guards a config built with model_construct
        from agent_cir.config import ConfigError, unknown_name_message

        raise ConfigError(unknown_name_message("encoder backend", config.backend, ENCODER_BACKENDS))
    return factory(config)
