"""Loading local transformers weights for ``hf:`` / ``hf-vlm:``: a causal LM + tokenizer or a VLM + processor,
with device_map, dtype and bitsandbytes quantization, once per process (every chat model built for the same
files shares them), padded on the left for batched generation."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_cir.backends.errors import LocalModelError


@dataclass
class LoadedWeights:
    model: Any
    processor: Any
    """The tokenizer (text models) or the multimodal processor (VLMs)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


_LOADED: dict[tuple[Any, ...], LoadedWeights] = {}
_LOADED_LOCK = threading.Lock()


def split_gguf_path(model_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``hf:/models/x.Q4.gguf`` means folder ``/models`` with ``gguf_file='x.Q4.gguf'``."""
    if gguf_file is None and model_path.lower().endswith(".gguf"):
        path = Path(model_path).expanduser()
        return str(path.parent), path.name
    return model_path, gguf_file


def _torch_dtype(name: str | None) -> Any:
    if name in (None, "auto"):
        return "auto" if name == "auto" else None
    import torch

    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype):
        raise LocalModelError(f"dtype {name!r} is not a torch dtype; use float32, bfloat16, float16 or auto")
    return dtype


def _quantization_config(quantization: str | None) -> Any:
    if quantization is None:
        return None
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as err:  # pragma: no cover - transformers always has it
        raise LocalModelError(f"quantization {quantization!r} needs transformers' BitsAndBytesConfig ({err})") from err
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise LocalModelError(
            f"quantization: {quantization} needs bitsandbytes: pip install 'agent-cir[quant]', "
            "or remove quantization from the model's configuration"
        ) from err
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_weights(
    model_path: str,
    *,
    vision: bool,
    gguf_file: str | None = None,
    device_map: str | None = None,
    dtype: str | None = None,
    quantization: str | None = None,
    extra: dict[str, Any] | None = None,
) -> LoadedWeights:
    """Load (once per process) a local causal LM + tokenizer, or a VLM + processor. Clear errors when missing."""
    model_path, gguf_file = split_gguf_path(model_path, gguf_file)
    extra = dict(extra or {})
    key = (model_path, vision, gguf_file, device_map, dtype, quantization, tuple(sorted((k, repr(v)) for k, v in extra.items())))
    with _LOADED_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        kwargs: dict[str, Any] = dict(extra)
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        torch_dtype = _torch_dtype(dtype)
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if device_map:
            kwargs["device_map"] = device_map
        quant = _quantization_config(quantization)
        if quant is not None:
            kwargs["quantization_config"] = quant
        spec = f"{'hf-vlm' if vision else 'hf'}:{model_path}" + (f" (gguf_file={gguf_file})" if gguf_file else "")
        try:
            if vision:
                from transformers import AutoModelForImageTextToText, AutoProcessor

                processor = AutoProcessor.from_pretrained(model_path, **({"gguf_file": gguf_file} if gguf_file else {}))
                model = AutoModelForImageTextToText.from_pretrained(model_path, **kwargs)
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                processor = AutoTokenizer.from_pretrained(model_path, **({"gguf_file": gguf_file} if gguf_file else {}))
                model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
        except (OSError, ValueError, ImportError, KeyError) as err:
            hint = (
                "give a local folder (or .gguf file) that holds the weights, or download them first with "
                f"`hf download {model_path}` (offline mode HF_HUB_OFFLINE=1 only reads local files)"
            )
            if vision:
                hint += "; hf-vlm: needs a model that AutoModelForImageTextToText and AutoProcessor can load"
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LocalModelError(f"cannot load {spec}: {first_line}. What to do: {hint}") from err
        model.eval()
        _prepare_padding(processor)
        loaded = LoadedWeights(model=model, processor=processor)
        _LOADED[key] = loaded
        return loaded


def _prepare_padding(processor: Any) -> None:
    """Batched generation pads on the left (new tokens then start in the same column for every row); a
    tokenizer without a pad token pads with its end-of-sequence token, as generate does."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
