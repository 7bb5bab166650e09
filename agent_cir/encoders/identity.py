"""Which encoder produced an index, and whether a requested encoder produces comparable embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_cir.encoders.preprocessing import (
    DEFAULT_TARGET_RATIO,
    normalize_constants,
    normalize_label,
    normalize_of,
    preprocessing_of,
)
from agent_cir.errors import AgentCirError

if TYPE_CHECKING:
    from agent_cir.config import EncoderConfig

RANDOM_INIT_TAGS = frozenset({"", "none", "None", "random"})
"""open_clip ``pretrained`` values meaning random initialisation (None too)."""

COMPARED_FIELDS = ("backend", "model", "pretrained", "preprocess", "target_ratio", "normalize")


class EncoderMismatchError(AgentCirError, ValueError):
    """The requested encoder is not the one an index was built with; the message says how to re-index."""


def is_random_init(pretrained: Any) -> bool:
    return pretrained is None or str(pretrained) in RANDOM_INIT_TAGS


def _normalize_identity(option: Any) -> Any:
    """A comparable form of a normalize option: "model", "openai" (also explicit OpenAI values) or the
    explicit (mean, std) tuples; None for text-only encoders."""
    if option is None:
        return None
    label = normalize_label(option)
    return normalize_constants(option) if label == "explicit" else label


def _normalised(
    backend: str, model: str, pretrained: Any, method: str | None, ratio: float | None, normalize: Any = None
) -> dict[str, Any]:
    if backend == "open_clip":
        if not model.startswith(("hf-hub:", "local-dir:", "/", ".", "~")) and not model.endswith(".json"):
            model = model.replace("/", "-")  # open_clip reads ViT-B/32 as ViT-B-32
        pretrained = "none" if is_random_init(pretrained) else str(pretrained)
    else:
        pretrained = None  # hf / sentence-transformers: the model id or folder is the weights
    return {
        "backend": backend,
        "model": model,
        "pretrained": pretrained,
        "preprocess": method,
        "target_ratio": ratio if method == "targetpad" else None,
        "normalize": _normalize_identity(normalize) if method is not None else None,
    }


def _from_config(config: EncoderConfig) -> dict[str, Any]:
    method = None if config.backend == "sentence-transformers" else config.preprocess
    return _normalised(
        config.backend, config.model, config.pretrained, method, float(config.target_ratio), config.normalize
    )


def _from_info(info: dict[str, Any]) -> dict[str, Any]:
    method, ratio = preprocessing_of(info)
    if method == "targetpad" and ratio is None:
        ratio = DEFAULT_TARGET_RATIO
    return _normalised(
        str(info.get("backend", "")), str(info.get("model", "")), info.get("pretrained"), method, ratio, normalize_of(info)
    )


def _describe(fields: dict[str, Any]) -> str:
    text = f"{fields['backend']} {fields['model']}"
    if fields["pretrained"] is not None:
        text += f" / {fields['pretrained']}"
    if fields["preprocess"] is not None:
        text += f", preprocess {fields['preprocess']}"
        if fields["target_ratio"] is not None:
            text += f" {fields['target_ratio']:g}"
    if fields["normalize"] not in (None, "model"):
        text += f", normalize {_normalize_text(fields['normalize'])}"
    return text


def _normalize_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    mean, std = value
    return f"mean {list(mean)} std {list(std)}"


def _index_command(fields: dict[str, Any]) -> str:
    parts = ["agent-cir index IMAGES_DIR --out NEW_INDEX_DIR", f"--backend {fields['backend']}", f"--model {fields['model']}"]
    if fields["pretrained"] is not None:
        parts.append(f"--pretrained {fields['pretrained']}")
    if fields["preprocess"] is not None:
        parts.append(f"--preprocess {fields['preprocess']}")
    if fields["target_ratio"] is not None:
        parts.append(f"--target-ratio {fields['target_ratio']:g}")
    if fields["normalize"] == "openai":
        parts.append("--normalize openai")
    command = " ".join(parts)
    if fields["normalize"] not in (None, "model", "openai"):
        # explicit constants have no flag: they come from a recipe or an EncoderConfig
        command += f"` with `encoder.normalize: {_normalize_text(fields['normalize'])}"
    return command


def check_compatible(requested: EncoderConfig | dict[str, Any], index_info: dict[str, Any]) -> None:
    """Raise EncoderMismatchError when ``requested`` (a recipe's EncoderConfig, its dict form, or another
    encoder's ``info``) would not reproduce the embeddings of an index built with ``index_info``.

    Compared: backend, model, pretrained weights, preprocessing, the targetpad ratio and the normalisation
    constants (``normalize``). Device, precision and
    batch size only change how an encoder runs and are ignored. The message names every difference and the
    ``agent-cir index`` command that builds a matching index.
    """
    from agent_cir.config import EncoderConfig

    if isinstance(requested, EncoderConfig):
        wanted = _from_config(requested)
    elif "weights" in requested or "dim" in requested:  # an Encoder.info
        wanted = _from_info(requested)
    else:
        wanted = _from_config(EncoderConfig.model_validate(requested))
    built = _from_info(index_info)
    differing = [name for name in COMPARED_FIELDS if wanted[name] != built[name]]
    if not differing:
        return
    raise EncoderMismatchError(
        f"the requested encoder ({_describe(wanted)}) is not the one the index was built with "
        f"({_describe(built)}); they differ in {', '.join(differing)}, so their embeddings are not comparable. "
        f"Re-index the images with the requested encoder: `{_index_command(wanted)}` and use that index, or "
        "keep the index's encoder (--use-index-encoder)."
    )
