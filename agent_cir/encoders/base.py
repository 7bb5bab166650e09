"""The one encoder interface every retrieval path uses."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from agent_cir.errors import AgentCirError


class ModelWeightsError(AgentCirError, RuntimeError):
    """Weights are not on disk and cannot be downloaded. The message says which model and how to fix it."""


class Encoder(Protocol):
    """Maps images and texts into one space. Every output row is L2-normalised float32."""

    dim: int
    info: dict[str, Any]
    """What produced the embeddings: backend, model, pretrained tag or path, preprocessing. Stored in index metadata."""

    def preprocess(self, image: Image.Image) -> Any:
        """PIL image -> model input tensor (runs in data-loading workers)."""
        ...

    def encode_images(self, images: Sequence[Image.Image] | Any, batch_size: int | None = None) -> np.ndarray:
        """PIL images, or an already preprocessed batch tensor -> (n, dim) float32."""
        ...

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray: ...


RUNTIME_INFO_KEYS = frozenset({"device", "precision", "batch_size"})
"""Info keys that say how an encoder runs, not what it computes; two encoders differing only here match."""


DESCRIPTIVE_INFO_KEYS = frozenset({"architecture", "random_weights"})
"""Info keys derived from the model and weights (for readers of traces); they add nothing to the comparison."""


def encoder_identity(info: dict[str, Any]) -> dict[str, Any]:
    """The part of ``Encoder.info`` that decides whether two encoders produce comparable embeddings.

    Infos written before the preprocessing options existed (no ``preprocess.method`` / ``normalize``)
    centre-cropped with the model's own normalisation.
    """
    identity = {key: value for key, value in info.items() if key not in RUNTIME_INFO_KEYS | DESCRIPTIVE_INFO_KEYS}
    preprocess = identity.get("preprocess")
    if isinstance(preprocess, dict):
        # infos written before an option existed used its default
        identity["preprocess"] = {"method": "center_crop", "normalize": "model", **preprocess}
    return identity


def describe_encoder(info: dict[str, Any]) -> str:
    """Short human form used in messages: ``open_clip ViT-B-32 / laion2b_s34b_b79k`` (+ ``, targetpad 1.25``)."""
    pretrained = info.get("pretrained")
    label = f"{info.get('backend', '?')} {info.get('model', '?')}"
    label = f"{label} / {pretrained}" if pretrained not in (None, "") else label
    preprocess = info.get("preprocess")
    if isinstance(preprocess, dict) and preprocess.get("method") == "targetpad":
        label += f", targetpad {preprocess.get('target_ratio')}"
    if isinstance(preprocess, dict) and preprocess.get("normalize", "model") != "model":
        label += f", normalize {preprocess.get('normalize')}"
    elif isinstance(info.get("normalize"), (str, dict)) and info.get("normalize") != "model":  # an EncoderConfig dump
        normalize = info["normalize"]
        label += f", normalize {normalize if isinstance(normalize, str) else 'explicit'}"
    return label


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    import os

    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(name, "").strip().lower() in truthy for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_file_cached(repo_id: str, filename: str) -> bool:
    """Whether a Hub file is already in the local cache (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of transformers
        return False
    found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return isinstance(found, str)


def looks_like_path(value: str) -> bool:
    """A value the user meant as a local file or folder (as opposed to a tag or a hub id)."""
    explicit_path = value.startswith(("/", "./", "../", "~", ".\\")) or (len(value) > 1 and value[1] == ":")
    return explicit_path or value.endswith((".bin", ".pt", ".pth", ".safetensors", ".json", ".ckpt"))


def l2_normalise_rows(features: Any) -> np.ndarray:
    """torch tensor or array (n, d) -> float32 numpy with unit-norm rows (zero rows stay zero)."""
    array = features.detach().float().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
    array = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def encode_in_batches(
    items: Any, batch_size: int, make_batch: Callable[[Any], Any] | None, forward: Callable[[Any], Any], dim: int
) -> np.ndarray:
    """Slice ``items`` (a list, or a tensor already preprocessed when ``make_batch`` is None), turn each slice
    into a model batch, run ``forward`` without gradients and return the L2-normalised rows as float32."""
    import torch

    if len(items) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            outputs.append(l2_normalise_rows(forward(make_batch(chunk) if make_batch else chunk)))
    return np.concatenate(outputs, axis=0)


_FILE_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str) -> str:
    """sha256 of a local weights file (cached per process by path, size and mtime)."""
    import os

    from agent_cir.hashing import content_hash

    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASH_CACHE:
        _FILE_HASH_CACHE[key] = "sha256:" + content_hash(path)
    return _FILE_HASH_CACHE[key]


def folder_fingerprint(path: str) -> str:
    """Identity of a local model folder: its JSON configs' content plus every other file's name and size.

    Hashing multi-GB weights on every load would be slow; configs and sizes change whenever the weights do
    in practice (a different checkpoint of the same architecture is the one case this cannot tell apart).
    """
    import os

    from agent_cir.hashing import bytes_hash, stable_hash

    parts = []
    for root, _dirs, files in os.walk(path):
        for name in sorted(files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if name.endswith(".json") and os.path.getsize(full) < (1 << 20):
                with open(full, "rb") as handle:
                    parts.append((rel, bytes_hash(handle.read())))
            else:
                parts.append((rel, os.path.getsize(full)))
    return "folder:" + stable_hash(sorted(parts))[:32]


def hub_snapshot_revision(repo_id: str, filename: str = "config.json") -> str | None:
    """Commit hash of the cached snapshot a Hub file resolves to, or None when it is not cached."""
    import os

    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    if not isinstance(found, str):
        return None
    parts = os.path.normpath(found).split(os.sep)
    if "snapshots" in parts:
        return parts[parts.index("snapshots") + 1]
    return None


def json_ready(value: Any) -> Any:
    """Tuples, numpy scalars and enums -> plain JSON values (for info dicts stored in index metadata)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "name") and hasattr(value, "value"):  # enums (e.g. PIL resampling)
        return str(value.name)
    return str(value)


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """None when the Hugging Face Hub answers a TCP connect; else why not. Checked before a download so that
    a machine without network gets one clear error instead of minutes of retries."""
    import os
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except (OSError, RuntimeError) as err:
        return f"cannot reach {host}:{port} ({' '.join(str(err).split())[:120]})"


def require_download(what: str, missing: str, fix: str) -> None:
    """Raise ModelWeightsError unless a download can happen (not offline, and the Hub is reachable)."""
    if hub_offline():
        raise ModelWeightsError(
            f"{what}: the weights are not on this machine ({missing} is not in the local cache) and downloads are "
            f"disabled (HF_HUB_OFFLINE=1). {fix}"
        )
    reason = hub_unreachable_reason()
    if reason is not None:
        raise ModelWeightsError(
            f"{what}: the weights are not on this machine ({missing} is not in the local cache) and the download "
            f"failed: {reason}. {fix}"
        )
