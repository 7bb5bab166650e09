"""Local transformers chat models (``hf:`` text LLMs, ``hf-vlm:`` vision-language models) as LangChain models.

LangChain's HuggingFace wrapper renders messages to plain text and drops images, so the VLM needs its own
small ``BaseChatModel``: it reads standard LangChain image blocks (OpenAI-style ``image_url`` with a data
URL, or the v1 ``{"type": "image", "base64": ...}`` form), renders the conversation with the processor's
chat template and calls ``generate``. The text model uses the tokenizer's chat template the same way, which
works offline for local folders and GGUF files alike (``from_pretrained(dir, gguf_file=name)``).

Loaded weights are shared by every chat model built for the same files (one copy per process). A list of
conversations (LangChain's ``batch``) becomes padded batched ``generate`` calls of ``batch_size`` rows; each
call runs under a per-weights lock (torch already uses every core for one call).
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, run_in_executor
from pydantic import Field, PrivateAttr

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
            raise LocalModelError(f"cannot load {spec}: {first_line}. What to do: {hint}") from err
        model.eval()
        _prepare_padding(processor)
        loaded = _LoadedWeights(model=model, processor=processor)
        _LOADED[key] = loaded
        return loaded


def _prepare_padding(processor: Any) -> None:
    """Batched generation pads on the left (new tokens then start in the same column for every row); a
    tokenizer without a pad token pads with its end-of-sequence token, as generate does."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def _decode_image(block: dict[str, Any]) -> Any:
    """A PIL image from a LangChain image content block (data URL, base64 or a local path/file URL)."""
    from agent_cir.index.image_memo import decoded
    from agent_cir.index.reasons import BadImageError

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
        raise LocalModelError(f"image block could not be decoded ({err})") from err
    try:
        return decoded(raw)  # the one decoder (EXIF, pixel limits), once per distinct image (image_memo)
    except BadImageError as err:
        raise LocalModelError(f"image block is not a usable image ({err})") from err


