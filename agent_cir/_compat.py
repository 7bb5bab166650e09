"""Guarded work-arounds for broken third-party installs. Each one is inert on a healthy machine."""

from __future__ import annotations


def ensure_torchvision_importable() -> None:
    """Placeholder until the foundation work lands; see issue 2 (torchvision ops on CPU-only torch)."""
    return None
