"""transformers backend: CLIP and SigLIP (any model with get_image_features / get_text_features), hub id or folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from agent_cir.encoders.base import (
    ModelWeightsError,
    encode_in_batches,
    folder_fingerprint,
    hub_snapshot_revision,
    json_ready,
    looks_like_path,
    require_download,
)
from agent_cir.encoders.preprocessing import DEFAULT_TARGET_RATIO, PREPROCESS_METHODS, TargetPad
from agent_cir.encoders.preprocessing import normalize_constants, normalize_info
from agent_cir.encoders.preprocessing import preprocess_info as preprocess_option_info
from agent_cir.errors import AgentCirError

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_PREPROCESS_KEYS = (
    "image_processor_type",
    "size",
    "crop_size",
    "do_resize",
    "do_center_crop",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "resample",
    "do_convert_rgb",
)


def resolve_hf_source(model: str, what: str) -> tuple[str, str]:
    """(what to pass to from_pretrained, weights identity) for a hub id or local folder; raises when missing."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file() and not (local / "modules.json").is_file():
            raise ModelWeightsError(
                f"{what} folder {local} has no config.json: it should be a folder written by save_pretrained "
                "(config.json, the weights *.safetensors and the tokenizer/processor files)"
            )
        return str(local), folder_fingerprint(str(local))
    if looks_like_path(model) or local.exists():
        raise ModelWeightsError(
            f"{what} {model}: local folder not found. Pass an existing folder written by save_pretrained "
            "(config.json + weights + tokenizer/processor files) or a Hugging Face Hub id."
        )
    revision = hub_snapshot_revision(model, "config.json")
    if revision is None:
        require_download(
            f"{what} {model}",
            f"{model}/config.json and its weights",
            f"Download it on a machine with network (`hf download {model} --local-dir /path/to/folder`) and pass "
            "the folder as the model (`--model /path/to/folder`, or `encoder.model:` in a recipe), or unset "
            "HF_HUB_OFFLINE.",
        )
    return model, f"hf-hub:{model}@{revision or 'latest'}"


class HFImagePreprocess:
    """PIL image -> pixel tensor (C, H, W) with the model's own image processor, after the targetpad step when
    one is given. Picklable for worker processes."""

    def __init__(self, image_processor: Any, pad: TargetPad | None = None) -> None:
        self.image_processor = image_processor
        self.pad = pad

    def prepare(self, image: Image.Image) -> Image.Image:
        """The PIL image the processor receives (RGB, padded for targetpad)."""
        image = image.convert("RGB")
        return self.pad(image) if self.pad is not None else image

    def __call__(self, image: Image.Image) -> Any:
        return self.image_processor(images=self.prepare(image), return_tensors="pt")["pixel_values"][0]


def _features(output: Any) -> Any:
    """transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor."""
    if hasattr(output, "pooler_output") and not hasattr(output, "detach"):
        return output.pooler_output
    return output


class HFEncoder:
    """transformers CLIP / SigLIP image-text encoder. Every output row is L2-normalised float32."""

    backend = "hf"
    modalities = ("image", "text")

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 64,
        preprocess: str = "center_crop",
        target_ratio: float = DEFAULT_TARGET_RATIO,
        normalize: Any = "model",
    ) -> None:
        import copy

        import torch
        from transformers import AutoModel, AutoProcessor

        if precision not in _DTYPES:
            raise AgentCirError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        if preprocess not in PREPROCESS_METHODS:
            raise AgentCirError(f"preprocess must be one of {', '.join(PREPROCESS_METHODS)}, got {preprocess!r}")
        try:
            constants = normalize_constants(normalize)
        except ValueError as err:
            raise AgentCirError(str(err)) from err
        source, weights = resolve_hf_source(model, "transformers model")
        try:
            self.model = AutoModel.from_pretrained(source, dtype=getattr(torch, _DTYPES[precision]))
            self.processor = AutoProcessor.from_pretrained(source)
        except OSError as err:
            raise ModelWeightsError(
                f"transformers model {model}: could not load its weights or processor files "
                f"({' '.join(str(err).split())[:300]}). Pass a complete local folder written by save_pretrained "
                "as the model, or allow downloads (unset HF_HUB_OFFLINE)."
            ) from err
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise AgentCirError(
                f"transformers model {model} ({type(self.model).__name__}) is not an image-text dual encoder: "
                "it needs get_image_features and get_text_features (CLIP, SigLIP, SigLIP2 ...)"
            )
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._dtype = getattr(torch, _DTYPES[precision])
        self.tokenizer = self.processor.tokenizer
        self.image_processor = self.processor.image_processor
        if constants is not None:  # a copy: the processor object may be shared through transformers' caches
            self.image_processor = copy.deepcopy(self.image_processor)
            self.image_processor.image_mean, self.image_processor.image_std = list(constants[0]), list(constants[1])
        # the processor's own resize / crop / normalisation, after the pad step for targetpad
        self.preprocess = HFImagePreprocess(
            self.image_processor, TargetPad(target_ratio) if preprocess == "targetpad" else None
        )
        model_type = str(getattr(self.model.config, "model_type", ""))
        # SigLIP was trained on max-length padded text; CLIP uses the EOS position, so plain padding is fine.
        self._pad_to_max = "siglip" in model_type
        text_config = getattr(self.model.config, "text_config", None)
        self._max_length = int(getattr(text_config, "max_position_embeddings", 0) or 0) or None
        processor_dict = self.image_processor.to_dict()
        preprocess_info = {key: processor_dict[key] for key in _PREPROCESS_KEYS if key in processor_dict}
        self.dim = int(self.encode_texts(["a photo"]).shape[1])
        self.info: dict[str, Any] = {
            "backend": self.backend,
            "model": model,
            "pretrained": None,
            "weights": weights,
            "architecture": type(self.model).__name__,
            "model_type": model_type,
            "random_weights": False,  # loaded from files; whatever they hold, we did not initialise them
            "dim": self.dim,
            "preprocess": {
                **json_ready(preprocess_info),
                **preprocess_option_info(preprocess, target_ratio),
                **normalize_info(normalize),
            },
            "precision": precision,
            "device": device,
        }

    def encode_images(self, images: Sequence[Image.Image] | Any, batch_size: int | None = None) -> np.ndarray:
        import torch

        if isinstance(images, torch.Tensor):
            make_batch: Any = None
        else:
            images = [self.preprocess.prepare(image) for image in images]

            def make_batch(chunk: list[Image.Image]) -> Any:
                return self.image_processor(images=chunk, return_tensors="pt")["pixel_values"]

        return encode_in_batches(
            images,
            batch_size or self.batch_size,
            make_batch,
            lambda batch: _features(self.model.get_image_features(pixel_values=batch.to(self.device, dtype=self._dtype))),
            getattr(self, "dim", 0),
        )

    def _text_inputs(self, chunk: list[str]) -> dict[str, Any]:
        tokens = self.tokenizer(
            chunk,
            padding="max_length" if self._pad_to_max else True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        ).to(self.device)
        inputs = {key: tokens[key] for key in ("input_ids", "attention_mask") if key in tokens}
        if self._pad_to_max:
            inputs.pop("attention_mask", None)  # SigLIP's text tower is used without a mask
        return inputs

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        return encode_in_batches(
            list(texts),
            batch_size or self.batch_size,
            self._text_inputs,
            lambda inputs: _features(self.model.get_text_features(**inputs)),
            getattr(self, "dim", 0),
        )
