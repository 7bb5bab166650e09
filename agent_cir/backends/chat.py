"""One spec string (or ``models:`` block) -> a LangChain chat model, wrapped in a ``ChatModelHandle``.

Specs:
  ``openai:MODEL``        ChatOpenAI; ``base_url`` for vLLM, SGLang, llama.cpp server or any OpenAI-compatible
                          server. Key: ``api_key``, else ``$api_key_env``, else ``$OPENAI_API_KEY``; with a
                          ``base_url`` and no key a placeholder is sent (local servers ignore it).
  ``ollama:MODEL``        ChatOllama (``pip install 'agent-cir[ollama]'``); ``base_url`` defaults to Ollama's.
  ``hf:ID_OR_PATH``       local transformers text LLM; a ``.gguf`` path or ``gguf_file`` loads GGUF weights.
  ``hf-vlm:ID_OR_PATH``   local transformers VLM (AutoProcessor + AutoModelForImageTextToText): chat VLMs
                          (LLaVA, Idefics3 / SmolVLM, Qwen2-VL, Qwen2.5-VL) and BLIP-2 / InstructBLIP.
                          For both local backends ``extra`` goes to ``from_pretrained`` (e.g. revision), and
                          ``chat.batch(list)`` runs padded batched ``generate`` calls of ``batch_size`` rows.
  ``fake:NAME``           scripted answers for tests and demos: ``extra: {responses: [...]}`` are returned in
                          order (cycling when ``cycle`` is true, the default); from Python, ``respond`` may be a
                          function of the messages instead. No network, no weights.

Retries with backoff come from the client (ChatOpenAI ``max_retries``) or LangChain's ``.with_retry``
(applied by ``invoke``); the rate limit is LangChain's ``InMemoryRateLimiter``; ``max_concurrency`` bounds
how many calls one model serves at once across all pipeline threads.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from agent_cir.config import ModelConfig
from agent_cir.errors import AgentCirError

LOCAL_KEY_PLACEHOLDER = "not-needed"


class BackendError(AgentCirError, ValueError):
    """A model spec or its options are invalid, or the backend's package is missing."""


class ScriptedChatModel(BaseChatModel):
    """``fake:`` answers from a list (or a function of the messages); records what it was sent.

    Unlike LangChain's FakeListChatModel it accepts image blocks, reports token usage (whitespace tokens)
    and keeps the messages it received, so tests can assert on rendered prompts and attached images.
    """

    responses: list[str] = []
    cycle: bool = True
    respond: Callable[[list[BaseMessage]], str] | None = None
    """Python-only alternative to ``responses``: compute the answer from the messages."""
    model_name: str = "fake"
    temperature: float = 0.0
    seed: int | None = 0

    # One mutable script state, shared by sampling copies (model_copy is shallow), so that copies made for
    # another temperature continue the same script and record into the same list.
    _script: dict[str, Any] = PrivateAttr(
        default_factory=lambda: {"index": 0, "received": [], "lock": threading.Lock()}
    )

    @property
    def _llm_type(self) -> str:
        return "agent-cir-fake"

    @property
    def received(self) -> list[list[BaseMessage]]:
        """Every message list this model (or a sampling copy of it) was called with."""
        return self._script["received"]

    def _next_response(self, messages: list[BaseMessage]) -> str:
        script = self._script
        with script["lock"]:
            script["received"].append(list(messages))
        if self.respond is not None:
            return self.respond(messages)  # outside the lock: concurrent calls really overlap
        with script["lock"]:
            if script["index"] >= len(self.responses):
                if not self.cycle:
                    raise BackendError(f"fake:{self.model_name} ran out of scripted responses ({len(self.responses)})")
                script["index"] = 0
            answer = self.responses[script["index"]]
            script["index"] += 1
            return answer

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self._next_response(messages)
        prompt_words = sum(len(_text_words(m.content)) for m in messages)
        usage = {"input_tokens": prompt_words, "output_tokens": len(text.split()), "total_tokens": 0}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.model_name})
        return ChatResult(generations=[ChatGeneration(message=message)])


def _text_words(content: Any) -> list[str]:
    if isinstance(content, str):
        return content.split()
    parts = content if isinstance(content, list) else [content]
    return [w for p in parts if isinstance(p, dict) and p.get("type") == "text" for w in str(p.get("text", "")).split()]


