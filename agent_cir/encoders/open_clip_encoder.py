"""open_clip backend: architecture name (or a model JSON config) + pretrained tag, hf-hub id, local file, or none."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from agent_cir.encoders.base import (
    ModelWeightsError,
    encode_in_batches,
    file_fingerprint,
    folder_fingerprint,
    hub_file_cached,
    json_ready,
    looks_like_path,
    require_download,
)
from agent_cir.encoders.preprocessing import (
    DEFAULT_TARGET_RATIO,
    PREPROCESS_METHODS,
    normalize_constants,
    normalize_info,
    preprocess_info,
    with_normalize,
    with_pad,
)
from agent_cir.errors import AgentCirError
from agent_cir.hashing import bytes_hash

RANDOM_INIT = {None, "", "none", "None", "random"}
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass
class _Source:
    """What to hand open_clip, and how to describe it."""

    model_name: str
    pretrained: str | None
    weights: str
    """Identity of the weights: 'random-init:seed=N', 'tag:...', 'sha256:...', 'hf-hub:...', 'folder:...'."""
    extra_info: dict[str, Any] = field(default_factory=dict)


def _fix_hint(model: str, missing: str) -> str:
    return (
        f"Point the configuration at local weights: `--pretrained /path/to/{missing}` on the command line "
        f"(or `encoder.pretrained: /path/to/{missing}` in a recipe); a folder holding "
        f"{' or '.join(CHECKPOINT_NAMES)} works too. Or allow downloads once (unset HF_HUB_OFFLINE) so the "
        f"weights are cached. `--pretrained none` gives random weights (tests and benchmarks only)."
    )


def _register_config_file(path: Path) -> tuple[str, dict[str, Any]]:
    """Register a model JSON config with open_clip under a content-derived name; returns (name, extra info)."""
    import open_clip

    raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise AgentCirError(f"open_clip model config {path} is not valid JSON ({err})") from err
    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise AgentCirError(
            f"open_clip model config {path} must be an object with 'embed_dim', 'vision_cfg' and 'text_cfg' "
            "(the format of open_clip/model_configs/*.json)"
        )
    digest = bytes_hash(raw)
    # A content-derived name never shadows a built-in architecture of the same file stem.
    name = f"agent_cir_{path.stem}_{digest[:12]}"
    if name not in open_clip.list_models():
        folder = Path(tempfile.gettempdir()) / "agent_cir_open_clip_configs"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.json"
        if not target.exists():
            target.write_bytes(raw)
        open_clip.add_model_config(target)
    return name, {"model_config_sha256": digest}


def _checkpoint_in_folder(folder: Path) -> Path | None:
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    return candidates[0] if len(candidates) == 1 else None


def _tag_cached(pretrained_cfg: dict[str, Any]) -> tuple[bool, str]:
    """(is the tag's checkpoint on disk, a description of the file open_clip would fetch)."""
    if pretrained_cfg.get("file"):
        return os.path.isfile(pretrained_cfg["file"]), pretrained_cfg["file"]
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else list(CHECKPOINT_NAMES)
        if filename.endswith(".bin"):
            names.insert(0, filename[:-4] + ".safetensors")
        cached = any(hub_file_cached(repo_id, name) for name in names)
        return cached, f"Hugging Face Hub file {repo_id}/{names[-1]}"
    url = pretrained_cfg.get("url", "")
    target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return os.path.isfile(target), url or "(no download location known)"


def _resolve(model: str, pretrained: str | None, seed: int) -> _Source:
    import open_clip

    if model.startswith(("hf-hub:", "local-dir:")):
        return _resolve_schema_model(model)

    extra: dict[str, Any] = {}
    if model.endswith(".json") or os.path.isfile(model):
        config_path = Path(model).expanduser()
        if not config_path.is_file():
            raise ModelWeightsError(f"open_clip model config file not found: {config_path}")
        model_name, extra = _register_config_file(config_path)
    else:
        model_name = model.replace("/", "-")
        if model_name not in open_clip.list_models():
            raise AgentCirError(
                f"unknown open_clip architecture {model!r}. Use a name from open_clip.list_models() "
                "(e.g. ViT-B-32, ViT-L-14), a path to a model JSON config, or an `hf-hub:org/name` id."
            )

    if pretrained in RANDOM_INIT:
        return _Source(model_name, None, f"random-init:seed={seed}", extra)

    assert pretrained is not None
    if pretrained.startswith("hf-hub:"):
        return _resolve_schema_model(pretrained)

    local = Path(pretrained).expanduser()
    if local.is_dir():
        if (local / "open_clip_config.json").is_file():
            return _resolve_schema_model(f"local-dir:{local}")
        checkpoint = _checkpoint_in_folder(local)
        if checkpoint is None:
            raise ModelWeightsError(
                f"open_clip model {model}: no checkpoint in folder {local} (looked for {', '.join(CHECKPOINT_NAMES)}, "
                f"or a single *{'/*'.join(CHECKPOINT_SUFFIXES)} file). {_fix_hint(model, CHECKPOINT_NAMES[1])}"
            )
        return _Source(model_name, str(checkpoint), file_fingerprint(str(checkpoint)), extra)
    if local.is_file():
        return _Source(model_name, str(local), file_fingerprint(str(local)), extra)

    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not pretrained_cfg:
        if looks_like_path(pretrained):
            raise ModelWeightsError(
                f"open_clip model {model}: local checkpoint {pretrained} does not exist. "
                f"{_fix_hint(model, CHECKPOINT_NAMES[1])}"
            )
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none known"
        raise ModelWeightsError(
            f"open_clip model {model}: {pretrained!r} is neither a pretrained tag of this architecture "
            f"(known tags: {tags}) nor an existing checkpoint path. {_fix_hint(model, CHECKPOINT_NAMES[1])}"
        )
    cached, location = _tag_cached(pretrained_cfg)
    if not cached:
        require_download(
            f"open_clip model {model} with pretrained tag {pretrained!r}", location, _fix_hint(model, CHECKPOINT_NAMES[1])
        )
    return _Source(model_name, pretrained, f"tag:{pretrained}", extra)


def _resolve_schema_model(name: str) -> _Source:
    """``hf-hub:org/repo`` or ``local-dir:/folder``: open_clip reads the config and weights from there."""
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ModelWeightsError(
                f"open_clip local model folder {folder} has no open_clip_config.json (it needs the config and "
                f"one of {', '.join(CHECKPOINT_NAMES)})"
            )
        return _Source(f"local-dir:{folder}", None, folder_fingerprint(str(folder)))
    repo_id = name[len("hf-hub:") :]
    if not hub_file_cached(repo_id, "open_clip_config.json"):
        require_download(
            f"open_clip model {name}",
            f"open_clip_config.json and the weights of {repo_id}",
            "Download the repository on a machine with network and pass its folder: `--pretrained /path/to/folder` "
            f"(a folder with open_clip_config.json and {CHECKPOINT_NAMES[1]}), or unset HF_HUB_OFFLINE.",
        )
    return _Source(name, None, name)


class OpenClipEncoder:
    """open_clip image-text encoder. Every output row is L2-normalised float32."""

    backend = "open_clip"
    modalities = ("image", "text")

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = "laion2b_s34b_b79k",
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 64,
        seed: int = 0,
        preprocess: str = "center_crop",
        target_ratio: float = DEFAULT_TARGET_RATIO,
        normalize: Any = "model",
    ) -> None:
        import open_clip
        import torch

        if precision not in _PRECISIONS:
            raise AgentCirError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
        if preprocess not in PREPROCESS_METHODS:
            raise AgentCirError(f"preprocess must be one of {', '.join(PREPROCESS_METHODS)}, got {preprocess!r}")
        try:
            normalize_constants(normalize)
        except ValueError as err:
            raise AgentCirError(str(err)) from err
        source = _resolve(model, pretrained, seed)
        try:
            # Random init is seeded so that 'none' always means the same weights (incremental indexing).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model, _, model_preprocess = open_clip.create_model_and_transforms(
                    source.model_name,
                    pretrained=source.pretrained,
                    precision=_PRECISIONS[precision],
                    device=device,
                    pretrained_image=False,
                    pretrained_text=False,
                )
            self.tokenizer = open_clip.get_tokenizer(source.model_name)
        except (OSError, RuntimeError, ValueError) as err:
            if _is_missing_file_error(err):
                raise ModelWeightsError(
                    f"open_clip model {model} / {pretrained}: could not load the weights ({_short(err)}). "
                    f"{_fix_hint(model, CHECKPOINT_NAMES[1])}"
                ) from err
            raise
        self.model.eval()
        # open_clip's own evaluation transform for this model, with the pad step in front for targetpad
        # (normalisation constants replaced first when the recipe overrides them, e.g. CIReVL's OpenAI values)
        self.preprocess = with_pad(with_normalize(model_preprocess, normalize), preprocess, target_ratio)
        self.device = torch.device(device)
        self.batch_size = batch_size
        from open_clip.model import get_input_dtype

        self._dtype = get_input_dtype(_PRECISIONS[precision]) or torch.float32
        preprocess_cfg = json_ready(dict(getattr(self.model.visual, "preprocess_cfg", {})))
        self.dim = int(self.encode_texts(["a photo"]).shape[1])
        self.info: dict[str, Any] = {
            "backend": self.backend,
            "model": model,
            "architecture": source.model_name,
            "pretrained": "none" if pretrained in RANDOM_INIT else pretrained,
            "weights": source.weights,
            "random_weights": source.pretrained is None and source.weights.startswith("random-init"),
            "dim": self.dim,
            "preprocess": {**preprocess_cfg, **preprocess_info(preprocess, target_ratio), **normalize_info(normalize)},
            "context_length": int(getattr(self.tokenizer, "context_length", 0) or 0),
            "open_clip_version": open_clip.__version__,
            **source.extra_info,
            "precision": precision,
            "device": device,
        }

    def encode_images(self, images: Sequence[Image.Image] | Any, batch_size: int | None = None) -> np.ndarray:
        import torch

        if isinstance(images, torch.Tensor):
            make_batch: Any = None
        else:
            images = list(images)

            def make_batch(chunk: list[Image.Image]) -> Any:
                return torch.stack([self.preprocess(image.convert("RGB")) for image in chunk])

        return encode_in_batches(
            images,
            batch_size or self.batch_size,
            make_batch,
            lambda batch: self.model.encode_image(batch.to(self.device, dtype=self._dtype)),
            getattr(self, "dim", 0),
        )

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        return encode_in_batches(
            list(texts),
            batch_size or self.batch_size,
            lambda chunk: self.tokenizer(chunk).to(self.device),
            self.model.encode_text,
            getattr(self, "dim", 0),
        )


def _is_missing_file_error(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    markers = ("download", "not found", "no such file", "offline", "localentrynotfound", "connection", "cache")
    return isinstance(err, FileNotFoundError) or any(marker in text for marker in markers)


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
