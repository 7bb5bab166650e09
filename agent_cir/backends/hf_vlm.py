"""Local transformers chat models (``hf:`` text LLMs, ``hf-vlm:`` vision-language models) as LangChain models.

LangChain's HuggingFace wrapper renders messages to plain text and drops images, so the VLM needs its own
small ``BaseChatModel``: it reads standard LangChain image blocks (OpenAI-style ``image_url`` with a data
URL, or the v1 ``{"type": "image", "base64": ...}`` form), renders the conversation with the processor's
chat template and calls ``generate``. The text model uses the tokenizer's chat template the same way, which
works offline for local folders and GGUF files alike (``from_pretrained(dir, gguf_file=name)``).

Loaded weights are shared by every chat model built for the same files (one copy per process), and
``generate`` runs under a per-weights lock: torch already uses every core for one call.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from agent_cir.errors import AgentCirError

_ROLE_OF = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class LocalModelError(AgentCirError, RuntimeError):
    """A local transformers model could not be loaded or cannot do what was asked."""


@dataclass
class _LoadedWeights:
    model: Any
    processor: Any
    """The tokenizer (text models) or the multimodal processor (VLMs)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


_LOADED: dict[tuple[Any, ...], _LoadedWeights] = {}
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
        raise LocalModelError(f"quantization {quantization!r} needs transformers' BitsAndBytesConfig ({err})") from None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LocalModelError(
            f"quantization: {quantization} needs bitsandbytes: pip install 'agent-cir[quant]', "
            "or remove quantization from the model's configuration"
        ) from None
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
) -> _LoadedWeights:
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
            raise LocalModelError(f"cannot load {spec}: {first_line}. What to do: {hint}") from None
        model.eval()
        loaded = _LoadedWeights(model=model, processor=processor)
        _LOADED[key] = loaded
        return loaded


def _decode_image(block: dict[str, Any]) -> Any:
    """A PIL image from a LangChain image content block (data URL, base64 or a local path/file URL)."""
    from PIL import Image

    url: str | None = None
    data: str | None = None
    if block.get("type") == "image_url":
        image_url = block.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
    else:  # v1 / v0.3 standard blocks: {"type": "image", "base64"|"data"|"url"|"source_type": ...}
        data = block.get("base64") or (block.get("data") if block.get("source_type", "base64") == "base64" else None)
        url = block.get("url") or (block.get("data") if block.get("source_type") == "url" else None)
    raw: bytes
    try:
        if data:
            raw = base64.b64decode(data)
        elif url and url.startswith("data:"):
            raw = base64.b64decode(url.split(",", 1)[1])
        elif url and (url.startswith("file://") or Path(url).is_file()):
            raw = Path(url.removeprefix("file://")).read_bytes()
        else:
            raise LocalModelError(
                f"image block {str(url)[:60]!r}: a local model reads images only as base64 data or a local file; "
                "pass the image bytes (agent_cir.backends.invoke does this for you)"
            )
    except (binascii.Error, IndexError, OSError) as err:
        raise LocalModelError(f"image block could not be decoded ({err})") from None
    image = Image.open(io.BytesIO(raw))
    return image.convert("RGB")