@dataclass(frozen=True)
class BackendCapabilities:
    """What a chat backend can do, declared once in ``CHAT_BACKENDS``; callers ask these instead of the spec prefix."""

    images: bool
    """Takes images in its messages (a text-only local LLM does not)."""
    structured_output: bool
    """Answers a JSON schema through LangChain's ``with_structured_output``."""
    logprobs: bool
    """Its answers can carry ``top_logprobs`` (the OpenAI chat-completions shape)."""
    next_token_logits: bool
    """In-process model whose next-token logits can be read (P(yes) for pointwise judging and verifying)."""
    batched_generation: bool
    """``chat.batch(inputs)`` is one padded ``generate`` per ``batch_size`` inputs (in-process models); otherwise
    a batch is concurrent requests."""
    remote: bool
    """Calls go to a server: ``timeout`` and the wall-clock call deadline apply."""
    invoke_retries: bool
    """``invoke`` adds ``max_retries`` retries (LangChain ``.with_retry``). False where the client retries by itself
    (ChatOpenAI ``max_retries``) or a retry could only repeat the answer (in-process and scripted models)."""


UNKNOWN_BACKEND = BackendCapabilities(images=True, structured_output=False, logprobs=False, next_token_logits=False,
                                      batched_generation=False, remote=False, invoke_retries=True)
"""An injected LangChain chat model of a kind not in ``CHAT_BACKENDS``: assume nothing beyond plain calls."""


