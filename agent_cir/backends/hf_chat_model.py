"""The common part of the local transformers chat models, as a LangChain ``BaseChatModel``: sampling options,
one padded ``generate`` per batch (LangChain's ``batch``), and request-level batching of concurrent ``invoke``
calls. The model kinds (``hf_models.py``) render and encode the conversations; ``hf_generation.py`` runs and decodes.

Loaded weights are shared by every chat model built for the same files (``hf_weights.py``). A list of
conversations becomes padded batched ``generate`` calls of ``batch_size`` rows; each call runs under a
per-weights lock (torch already uses every core for one call).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, run_in_executor
from pydantic import Field, PrivateAttr

from agent_cir.backends.hf_generation import (batch_chunks, end_of_sequence_ids, generation_settings,
                                              is_encoder_decoder, row_answer, run_generate)
from agent_cir.backends.hf_inputs import RenderedConversation
from agent_cir.backends.hf_weights import LoadedWeights, load_weights


class _WaitingCall:
    """One ``invoke`` waiting to be answered in a shared ``generate`` (see ``_generate``)."""

    def __init__(self, owner: Any, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> None:
        self.messages, self.stop, self.kwargs = messages, stop, kwargs
        self.settings = repr((id(owner), stop, sorted(kwargs.items(), key=lambda item: item[0])))
        self.done = threading.Event()
        self.result: ChatResult | BaseException | None = None


class LocalTransformersChat(BaseChatModel):
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

    _weights: LoadedWeights | None = PrivateAttr(default=None)
    _waiting: list[_WaitingCall] = PrivateAttr(default_factory=list)
    _waiting_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _leader: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    vision: ClassVar[bool] = False

    @property
    def weights(self) -> LoadedWeights:
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
    def _render(self, messages: list[BaseMessage]) -> RenderedConversation:
        raise NotImplementedError

    def _encode(self, rendered: list[RenderedConversation]) -> Any:
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
    def _is_encoder_decoder(self) -> bool:
        return is_encoder_decoder(self.weights.model)

    def _run_generate(self, inputs: Any, generate_kwargs: dict[str, Any], temperature: float) -> Any:
        return run_generate(self.weights.model, inputs, generate_kwargs, temperature=temperature, seed=self.seed,
                            num_threads=self.num_threads)

    def generate_many(
        self, conversations: list[list[BaseMessage]], stop: list[str] | None = None, **kwargs: Any
    ) -> list[ChatResult | BaseException]:
        """Answer every conversation with as few padded ``generate`` calls as ``batch_size`` allows. A
        conversation that cannot be rendered (a bad image, an image sent to a text model) gets its exception
        in its slot; the others are answered. A failing ``generate`` fails its whole chunk."""
        rendered: list[RenderedConversation | BaseException] = []
        for messages in conversations:
            try:
                rendered.append(self._render(messages))
            except Exception as err:  # noqa: BLE001 - reported in this conversation's slot
                rendered.append(err)
        results: list[ChatResult | BaseException] = [
            item if isinstance(item, BaseException) else None for item in rendered  # type: ignore[misc]
        ]
        tokenizer = self._tokenizer()
        temperature = float(kwargs.get("temperature", self.temperature) or 0.0)
        generate_kwargs = generation_settings(
            tokenizer, temperature=temperature, max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            top_p=self.top_p, num_beams=self.num_beams, timeout=self.timeout, stop=stop,
        )
        pad_id = generate_kwargs.get("pad_token_id")
        eos_ids = end_of_sequence_ids(self.weights.model, tokenizer)
        encoder_decoder = self._is_encoder_decoder()
        for chunk in batch_chunks(rendered, tokenizer, self.batch_size):
            try:
                with self.weights.lock:
                    inputs = self._encode([rendered[i] for i in chunk])  # type: ignore[misc]
                    output = self._run_generate(inputs, generate_kwargs, temperature)
                for row, index in enumerate(chunk):
                    results[index] = row_answer(output, inputs, row, tokenizer=tokenizer, pad_id=pad_id,
                                                eos_ids=eos_ids, encoder_decoder=encoder_decoder,
                                                model_name=self.model_path)
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
