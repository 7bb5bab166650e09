"""The encoder an index was made with, from its metadata: read by the index, the ray engine and the CLI's index
update, without importing the index machinery."""

from __future__ import annotations

from typing import Any

from agent_cir.config import EncoderConfig
from agent_cir.errors import AgentCirError


def encoder_config_from_meta(meta: dict[str, Any], device: str | None = None) -> EncoderConfig:
    """The EncoderConfig that rebuilds the encoder an index was made with (``meta`` = meta.json contents)."""
    from agent_cir.encoders.preprocessing import DEFAULT_TARGET_RATIO, normalize_of, preprocessing_of

    info = meta.get("encoder", meta)
    try:
        backend, model = info["backend"], info["model"]
    except KeyError as err:
        raise AgentCirError("index metadata has no encoder backend/model; rebuild the index") from err
    method, ratio = preprocessing_of(info)
    return EncoderConfig(
        backend=backend,
        model=model,
        pretrained=info.get("pretrained"),
        precision=info.get("precision", "fp32"),
        device=device or info.get("device", "cpu"),
        preprocess=method or "center_crop",  # type: ignore[arg-type]
        target_ratio=ratio or DEFAULT_TARGET_RATIO,
        normalize=normalize_of(info) or "model",
    )
