"""Image preprocessing options shared by the image-text encoders: the model's own (``center_crop``) or
``targetpad`` (pad to a target aspect ratio first), as CIReVL and SEARLE preprocess by default.

targetpad follows the official definition (Baldrati et al., CVPR 2022 workshops; code in SEARLE
``src/data_utils.py`` lines 27-67 and CIReVL ``src/data_utils.py`` lines 26-66, ``TargetPad`` and
``targetpad_transform``): when an image's long side / short side is at least ``target_ratio``, the short
side is padded with black, half on each side (whole pixels, rounded down), until the ratio equals
``target_ratio``; images closer to square are left alone. The model's own resize, centre crop and
normalisation then run unchanged.

Normalisation constants are a separate option (``EncoderConfig.normalize``): the official CIReVL pipeline
hard-codes OpenAI CLIP's mean/std (CIReVL ``src/data_utils.py`` line 65) whatever weights it loads, and
WeiMoCIR's ``CLIPImageProcessor`` does the same; open_clip's transforms use the weights' own values, which
for some LAION tags (``laion2b_s32b_b82k``: mean = std = 0.5) are not OpenAI's. ``normalize: openai``
reproduces the official pipelines; ``model`` keeps the model's own.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

PREPROCESS_METHODS = ("center_crop", "targetpad")
DEFAULT_TARGET_RATIO = 1.25
"""CIReVL's and SEARLE's ``targetpad_transform(1.25, ...)``."""


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's image normalisation (the values CIReVL and WeiMoCIR hard-code)."""
NORMALIZE_NAMES = ("model", "openai")


def normalize_constants(option: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) an ``EncoderConfig.normalize`` value asks for; None for ``model`` (the model's own).

    Accepts "model", "openai", a NormalizeConstants or a ``{mean, std}`` mapping."""
    if option in (None, "model"):
        return None
    if option == "openai":
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    mean = option.get("mean") if isinstance(option, dict) else getattr(option, "mean", None)
    std = option.get("std") if isinstance(option, dict) else getattr(option, "std", None)
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        raise ValueError(
            f"normalize must be 'model', 'openai' or {{mean: [r, g, b], std: [r, g, b]}}, got {option!r}"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalize_label(option: Any) -> str:
    """'model', 'openai' or 'explicit' (explicit values equal to OpenAI's are 'openai')."""
    constants = normalize_constants(option)
    if constants is None:
        return "model"
    if constants == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD):
        return "openai"
    return "explicit"


def normalize_info(option: Any) -> dict[str, Any]:
    """The part of ``Encoder.info['preprocess']`` that records the option; an override also records the
    mean/std actually applied (replacing the model's own values in the info)."""
    constants = normalize_constants(option)
    if constants is None:
        return {"normalize": "model"}
    return {"normalize": normalize_label(option), "mean": list(constants[0]), "std": list(constants[1])}


def normalize_of(info: dict[str, Any]) -> Any:
    """The ``EncoderConfig.normalize`` value an encoder's info records: "model" (also for index metadata
    written before the option existed), "openai", or ``{mean, std}``; None for text-only encoders."""
    preprocess = info.get("preprocess")
    if not isinstance(preprocess, dict):
        return None
    label = str(preprocess.get("normalize", "model"))
    if label == "explicit":
        return {"mean": list(preprocess["mean"]), "std": list(preprocess["std"])}
    return label


def with_normalize(transform: Any, option: Any) -> Any:
    """``transform`` (a torchvision Compose) with its Normalize step's constants replaced, for an override."""
    constants = normalize_constants(option)
    if constants is None:
        return transform
    from torchvision.transforms import Compose, Normalize

    steps = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    if not any(isinstance(step, Normalize) for step in steps):
        raise ValueError(f"cannot override normalisation: the model's transform {transform!r} has no Normalize step")
    mean, std = constants
    return Compose([Normalize(mean=mean, std=std) if isinstance(step, Normalize) else step for step in steps])


def targetpad_padding(width: int, height: int, target_ratio: float) -> tuple[int, int]:
    """(pixels added left and right, pixels added top and bottom) for an image of that size."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side < target_ratio:  # already within the ratio: untouched
        return 0, 0
    padded_short = long_side / target_ratio
    return max(int((padded_short - width) / 2), 0), max(int((padded_short - height) / 2), 0)


class TargetPad:
    """PIL image -> the same image padded with black to ``target_ratio`` (see the module docstring).

    A plain class (not a lambda) so that the whole transform pickles into index worker processes.
    """

    def __init__(self, target_ratio: float = DEFAULT_TARGET_RATIO) -> None:
        if target_ratio < 1.0:
            raise ValueError(f"target_ratio is long side / short side and must be >= 1, got {target_ratio}")
        self.target_ratio = float(target_ratio)

    def __call__(self, image: Image.Image) -> Image.Image:
        from torchvision.transforms import functional

        horizontal, vertical = targetpad_padding(image.width, image.height, self.target_ratio)
        if horizontal == 0 and vertical == 0:
            return image
        return functional.pad(image, [horizontal, vertical, horizontal, vertical], fill=0, padding_mode="constant")

    def __repr__(self) -> str:
        return f"TargetPad(target_ratio={self.target_ratio})"


def preprocess_info(method: str, target_ratio: float) -> dict[str, Any]:
    """The part of ``Encoder.info['preprocess']`` that records the option (merged into the model's own keys)."""
    if method not in PREPROCESS_METHODS:
        raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_METHODS)}, got {method!r}")
    if method == "targetpad":
        return {"method": method, "target_ratio": float(target_ratio)}
    return {"method": method}


def preprocessing_of(info: dict[str, Any]) -> tuple[str | None, float | None]:
    """(method, target_ratio) an encoder's info records; ``(None, None)`` for text-only encoders.

    Index metadata written before the option existed has no ``method``: those encoders centre-cropped.
    """
    preprocess = info.get("preprocess")
    if not isinstance(preprocess, dict):
        return None, None
    method = str(preprocess.get("method", "center_crop"))
    ratio = preprocess.get("target_ratio") if method == "targetpad" else None
    return method, (float(ratio) if ratio is not None else None)


def with_pad(transform: Any, method: str, target_ratio: float) -> Any:
    """``transform`` (a torchvision Compose or any callable on PIL images) with the pad step in front."""
    if method == "center_crop":
        return transform
    from torchvision.transforms import Compose

    steps = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    return Compose([TargetPad(target_ratio), *steps])