@dataclass
class ChatModelHandle:
    """A chat model plus what the pipeline needs to call, cache and trace it."""

    chat: BaseChatModel
    backend: str
    model: str
    """Model id for traces and cache keys (``gpt-4o-mini``, a local path, ``fake``)."""
    config: ModelConfig
    supports_structured_output: bool
    retry_attempts: int = 0
    """Extra attempts ``invoke`` adds with ``.with_retry`` (0 where the client retries by itself)."""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """What else decides the answers (endpoint, GGUF file, quantization): part of cache keys."""
    structured_disabled: bool = False
    """Set after the backend rejected structured output once; later calls go straight to plain text."""
    _semaphore: threading.BoundedSemaphore = field(init=False, repr=False)
    _variants: dict[tuple[Any, ...], BaseChatModel] = field(init=False, repr=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._semaphore = threading.BoundedSemaphore(self.config.max_concurrency)

    @property
    def id(self) -> str:
        return f"{self.backend}:{self.model}"

    @property
    def capabilities(self) -> BackendCapabilities:
        """What this model's backend can do (``CHAT_BACKENDS``; an unknown injected model: ``UNKNOWN_BACKEND``)."""
        entry = CHAT_BACKENDS.get(self.backend)
        return entry.capabilities if entry is not None else UNKNOWN_BACKEND

    @property
    def failure_advice(self) -> str | None:
        """What to check when a call fails, from the backend registry (None: a server's advice)."""
        entry = CHAT_BACKENDS.get(self.backend)
        return entry.failure_advice if entry is not None else None

    @property
    def batches_natively(self) -> bool:
        """True for in-process models (hf:, hf-vlm:), whose ``chat.batch(inputs)`` is one padded generate per
        ``config.batch_size`` inputs; servers answer ``chat.batch(inputs, config={"max_concurrency": ...})``
        with concurrent requests instead."""
        return self.capabilities.batched_generation

    @property
    def slot(self) -> threading.BoundedSemaphore:
        """Held while a call runs: at most ``max_concurrency`` calls at once for this model."""
        return self._semaphore

    def sampling_params(self, temperature: float | None = None, sample_index: int = 0) -> dict[str, Any]:
        """The parameters that decide an answer; a distinct seed per sample so that N samples differ."""
        seed = self.config.seed
        if seed is not None and sample_index:
            seed = seed + sample_index
        return {
            "temperature": self.config.temperature if temperature is None else float(temperature),
            "top_p": self.config.top_p,
            "max_tokens": self.config.max_tokens,
            "seed": seed,
            "sample_index": sample_index,
        }

    def variant(self, temperature: float, seed: int | None) -> BaseChatModel:
        """The chat model with another temperature/seed (a shallow copy; clients and weights are shared)."""
        update: dict[str, Any] = {}
        fields = type(self.chat).model_fields
        if "temperature" in fields and getattr(self.chat, "temperature", None) != temperature:
            update["temperature"] = temperature
        if "seed" in fields and getattr(self.chat, "seed", None) != seed:
            update["seed"] = seed
        if not update:
            return self.chat
        key = tuple(sorted(update.items()))
        with self._lock:
            if key not in self._variants:
                self._variants[key] = self.chat.model_copy(update=update)
            return self._variants[key]


def parse_spec(spec: str) -> tuple[str, str]:
    backend, sep, model = spec.partition(":")
    backend = backend.strip().lower()
    if not sep or backend not in CHAT_BACKENDS:
        raise BackendError(
            f"model spec {spec!r}: expected BACKEND:MODEL with BACKEND one of {', '.join(CHAT_BACKENDS)} "
            "(e.g. openai:gpt-4o-mini, ollama:qwen2.5:7b, hf:Qwen/Qwen2.5-1.5B-Instruct, hf-vlm:./my-vlm, fake:)"
        )
    model = model.strip()
    if not model and backend != "fake":
        raise BackendError(f"model spec {spec!r}: the model name after '{backend}:' is empty")
    return backend, model or "fake"


def _rate_limiter(config: ModelConfig) -> Any:
    if not config.requests_per_second:
        return None
    from langchain_core.rate_limiters import InMemoryRateLimiter

    return InMemoryRateLimiter(
        requests_per_second=config.requests_per_second, check_every_n_seconds=0.05, max_bucket_size=1
    )


def _deadline_http_client(seconds: float) -> Any:
    """An httpx client whose every request (headers and body) must finish within ``seconds`` of wall-clock
    time. httpx's own timeout is per read, so a server that trickles a byte now and then never trips it;
    ``invoke`` enforces the same deadline from outside, and this stops the abandoned request too."""
    import httpx

    class _DeadlineStream(httpx.SyncByteStream):
        def __init__(self, inner: Any, deadline: float, url: str) -> None:
            self._inner, self._deadline, self._url = inner, deadline, url

        def __iter__(self) -> Any:
            for chunk in self._inner:
                if time.monotonic() > self._deadline:
                    raise httpx.ReadTimeout(f"{self._url}: no complete answer within {seconds:g} s")
                yield chunk

        def close(self) -> None:
            self._inner.close()

    class _DeadlineTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            deadline = time.monotonic() + seconds
            response = super().handle_request(request)
            response.stream = _DeadlineStream(response.stream, deadline, str(request.url.copy_with(query=None)))
            return response

    return httpx.Client(transport=_DeadlineTransport(), timeout=seconds)


def _openai(config: ModelConfig, model: str) -> ChatModelHandle:
    from langchain_openai import ChatOpenAI

    api_key = config.api_key
    if api_key is None and config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if api_key is None:
            raise BackendError(
                f"{config.spec}: api_key_env names ${config.api_key_env}, which is not set; export it or set api_key"
            )
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if api_key is None:
        if not config.base_url:
            raise BackendError(
                f"{config.spec}: no API key; set $OPENAI_API_KEY (or api_key / api_key_env in the model's "
                "configuration), or give base_url of a local OpenAI-compatible server"
            )
        api_key = LOCAL_KEY_PLACEHOLDER  # ChatOpenAI insists on a key; local servers ignore it
    kwargs: dict[str, Any] = {
        "model": model,
        "api_key": api_key,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "timeout": config.timeout,
        "max_retries": config.max_retries,
        "rate_limiter": _rate_limiter(config),
    }
    endpoints = [config.base_url] if isinstance(config.base_url, str) else list(config.base_url or [])
    if endpoints:
        kwargs["base_url"] = endpoints[0]
        # ChatOpenAI sends max_completion_tokens; some OpenAI-compatible servers (llama-cpp-python) only read
        # max_tokens and would otherwise generate until the context is full.
        kwargs["extra_body"] = {"max_tokens": config.max_tokens}
    if config.top_p is not None:
        kwargs["top_p"] = config.top_p
    if config.seed is not None:
        kwargs["seed"] = config.seed
    kwargs.update(config.extra)
    if len(endpoints) > 1:
        from agent_cir.backends.multi_endpoint import MultiEndpointChatOpenAI

        chat: Any = MultiEndpointChatOpenAI(
            **kwargs, endpoints=endpoints, cooldown=config.failover_cooldown,
            attempts=max(config.max_retries + 1, len(endpoints)),
        )
    else:
        if "http_client" not in kwargs:
            kwargs["http_client"] = _deadline_http_client(config.timeout)
        chat = ChatOpenAI(**kwargs)
    return ChatModelHandle(
        chat=chat,
        backend="openai",
        model=model,
        config=config,
        supports_structured_output=CHAT_BACKENDS["openai"].capabilities.structured_output,
        retry_attempts=0,
        # Replicas serve the same model: the cache key must not change with the list of servers.
        fingerprint={"base_url": endpoints[0] if len(endpoints) == 1 else "replicas"},
    )


def _ollama(config: ModelConfig, model: str) -> ChatModelHandle:
    try:
        from langchain_ollama import ChatOllama
    except ImportError as err:
        raise BackendError(f"{config.spec} needs langchain-ollama: pip install 'agent-cir[ollama]'") from err
    kwargs: dict[str, Any] = {
        "model": model,
        "temperature": config.temperature,
        "num_predict": config.max_tokens,
        "client_kwargs": {"timeout": config.timeout},
        "rate_limiter": _rate_limiter(config),
    }
    if isinstance(config.base_url, list):
        raise BackendError(
            f"{config.spec}: base_url lists several servers, which only the openai: backend balances; "
            "give one Ollama URL (or serve the model through an OpenAI-compatible server)"
        )
    if config.base_url:
        kwargs["base_url"] = config.base_url
    if config.top_p is not None:
        kwargs["top_p"] = config.top_p
    if config.seed is not None:
        kwargs["seed"] = config.seed
    kwargs.update(config.extra)
    chat = ChatOllama(**kwargs)
    return ChatModelHandle(
        chat=chat,
        backend="ollama",
        model=model,
        config=config,
        supports_structured_output=CHAT_BACKENDS["ollama"].capabilities.structured_output,
        retry_attempts=config.max_retries if CHAT_BACKENDS["ollama"].capabilities.invoke_retries else 0,
        fingerprint={"base_url": config.base_url},
    )


def _local(config: ModelConfig, model: str, vision: bool) -> ChatModelHandle:
    from agent_cir.backends.hf_vlm import TransformersChatModel, TransformersVLMChatModel, split_gguf_path

    backend = "hf-vlm" if vision else "hf"
    model_path, gguf_file = split_gguf_path(model, config.gguf_file)
    cls = TransformersVLMChatModel if vision else TransformersChatModel
    chat = cls(
        model_path=model_path,
        gguf_file=gguf_file,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        num_beams=config.num_beams,
        seed=config.seed,
        timeout=config.timeout,
        device_map=config.device_map,
        dtype=config.dtype,
        quantization=config.quantization,
        num_threads=config.num_threads,
        batch_size=config.batch_size,
        load_kwargs=dict(config.extra),
        rate_limiter=_rate_limiter(config),
    )
    chat.weights  # load now: a missing model fails when the pipeline is built, not mid-run
    return ChatModelHandle(
        chat=chat,
        backend=backend,
        model=model_path,
        config=config,
        supports_structured_output=CHAT_BACKENDS[backend].capabilities.structured_output,
        fingerprint={"gguf_file": gguf_file, "dtype": config.dtype, "quantization": config.quantization,
                     **({"num_beams": config.num_beams} if (config.num_beams or 1) > 1 else {})},
    )


def _fake(config: ModelConfig, model: str) -> ChatModelHandle:
    extra = dict(config.extra)
    unknown = set(extra) - {"responses", "cycle", "respond"}
    if unknown:
        raise BackendError(f"{config.spec}: unknown fake options {sorted(unknown)}; use responses, cycle")
    responses = extra.get("responses", [])
    if isinstance(responses, str):
        responses = [responses]
    if not responses and extra.get("respond") is None:
        raise BackendError(f"{config.spec}: a fake model needs answers: extra: {{responses: ['...', ...]}}")
    chat = ScriptedChatModel(
        responses=[str(r) for r in responses],
        cycle=bool(extra.get("cycle", True)),
        respond=extra.get("respond"),
        model_name=model,
        temperature=config.temperature,
        seed=config.seed,
        rate_limiter=_rate_limiter(config),
    )
    return ChatModelHandle(
        chat=chat,
        backend="fake",
        model=model,
        config=config,
        supports_structured_output=CHAT_BACKENDS["fake"].capabilities.structured_output,
        fingerprint={
            "responses": [str(r) for r in responses],
            "respond": getattr(extra.get("respond"), "__qualname__", None),
        },
    )


def create_chat_model(config: ModelConfig | str) -> ChatModelHandle:
    """Build the chat model a ``models:`` entry (or a bare spec string) describes."""
    if isinstance(config, str):
        config = ModelConfig(spec=config)
    backend, model = parse_spec(config.spec)
    return CHAT_BACKENDS[backend].factory(config, model)


@dataclass(frozen=True)
class ChatBackend:
    """One entry of the backend registry: how to build a handle, and what the backend can do."""

    factory: Callable[[ModelConfig, str], ChatModelHandle]
    capabilities: BackendCapabilities
    failure_advice: str | None = None
    """What to check when a call fails (None: the server advice, with the retries)."""


_SERVER = dict(images=True, structured_output=True, next_token_logits=False, batched_generation=False, remote=True)
_LOCAL_ADVICE = "the local model could not generate; check its files, dtype and device_map"
_IN_PROCESS = dict(structured_output=False, logprobs=False, batched_generation=True, remote=False, invoke_retries=False)

CHAT_BACKENDS: dict[str, ChatBackend] = {
    "openai": ChatBackend(_openai, BackendCapabilities(**_SERVER, logprobs=True, invoke_retries=False)),
    "ollama": ChatBackend(_ollama, BackendCapabilities(**_SERVER, logprobs=False, invoke_retries=True)),
    "hf": ChatBackend(lambda config, model: _local(config, model, vision=False),
                      BackendCapabilities(**_IN_PROCESS, images=False, next_token_logits=True), _LOCAL_ADVICE),
    "hf-vlm": ChatBackend(lambda config, model: _local(config, model, vision=True),
                          BackendCapabilities(**_IN_PROCESS, images=True, next_token_logits=True), _LOCAL_ADVICE),
    "fake": ChatBackend(_fake, BackendCapabilities(
        images=True, structured_output=False, logprobs=False, next_token_logits=False, batched_generation=False,
        remote=False, invoke_retries=False), "check the fake model's scripted answers"),
}
"""Spec prefix -> its factory and capabilities (``parse_spec`` accepts exactly these names). Adding a backend is
one entry here; callers ask ``handle.capabilities`` rather than comparing backend names."""


def _guess_backend(chat: BaseChatModel) -> str:
    kind = type(chat).__name__
    if kind == "ChatOpenAI" or kind.startswith("AzureChatOpenAI"):
        return "openai"
    if kind == "ChatOllama":
        return "ollama"
    if kind == "TransformersVLMChatModel":
        return "hf-vlm"
    if kind == "TransformersChatModel":
        return "hf"
    if isinstance(chat, ScriptedChatModel) or "Fake" in kind:
        return "fake"
    return getattr(chat, "_llm_type", kind)


def as_handle(
    model: ChatModelHandle | BaseChatModel | ModelConfig | str,
    config: ModelConfig | None = None,
    *,
    name: str = "model",
) -> ChatModelHandle:
    """Accept what a user passes as a model: a handle, any LangChain chat model, a ModelConfig or a spec string.

    ``config`` (the recipe's ``models:`` entry, when there is one) supplies sampling, concurrency and retry
    settings for an injected LangChain model; without it they come from the model's own attributes.
    """
    if isinstance(model, ChatModelHandle):
        return model
    if isinstance(model, (ModelConfig, str)):
        return create_chat_model(model)
    if not isinstance(model, BaseChatModel):
        raise BackendError(
            f"models[{name!r}]: expected a LangChain chat model, a ModelConfig or a spec string, "
            f"got {type(model).__name__}"
        )
    backend = _guess_backend(model)
    known = CHAT_BACKENDS.get(backend)
    capabilities = known.capabilities if known is not None else UNKNOWN_BACKEND
    model_id = str(
        getattr(model, "model_name", None) or getattr(model, "model", None) or getattr(model, "model_path", None)
        or type(model).__name__
    )
    if config is None:
        seed = getattr(model, "seed", 0)
        config = ModelConfig(
            spec=f"{backend}:{model_id}",
            temperature=float(getattr(model, "temperature", 0.0) or 0.0),
            seed=seed if isinstance(seed, int) else None,
        )
    # A model whose class implements structured output itself (ChatOpenAI, ChatAnthropic, ...) gets it asked.
    own_structured = type(model).with_structured_output is not BaseChatModel.with_structured_output
    own_tools = type(model).bind_tools is not BaseChatModel.bind_tools
    return ChatModelHandle(
        chat=model,
        backend=backend,
        model=model_id,
        config=config,
        supports_structured_output=capabilities.structured_output or own_structured or own_tools,
        retry_attempts=config.max_retries if capabilities.invoke_retries else 0,
        fingerprint={"class": type(model).__name__, "base_url": getattr(model, "openai_api_base", None)},
    )