def _is_image_block(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image_url", "image")


def _text_of(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") == "text":
        return str(part.get("text", ""))
    return None


@dataclass
class _Rendered:
    """One conversation as the model sees it: the prompt text (chat template applied) and its images."""

    prompt: str
    images: list[Any]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _WaitingCall:
    """One ``invoke`` waiting to be answered in a shared ``generate`` (see ``_generate``)."""

    def __init__(self, owner: Any, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> None:
        self.messages, self.stop, self.kwargs = messages, stop, kwargs
        self.settings = repr((id(owner), stop, sorted(kwargs.items(), key=lambda item: item[0])))
        self.done = threading.Event()
        self.result: ChatResult | BaseException | None = None


class _LocalTransformersChat(BaseChatModel):
    """Common part of the local chat models: sampling options and one padded ``generate`` per batch.

    ``invoke`` is a batch of one; LangChain's ``batch`` / ``abatch`` send the whole list through
    ``generate_many``: conversations sorted by length (fewest pad tokens), ``batch_size`` at a time, left-padded
    so that every row's new tokens start at the same column. Under greedy decoding a row's answer does not
    depend on its batch neighbours (the tests check it token for token). In floating point that holds up to
    kernel rounding: another batch shape or thread count can round differently and flip a near-tie (seen once
    with SmolLM2 at batch 16 on 2 oversubscribed threads; never at 1 thread). With sampling the batch shares
    one seeded random stream, so a sampled answer depends on the batch it was drawn in (as on vLLM); each
    call is still reproducible.
    """

    model_path: str
    gguf_file: str | None = None
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 512
    num_beams: int | None = None
    """Beam search width (None or 1: no beam search). LAVIS blip2_t5 generate defaults to 5 beams."""
    seed: int | None = 0
    timeout: float | None = None
    """Passed to generate as max_time (seconds)."""
    device_map: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    num_threads: int | None = None
    """torch CPU threads while generating (restored afterwards); None keeps torch's setting."""
    batch_size: int = Field(8, ge=1)
    """Conversations per padded ``generate`` call in ``batch``."""
    load_kwargs: dict[str, Any] = {}

    _weights: _LoadedWeights | None = PrivateAttr(default=None)
    _waiting: list[_WaitingCall] = PrivateAttr(default_factory=list)
    _waiting_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _leader: threading.Lock = PrivateAttr(default_factory=threading.Lock)

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
        return {"model_path": self.model_path, "gguf_file": self.gguf_file, "temperature": self.temperature,
                "num_beams": self.num_beams}

    def _tokenizer(self) -> Any:
        processor = self.weights.processor
        return getattr(processor, "tokenizer", processor)

    # ---------------------------------------------------------------- inputs
    def _render(self, messages: list[BaseMessage]) -> _Rendered:
        raise NotImplementedError

    def _encode(self, rendered: list[_Rendered]) -> Any:
        """Padded model inputs for several rendered conversations (one row each, left padding)."""
        raise NotImplementedError

    def prepare_inputs(self, messages: list[BaseMessage]) -> Any:
        """The model inputs (input_ids, attention_mask, pixel_values...) for LangChain messages, without
        generating: for callers that score with the logits (e.g. a yes/no judge). Hold ``weights.lock``."""
        return self._encode([self._render(messages)])

    def prepare_inputs_many(self, conversations: list[list[BaseMessage]]) -> Any:
        """Padded model inputs for several conversations at once (one row each, left padding), for one batched
        scoring forward. Hold ``weights.lock``."""
        return self._encode([self._render(messages) for messages in conversations])

    def _prepare_inputs(self, messages: list[BaseMessage]) -> Any:
        return self.prepare_inputs(messages)

    # ---------------------------------------------------------------- generation
    def _generate_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[dict[str, Any], float]:
        tokenizer = self._tokenizer()
        temperature = float(kwargs.get("temperature", self.temperature) or 0.0)
        generate_kwargs: dict[str, Any] = {"max_new_tokens": int(kwargs.get("max_tokens", self.max_tokens))}
        if temperature > 0:
            generate_kwargs.update(do_sample=True, temperature=temperature)
            if self.top_p is not None:
                generate_kwargs["top_p"] = self.top_p
        else:
            generate_kwargs["do_sample"] = False  # greedy (or beam search): deterministic at temperature 0
        if self.num_beams and self.num_beams > 1:
            generate_kwargs["num_beams"] = int(self.num_beams)
        if self.timeout:
            generate_kwargs["max_time"] = float(self.timeout)
        if stop:
            generate_kwargs.update(stop_strings=stop, tokenizer=tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is not None:
            generate_kwargs["pad_token_id"] = pad_id
        return generate_kwargs, temperature

    def _eos_ids(self) -> set[int]:
        config_eos = getattr(getattr(self.weights.model, "generation_config", None), "eos_token_id", None)
        ids = set(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
        ids.add(self._tokenizer().eos_token_id)
        return {int(i) for i in ids if i is not None}

    def _is_encoder_decoder(self) -> bool:
        config = self.weights.model.config
        text_config = getattr(config, "text_config", None)
        return bool(getattr(config, "is_encoder_decoder", False) or getattr(text_config, "is_encoder_decoder", False))

    def _run_generate(self, inputs: Any, generate_kwargs: dict[str, Any], temperature: float) -> Any:
        import torch

        weights = self.weights
        device = getattr(weights.model, "device", None)
        if device is not None:
            inputs = inputs.to(device)
        if temperature > 0 and self.seed is not None:
            torch.manual_seed(int(self.seed))  # under the lock: a call's samples depend only on its seed
        previous_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                return weights.model.generate(**inputs, **generate_kwargs)
        finally:
            if self.num_threads:
                torch.set_num_threads(previous_threads)

    def _row_result(self, output: Any, inputs: Any, row: int, pad_id: int | None, eos_ids: set[int]) -> ChatResult:
        """One row of a padded generate output -> its answer (new tokens up to the first end-of-sequence)."""
        if self._is_encoder_decoder():
            new_tokens = output[row, 1:].tolist()  # the decoder output starts with its start token
        else:
            new_tokens = output[row, inputs["input_ids"].shape[1] :].tolist()
        end = next((i + 1 for i, token in enumerate(new_tokens) if token in eos_ids), None)
        if end is not None:
            new_tokens = new_tokens[:end]
        else:  # stopped by a stop string or the token limit: what follows in the padded batch is padding
            while new_tokens and new_tokens[-1] == pad_id:
                new_tokens.pop()
        text = self._tokenizer().decode(new_tokens, skip_special_tokens=True).strip()
        mask = inputs.get("attention_mask")
        prompt_tokens = int(mask[row].sum()) if mask is not None else int(inputs["input_ids"].shape[1])
        usage = {
            "input_tokens": prompt_tokens,
            "output_tokens": len(new_tokens),
            "total_tokens": prompt_tokens + len(new_tokens),
        }
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.model_path})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunks(self, rendered: list[_Rendered | BaseException]) -> list[list[int]]:
        """Indices of the renderable conversations, longest first, ``batch_size`` at a time; conversations with
        and without images never share a call (a processor takes images for all rows or none)."""
        usable = [i for i, item in enumerate(rendered) if isinstance(item, _Rendered)]
        tokenizer = self._tokenizer()
        lengths = {i: len(tokenizer(rendered[i].prompt, add_special_tokens=False)["input_ids"]) for i in usable}  # type: ignore[union-attr]
        order = sorted(usable, key=lambda i: (len(rendered[i].images) > 0, lengths[i]), reverse=True)  # type: ignore[union-attr]
        chunks: list[list[int]] = []
        for index in order:
            has_images = len(rendered[index].images) > 0  # type: ignore[union-attr]
            if chunks and len(chunks[-1]) < self.batch_size and (len(rendered[chunks[-1][0]].images) > 0) == has_images:  # type: ignore[union-attr]
                chunks[-1].append(index)
            else:
                chunks.append([index])
        return chunks

    def generate_many(
        self, conversations: list[list[BaseMessage]], stop: list[str] | None = None, **kwargs: Any
    ) -> list[ChatResult | BaseException]:
        """Answer every conversation with as few padded ``generate`` calls as ``batch_size`` allows. A
        conversation that cannot be rendered (a bad image, an image sent to a text model) gets its exception
        in its slot; the others are answered. A failing ``generate`` fails its whole chunk."""
        rendered: list[_Rendered | BaseException] = []
        for messages in conversations:
            try:
                rendered.append(self._render(messages))
            except Exception as err:  # noqa: BLE001 - reported in this conversation's slot
                rendered.append(err)
        results: list[ChatResult | BaseException] = [
            item if isinstance(item, BaseException) else None for item in rendered  # type: ignore[misc]
        ]
        generate_kwargs, temperature = self._generate_kwargs(stop, kwargs)
        pad_id = generate_kwargs.get("pad_token_id")
        eos_ids = self._eos_ids()
        for chunk in self._chunks(rendered):
            try:
                with self.weights.lock:
                    inputs = self._encode([rendered[i] for i in chunk])  # type: ignore[misc]
                    output = self._run_generate(inputs, generate_kwargs, temperature)
                for row, index in enumerate(chunk):
                    results[index] = self._row_result(output, inputs, row, pad_id, eos_ids)
            except Exception as err:  # noqa: BLE001 - every conversation of the chunk reports it
                for index in chunk:
                    results[index] = err
        return results

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """One conversation. Calls that arrive from several threads while a ``generate`` runs (the pipeline
        runs a chunk's model calls concurrently, up to ``max_concurrency``) are answered together: whichever
        caller finds the model free takes up to ``batch_size`` waiting conversations with the same generation
        settings into one padded ``generate`` (request-level batching, as a serving engine does). Greedy
        answers do not depend on their batch neighbours (tested); sampled calls run alone."""
        if float(kwargs.get("temperature", self.temperature) or 0.0) > 0.0:
            # a sampled answer depends on its batch (one seeded stream): keep it reproducible, alone
            (alone,) = self.generate_many([messages], stop=stop, **kwargs)
            if isinstance(alone, BaseException):
                raise alone
            return alone
        request = _WaitingCall(self, messages, stop, kwargs)
        with self._waiting_lock:
            self._waiting.append(request)
        while not request.done.is_set():
            if self._leader.acquire(timeout=0.05):
                try:
                    if not request.done.is_set():
                        self._answer_waiting(request)
                finally:
                    self._leader.release()
            else:
                request.done.wait(0.01)
        if isinstance(request.result, BaseException):
            raise request.result
        return request.result  # type: ignore[return-value]

    def _answer_waiting(self, own: _WaitingCall) -> None:
        # Sampling copies of this model (another temperature) share the waiting list: a caller answers only
        # calls made on its own instance with its own generation settings, its own call among them.
        with self._waiting_lock:
            same = [call for call in self._waiting if call.settings == own.settings]
            others = [call for call in same if call is not own][: self.batch_size - 1]
            taken = [own, *others] if own in self._waiting else others
            if not taken:
                return
            first = taken[0]
            for call in taken:
                self._waiting.remove(call)
        try:
            results = self.generate_many([call.messages for call in taken], stop=first.stop, **first.kwargs)
        except BaseException as err:  # noqa: BLE001 - each waiting caller re-raises it
            results = [err] * len(taken)
        for call, result in zip(taken, results):
            call.result = result
            call.done.set()

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """LangChain's ``batch`` as padded batched generation (LangChain's default would ``invoke`` each input
        in a thread, which for one set of local weights means one prompt at a time). Callbacks of the first
        config see one chat-model run per input; ``max_concurrency`` is not used (``batch_size`` is)."""
        if not inputs:
            return []
        first = get_config_list(config, len(inputs))[0]
        stop = kwargs.pop("stop", None)
        conversations = [self._convert_input(item).to_messages() for item in inputs]
        callback_manager = CallbackManager.configure(
            first.get("callbacks"), self.callbacks, self.verbose, first.get("tags"), self.tags,
            first.get("metadata"), self.metadata,
        )
        run_managers = callback_manager.on_chat_model_start(
            self._serialized,
            conversations,
            invocation_params=self._get_invocation_params(stop=stop, **kwargs),
            options={"stop": stop},
            name=first.get("run_name"),
            batch_size=len(conversations),
        )
        if self.rate_limiter is not None:
            self.rate_limiter.acquire(blocking=True)  # one generate call set is one request
        results = self.generate_many(conversations, stop=stop, **kwargs)
        answers: list[Any] = []
        for manager, result in zip(run_managers, results):
            if isinstance(result, BaseException):
                manager.on_llm_error(result)
                if not return_exceptions:
                    raise result
                answers.append(result)
            else:
                manager.on_llm_end(LLMResult(generations=[result.generations]))
                answers.append(result.generations[0].message)
        return answers

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        first = get_config_list(config, len(inputs))[0] if inputs else None
        return await run_in_executor(first, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs)


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

    def _render(self, messages: list[BaseMessage]) -> _Rendered:
        tokenizer = self._tokenizer()
        conversation = self._conversation(messages)
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        else:  # a base model without a chat template: a plain transcript still works
            prompt = "".join(f"{turn['role'].capitalize()}: {turn['content']}\n" for turn in conversation)
            prompt += "Assistant:"
        return _Rendered(prompt=prompt, images=[])

    def _encode(self, rendered: list[_Rendered]) -> Any:
        return self._tokenizer()(
            [item.prompt for item in rendered],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            return_token_type_ids=False,
        )


_PLAIN_PROMPT_PROCESSORS = frozenset({"Blip2Processor", "InstructBlipProcessor"})
"""Processors that place the image tokens themselves (before the text) and whose models were trained on a
plain prompt, not a chat: BLIP-2 (CIReVL's captioner) and InstructBLIP. One image per conversation."""


class TransformersVLMChatModel(_LocalTransformersChat):
    """``hf-vlm:`` a local VLM (AutoProcessor + AutoModelForImageTextToText) reading LangChain image blocks.

    Chat VLMs (LLaVA, Idefics3 / SmolVLM, Qwen2-VL, Qwen2.5-VL ...) get the processor's chat template; BLIP-2
    and InstructBLIP get the conversation's text as one plain prompt with its single image.
    """

    vision: ClassVar[bool] = True

    @property
    def _llm_type(self) -> str:
        return "agent-cir-hf-vlm"

    def _render(self, messages: list[BaseMessage]) -> _Rendered:
        processor = self.weights.processor
        conversation: list[dict[str, Any]] = []
        images: list[Any] = []
        texts: list[str] = []
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
                        texts.append(text)
            conversation.append({"role": _ROLE_OF.get(message.type, "user"), "content": blocks})
        if type(processor).__name__ in _PLAIN_PROMPT_PROCESSORS:
            if len(images) != 1:
                raise LocalModelError(
                    f"hf-vlm:{self.model_path} ({type(processor).__name__}) answers about exactly one image per "
                    f"call; this conversation has {len(images)}"
                )
            return _Rendered(prompt="\n".join(texts), images=images)
        if getattr(processor, "chat_template", None) is None:
            raise LocalModelError(
                f"hf-vlm:{self.model_path}: the processor has no chat template; save one with the processor "
                "(processor.chat_template = ...) so that image placeholders are placed correctly"
            )
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return _Rendered(prompt=prompt, images=images)

    def _encode(self, rendered: list[_Rendered]) -> Any:
        with_images = [item.images for item in rendered if item.images]
        if with_images and len(with_images) != len(rendered):
            raise LocalModelError("a batch mixes conversations with and without images")  # _chunks prevents it
        # Nested per conversation: Idefics3 / SmolVLM need it to know whose images are whose; the other
        # processors flatten it in order, which is what their image placeholders expect.
        inputs = self.weights.processor(
            text=[item.prompt for item in rendered],
            images=with_images or None,
            padding=True,
            return_tensors="pt",
        )
        inputs.pop("token_type_ids", None)  # BERT-style tokenizers add it; causal VLMs do not take it
        return inputs