def _is_image_block(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image_url", "image")


def _text_of(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") == "text":
        return str(part.get("text", ""))
    return None


class _LocalTransformersChat(BaseChatModel):
    """Common part of the local chat models: sampling options and ``generate``."""

    model_path: str
    gguf_file: str | None = None
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 512
    seed: int | None = 0
    timeout: float | None = None
    """Passed to generate as max_time (seconds)."""
    device_map: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    num_threads: int | None = None
    """torch CPU threads while generating (restored afterwards); None keeps torch's setting."""
    load_kwargs: dict[str, Any] = {}

    _weights: _LoadedWeights | None = PrivateAttr(default=None)

    vision: ClassVar[bool] = False

    @property
    def weights(self) -> _LoadedWeights:
        if self._weights is None:
            self._weights = load_weights(
                self.model_path,
                vision=self.vision,
                gguf_file=self.gguf_file,
                device_map=self.device_map,
                dtype=self.dtype,
                quantization=self.quantization,
                extra=self.load_kwargs,
            )
        return self._weights

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "gguf_file": self.gguf_file, "temperature": self.temperature}

    def _tokenizer(self) -> Any:
        processor = self.weights.processor
        return getattr(processor, "tokenizer", processor)

    def _prepare_inputs(self, messages: list[BaseMessage]) -> Any:
        raise NotImplementedError

    def prepare_inputs(self, messages: list[BaseMessage]) -> Any:
        """The model inputs (input_ids, attention_mask, pixel_values...) for LangChain messages, without
        generating: for callers that score with the logits (e.g. a yes/no judge). Hold ``weights.lock``."""
        return self._prepare_inputs(messages)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        import torch

        weights = self.weights
        tokenizer = self._tokenizer()
        temperature = float(kwargs.get("temperature", self.temperature) or 0.0)
        generate_kwargs: dict[str, Any] = {"max_new_tokens": int(kwargs.get("max_tokens", self.max_tokens))}
        if temperature > 0:
            generate_kwargs.update(do_sample=True, temperature=temperature)
            if self.top_p is not None:
                generate_kwargs["top_p"] = self.top_p
        else:
            generate_kwargs["do_sample"] = False  # greedy: deterministic at temperature 0
        if self.timeout:
            generate_kwargs["max_time"] = float(self.timeout)
        if stop:
            generate_kwargs.update(stop_strings=stop, tokenizer=tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is not None:
            generate_kwargs["pad_token_id"] = pad_id
        with weights.lock:
            inputs = self._prepare_inputs(messages)
            device = getattr(weights.model, "device", None)
            if device is not None:
                inputs = inputs.to(device)
            if temperature > 0 and self.seed is not None:
                torch.manual_seed(int(self.seed))  # under the lock: a sample depends only on its seed
            previous_threads = torch.get_num_threads()
            if self.num_threads:
                torch.set_num_threads(self.num_threads)
            try:
                with torch.inference_mode():
                    output = weights.model.generate(**inputs, **generate_kwargs)
            finally:
                if self.num_threads:
                    torch.set_num_threads(previous_threads)
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_length:]
        text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        usage = {
            "input_tokens": int(prompt_length),
            "output_tokens": int(new_tokens.shape[0]),
            "total_tokens": int(prompt_length + new_tokens.shape[0]),
        }
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.model_path})
        return ChatResult(generations=[ChatGeneration(message=message)])


class TransformersChatModel(_LocalTransformersChat):
    """``hf:`` a local causal LM (folder, hub id in the local cache, or GGUF file) behind its chat template."""

    @property
    def _llm_type(self) -> str:
        return "agent-cir-hf"

    def _conversation(self, messages: list[BaseMessage]) -> list[dict[str, str]]:
        conversation = []
        for message in messages:
            content = message.content
            parts = content if isinstance(content, list) else [content]
            if any(_is_image_block(part) for part in parts):
                raise LocalModelError(
                    f"hf:{self.model_path} is a text-only model and was sent an image; "
                    "use an image-capable model (hf-vlm:, openai:, ollama:) for this stage"
                )
            text = "\n".join(t for t in (_text_of(part) for part in parts) if t is not None)
            conversation.append({"role": _ROLE_OF.get(message.type, "user"), "content": text})
        return conversation

    def _prepare_inputs(self, messages: list[BaseMessage]) -> Any:
        tokenizer = self._tokenizer()
        conversation = self._conversation(messages)
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        else:  # a base model without a chat template: a plain transcript still works
            prompt = "".join(f"{turn['role'].capitalize()}: {turn['content']}\n" for turn in conversation)
            prompt += "Assistant:"
        return tokenizer(prompt, return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)


class TransformersVLMChatModel(_LocalTransformersChat):
    """``hf-vlm:`` a local VLM (AutoProcessor + AutoModelForImageTextToText) reading LangChain image blocks."""

    vision: ClassVar[bool] = True

    @property
    def _llm_type(self) -> str:
        return "agent-cir-hf-vlm"

    def _prepare_inputs(self, messages: list[BaseMessage]) -> Any:
        processor = self.weights.processor
        conversation: list[dict[str, Any]] = []
        images: list[Any] = []
        for message in messages:
            content = message.content
            parts = content if isinstance(content, list) else [content]
            blocks: list[dict[str, Any]] = []
            for part in parts:
                if _is_image_block(part):
                    images.append(_decode_image(part))
                    blocks.append({"type": "image"})
                else:
                    text = _text_of(part)
                    if text:
                        blocks.append({"type": "text", "text": text})
            conversation.append({"role": _ROLE_OF.get(message.type, "user"), "content": blocks})
        if getattr(processor, "chat_template", None) is None:
            raise LocalModelError(
                f"hf-vlm:{self.model_path}: the processor has no chat template; save one with the processor "
                "(processor.chat_template = ...) so that image placeholders are placed correctly"
            )
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=prompt, images=images or None, return_tensors="pt")
        inputs.pop("token_type_ids", None)  # BERT-style tokenizers add it; causal VLMs do not take it
        return inputs
