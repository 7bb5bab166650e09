"""What produced a result, in the form a user reads: the encoder's identity and whether its weights are real.

Search output (JSON and text), the quickstart and its trace all say which encoder ranked the gallery, so
a ranking from random-init weights can never pass for a real one.
"""

from __future__ import annotations

from typing import Any, Mapping

_RANDOM_TAGS = {None, "", "none", "None", "random"}


def has_random_weights(info: Mapping[str, Any]) -> bool:
    """True when the encoder was built without trained weights (``--pretrained none``)."""
    if "random_weights" in info:
        return bool(info["random_weights"])
    weights = str(info.get("weights") or "")
    if weights.startswith("random-init"):
        return True
    return info.get("backend", "open_clip") == "open_clip" and info.get("pretrained") in _RANDOM_TAGS


def encoder_provenance(info: Mapping[str, Any]) -> dict[str, Any]:
    """``{backend, architecture, pretrained, weights, preprocess, dim, random_weights}`` from ``Encoder.info``."""
    return {
        "backend": info.get("backend"),
        "architecture": info.get("model"),
        "pretrained": info.get("pretrained"),
        "weights": info.get("weights"),
        "preprocess": info.get("preprocess"),
        "dim": info.get("dim"),
        "random_weights": has_random_weights(info),
    }


def random_weights_warning(info: Mapping[str, Any]) -> str | None:
    """One line for the top of text output when the weights are random; None otherwise."""
    if not has_random_weights(info):
        return None
    return (
        f"warning: the encoder ({info.get('backend')} {info.get('model')}) has RANDOM weights: this ranking "
        "means nothing; index with real weights (e.g. --pretrained laion2b_s34b_b79k) for real results"
    )
