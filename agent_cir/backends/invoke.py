"""``invoke``: one cached, traced chat-model call. Every stage's model call goes through here."""

from __future__ import annotations

import base64
import functools
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel

from agent_cir.backends.chat import ChatModelHandle
from agent_cir.cache import ModelCache
from agent_cir.errors import AgentCirError
from agent_cir.hashing import bytes_hash, stable_hash
from agent_cir.prompts import PromptTemplate
from agent_cir.types import ModelCall

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


class ModelCallError(AgentCirError, RuntimeError):
    """A model call failed after its retries (server down, bad credentials, model missing)."""


class ImageInputError(AgentCirError, ValueError):
    """An image handed to a model call cannot be read."""


def image_bytes(image: Any) -> tuple[bytes, str]:
    """(bytes, mime type) of an image given as raw bytes, a PIL image or a file path. A file is read once per
    version for every call that sends it (``index.image_memo``: the caption, judge and verify calls of a query
    share the reference's bytes); formats chat APIs do not take are decoded by the one decoder and sent as PNG."""
    from PIL import Image

    from agent_cir.index.image_memo import ImageFile, image_file
    from agent_cir.index.reasons import BadImageError

    if isinstance(image, (str, Path)):
        try:
            entry = image_file(image)
        except BadImageError as err:
            raise ImageInputError(f"image {image} cannot be read ({err.detail or err.reason}); check the path") from err
    elif isinstance(image, (bytes, bytearray)):
        entry = ImageFile("<bytes>", data=bytes(image))
    elif isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless and deterministic: same pixels, same hash
        return buffer.getvalue(), "image/png"
    else:
        raise ImageInputError(f"an image must be bytes, a PIL image or a file path, got {type(image).__name__}")
    fmt = entry.format
    if fmt is None:
        where = f" {image}" if isinstance(image, (str, Path)) else ""
        raise ImageInputError(f"image{where} is not a readable image file")
    if fmt not in _MIME:  # formats chat APIs do not take (TIFF, ...): send PNG
        try:
            picture = entry.rgb()
        except BadImageError as err:
            raise ImageInputError(f"image {image if isinstance(image, (str, Path)) else ''} cannot be decoded "
                                  f"({err})") from err
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    return entry.data, _MIME[fmt]


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def to_langchain_messages(
    messages: Sequence[tuple[str, str]], image_urls: Sequence[str] = (), image_labels: Sequence[str] | None = None
) -> list[BaseMessage]:
    """Role/text pairs -> LangChain messages; images go into the last user message as ``image_url`` blocks.
    With ``image_labels`` (one per image) the text comes first and each image follows its own text label
    ("Image 1:"), as CoTRR shows its candidates."""
    converted: list[BaseMessage] = []
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=None)
    if image_urls and last_user is None:
        messages = [*messages, ("user", "")]
        last_user = len(messages) - 1
    for index, (role, text) in enumerate(messages):
        if role == "system":
            converted.append(SystemMessage(content=text))
        elif role == "assistant":
            converted.append(AIMessage(content=text))
        elif index == last_user and image_urls and image_labels is not None:
            labelled: list[str | dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            for label, url in zip(image_labels, image_urls):
                if label:
                    labelled.append({"type": "text", "text": label})
                labelled.append({"type": "image_url", "image_url": {"url": url}})
            converted.append(HumanMessage(content=labelled))
        elif index == last_user and image_urls:
            # Images before the text: most VLM chat templates expect the picture first.
            blocks: list[str | dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": url}} for url in image_urls
            ]
            if text:
                blocks.append({"type": "text", "text": text})
            converted.append(HumanMessage(content=blocks))
        else:
            converted.append(HumanMessage(content=text))
    return converted


def _message_text(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "output_text"):
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)


def _usage(message: Any) -> dict[str, Any] | None:
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return None
    return {k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage}


def _render_prompt_text(messages: Sequence[tuple[str, str]]) -> str:
    return "\n\n".join(f"[{role}]\n{body}" for role, body in messages)


# ---------------------------------------------------------------------------------------------------------
# Secrets: never in cache keys, ModelCall.params or the error messages we format.

_SECRET_QUERY_KEYS = ("key", "api_key", "apikey", "token", "access_token", "secret", "password", "sig", "signature")


def redact_url(url: str | None) -> str | None:
    """A URL without a password in its user-info and without secret-looking query values."""
    if not url or ("@" not in url and "?" not in url):
        return url
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parse_qsl(parts.query)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret_values(data: Any, secret: bool = False) -> list[str]:
    """Every string under a secret-named key of ``data`` (nested), and the credential of ``Bearer X`` values."""
    from agent_cir.redact import is_secret_key

    if isinstance(data, dict):
        return [v for key, value in data.items() for v in _secret_values(value, secret or is_secret_key(key))]
    if isinstance(data, (list, tuple)):
        return [v for item in data for v in _secret_values(item, secret)]
    if secret and isinstance(data, str):
        scheme, _, credential = data.partition(" ")
        return [data, credential] if scheme.lower() in ("bearer", "basic", "token") and credential else [data]
    return []


def handle_secrets(handle: ChatModelHandle) -> list[str]:
    """Every credential the handle's model may send: the configured key, the key from the environment and
    the client's own key attribute (placeholders and very short strings excluded)."""
    import os

    from agent_cir.backends.chat import LOCAL_KEY_PLACEHOLDER

    config = handle.config
    found = [config.api_key, os.environ.get(config.api_key_env) if config.api_key_env else None,
             os.environ.get("OPENAI_API_KEY")]
    for attribute in ("openai_api_key", "api_key"):
        value = getattr(handle.chat, attribute, None)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        found.append(value if isinstance(value, str) else None)
    for url in (config.base_url, getattr(handle.chat, "openai_api_base", None)):
        if isinstance(url, str) and "@" in url:
            userinfo = url.split("//", 1)[-1].rpartition("@")[0]
            found.append(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo)
    found.extend(_secret_values(config.extra))  # default_headers.Authorization, X-Api-Key, openai_api_key ...
    secrets = {s for s in found if isinstance(s, str) and len(s) >= 6 and s != LOCAL_KEY_PLACEHOLDER}
    return sorted(secrets, key=len, reverse=True)


def redact(text: str, handle: ChatModelHandle) -> str:
    """``text`` with every secret of ``handle`` replaced by ``***``."""
    for secret in handle_secrets(handle):
        text = text.replace(secret, "***")
    return text


def _key_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    # Unchanged for ordinary fingerprints (so existing cache entries stay valid); credentials in a URL go.
    return {k: redact_url(v) if isinstance(v, str) and "://" in v else v for k, v in fingerprint.items()}


# ---------------------------------------------------------------------------------------------------------
# Retries and structured output.


def _with_retry(runnable: Any, handle: ChatModelHandle) -> Any:
    """The configured retry policy for backends whose client does not retry by itself (``retry_attempts``):
    transport errors, timeouts and Ollama's response errors, exponential backoff with jitter."""
    if handle.retry_attempts <= 0:
        return runnable
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from ollama import ResponseError

        errors.append(ResponseError)
    except ImportError:
        pass
    return runnable.with_retry(
        retry_if_exception_type=tuple(errors),
        wait_exponential_jitter=True,
        stop_after_attempt=handle.retry_attempts + 1,
    )


_UNSUPPORTED_EXACT = (
    "response_format type must be one of",  # llama.cpp server (json_schema before it learnt it)
    'either "json_schema" or "grammar" can be specified',  # llama.cpp server
    "tools param requires --jinja",  # llama.cpp server, function_calling
    "does not support tools",  # ollama, function_calling
    "structured output is not supported",
    "structured outputs are not supported",
)
_UNSUPPORTED_TOPICS = ("response_format", "json_schema", "json_object", "structured output", "guided_json",
                       "guided decoding", "tool_choice", "function calling")
_UNSUPPORTED_WORDS = ("not supported", "unsupported", "not support", "must be one of", "unknown", "unrecognized",
                      "not implemented", "not allowed", "invalid", "extra inputs are not permitted", "not available")


def _error_status(err: BaseException) -> int | None:
    status = getattr(err, "status_code", None)
    if status is None:
        status = getattr(getattr(err, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def structured_output_unsupported(err: BaseException) -> bool:
    """Whether ``err`` says "this backend does not support (this kind of) structured output".

    NotImplementedError from ``with_structured_output``; known server messages (llama.cpp's response_format
    and grammar errors, Ollama's "does not support tools"); or a 4xx/501 answer whose message is about
    response_format / json_schema / structured output and says it is unsupported, unknown or invalid
    (OpenAI and vLLM 400s). Timeouts, transport errors, 5xx and every other error are not: those are
    retried by the retry policy and then fail the call, leaving structured output on.
    """
    if isinstance(err, NotImplementedError):
        return True
    message = str(err).lower()
    body = getattr(err, "body", None)
    if body is not None:
        message += " " + str(body).lower()
    if any(phrase in message for phrase in _UNSUPPORTED_EXACT):
        return True
    status = _error_status(err)
    if status is None or not (400 <= status < 500 or status == 501) or status in (401, 403, 408, 409, 429):
        return False
    return any(t in message for t in _UNSUPPORTED_TOPICS) and any(w in message for w in _UNSUPPORTED_WORDS)


def _answer_not_in_schema(err: BaseException) -> str | None:
    """The answer text when the request worked but the answer did not fit the schema (cut off by max_tokens,
    invalid JSON); "" when it is such an error without a recoverable text; None for any other error."""
    from pydantic import ValidationError

    names = {cls.__name__ for cls in type(err).__mro__}
    if "LengthFinishReasonError" in names or "ContentFilterFinishReasonError" in names:
        completion = getattr(err, "completion", None)
        try:
            return str(completion.choices[0].message.content or "")
        except (AttributeError, IndexError, TypeError):
            return ""
    if isinstance(err, ValidationError):  # the answer is in the error: the JSON text, or the parsed value
        try:
            given = err.errors()[0].get("input")
        except (IndexError, AttributeError):
            given = None
        if isinstance(given, str):
            return given
        try:
            return json.dumps(given, ensure_ascii=False) if isinstance(given, (dict, list)) else ""
        except (TypeError, ValueError, RecursionError):
            return ""
    if isinstance(err, json.JSONDecodeError) or "OutputParserException" in names:
        return ""
    return None


def _malformed_response(err: BaseException) -> bool:
    """A 200 answer that is not a chat completion at all (an HTML error page from a proxy, a truncated
    body): the server's fault, retried like a 5xx."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if "APIResponseValidationError" in names:
        return True
    return isinstance(err, (AttributeError, TypeError, KeyError)) and "choices" in str(err)


def _call_with_policy(call: Callable[[], Any], handle: ChatModelHandle) -> Any:
    """``call()`` under the retry policy: transport errors, timeouts and 5xx are retried by the client
    (OpenAI's ``max_retries``) or ``.with_retry`` already; malformed 200 answers, which no client retries,
    get the same ``max_retries`` here, with the same exponential backoff."""
    attempts = handle.config.max_retries + 1
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - only malformed answers are retried here
            if attempt == attempts - 1 or not _malformed_response(err):
                raise
            time.sleep(min(8.0, 0.25 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def call_deadline(handle: ChatModelHandle) -> float | None:
    """Wall-clock seconds one model call may take, retries included: ``timeout`` per attempt plus the retry
    backoff; None for in-process backends (hf:, fake:), whose ``timeout`` does not apply."""
    if not handle.capabilities.remote:
        return None
    attempts = handle.config.max_retries + 1
    backoff = sum(min(8.0, 0.5 * 2**attempt) for attempt in range(attempts - 1))
    return handle.config.timeout * attempts + backoff + 1.0  # 1 s: connection set-up and parsing


class CallDeadlineError(TimeoutError):
    """A model call ran past its wall-clock deadline (the client's timeout is per read: a trickling server
    never trips it)."""


def _within_deadline(call: Callable[[], Any], handle: ChatModelHandle) -> Any:
    """``call()``, or CallDeadlineError once :func:`call_deadline` has passed. The call runs in a worker
    thread that is abandoned at the deadline (its socket closes when the server or its read timeout ends)."""
    deadline = call_deadline(handle)
    if deadline is None:
        return call()
    import concurrent.futures

    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-cir-call")
    try:
        future = worker.submit(call)
        try:
            return future.result(timeout=deadline)
        except concurrent.futures.TimeoutError:
            raise CallDeadlineError(
                f"no complete answer within {deadline:g} s (timeout {handle.config.timeout:g} s per attempt, "
                f"max_retries {handle.config.max_retries}); the server is too slow or trickles its answer"
            ) from None
    finally:
        worker.shutdown(wait=False)


def _call_failed(handle: ChatModelHandle, err: Exception, attempt: str = "") -> ModelCallError:
    base_url = redact_url(handle.config.base_url)
    where = f" at {base_url}" if base_url else ""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    detail = redact(detail, handle)[:500]
    if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
        if not isinstance(err, CallDeadlineError):
            detail += f" (no complete answer within timeout {handle.config.timeout:g} s per attempt)"
    if handle.failure_advice is not None:  # in-process and scripted models
        advice = handle.failure_advice
    else:
        advice = (
            "check that the server is running and the model name, key and base_url are right "
            f"(retries: {handle.config.max_retries})"
        )
        if attempt == "structured":
            advice += ("; if this server does not support structured output, set structured_output: false "
                       "for this stage")
    return ModelCallError(f"model {handle.id}{where} failed: {type(err).__name__}: {detail}. What to do: {advice}")


# ---------------------------------------------------------------------------------------------------------
# One cached, traced call: shared by chat answers (``invoke``) and backend-side scoring (logit_scoring).


MAX_RAW_ANSWER_CHARS = 65_536
"""Longest model answer kept (the trace, the parsers and the report see at most this). Real answers are a
few KB; a server that streams megabytes of garbage must not turn into a trace line of that size."""


def cap_raw_answer(raw: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``raw`` cut to :data:`MAX_RAW_ANSWER_CHARS`, with ``params.raw_truncated`` recording the cut."""
    if not isinstance(raw, str) or len(raw) <= MAX_RAW_ANSWER_CHARS:
        return raw, params
    note = {"original_chars": len(raw), "kept_chars": MAX_RAW_ANSWER_CHARS}
    return raw[:MAX_RAW_ANSWER_CHARS], {**params, "raw_truncated": note}


@dataclass
class PreparedCall:
    """What a call needs before it reaches the model: encoded images, their hashes, the cache key."""

    handle: ChatModelHandle
    prompt: PromptTemplate
    messages: list[tuple[str, str]]
    encoded: list[tuple[bytes, str]]
    image_hashes: list[str]
    prompt_text: str
    key: str | None
    started: float
    miss_status: str = "miss"
    """How a call the store could not answer is traced (eval/answers.RunAnswers, a run's own store: "off")."""
    image_labels: list[str] | None = None

    def langchain_messages(self) -> list[BaseMessage]:
        return to_langchain_messages(self.messages, [data_url(data, mime) for data, mime in self.encoded],
                                     self.image_labels)

    def record(self, raw: str, cache: str, usage: dict[str, Any] | None, params: dict[str, Any]) -> ModelCall:
        cache = self.miss_status if cache == "miss" else cache
        raw, params = cap_raw_answer(raw, params)
        return ModelCall(
            backend=self.handle.backend,
            model=self.handle.model,
            prompt_name=self.prompt.name,
            prompt_hash=self.prompt.hash,
            raw=raw,
            cache=cache,  # type: ignore[arg-type]
            seconds=round(time.perf_counter() - self.started, 6),
            usage=usage,
            prompt=self.prompt_text,
            images=self.image_hashes,
            params=params,
        )


def prepare_call(
    handle: ChatModelHandle,
    messages: list[tuple[str, str]],
    *,
    prompt: PromptTemplate,
    images: Sequence[Any],
    cache: ModelCache | None,
    key_parts: dict[str, Any],
    image_labels: Sequence[str] | None = None,
) -> PreparedCall:
    started = time.perf_counter()
    if image_labels is not None:
        if len(image_labels) != len(images):
            raise ValueError(f"{len(image_labels)} image labels for {len(images)} images")
        key_parts = {**key_parts, "image_labels": list(image_labels)}
    encoded = [image_bytes(image) for image in images]
    image_hashes = [bytes_hash(data) for data, _ in encoded]
    key = None
    if cache is not None:
        key = cache.make_key(
            backend=handle.backend,
            model=handle.model,
            fingerprint=_key_fingerprint(handle.fingerprint),
            prompt_hash=prompt.hash,
            messages=[list(m) for m in messages],
            images=image_hashes,
            **key_parts,
        )
    return PreparedCall(handle, prompt, list(messages), encoded, image_hashes, _render_prompt_text(messages), key,
                        started, getattr(cache, "miss_status", "miss"),
                        list(image_labels) if image_labels is not None else None)


def lookup_cached(
    prepared: PreparedCall, cache: ModelCache | None, validate: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any] | None, str | None]:
    """(the cached value or None, a note when a damaged value was found: it counts as a miss)."""
    if cache is None or prepared.key is None:
        return None, None
    value, status = cache.lookup(prepared.key, validate)
    if status == "damaged":
        return None, "damaged cache entry (unreadable or wrong shape) ignored and replaced"
    return value, None


def _chat_value_ok(value: dict[str, Any]) -> bool:
    return isinstance(value.get("raw"), str) and isinstance(value.get("structured", False), bool) and (
        value.get("usage") is None or isinstance(value.get("usage"), dict))


@functools.lru_cache(maxsize=128)
def _schema_hash(schema: type[BaseModel]) -> str:
    """The cache-key hash of a structured-output schema, once per schema class (pydantic rebuilds the JSON
    schema on every ``model_json_schema()`` call: ~1 ms)."""
    return stable_hash(schema.model_json_schema())


def invoke(
    handle: ChatModelHandle,
    messages: list[tuple[str, str]],
    *,
    prompt: PromptTemplate,
    images: Sequence[Any] = (),
    cache: ModelCache | None = None,
    schema: type[BaseModel] | None = None,
    temperature: float | None = None,
    n_sample_index: int = 0,
    image_labels: Sequence[str] | None = None,
) -> ModelCall:
    """Call ``handle``'s model with rendered ``messages`` (+ images), through the cache; return the trace record.
    ``image_labels``: a text label before each image (see :func:`to_langchain_messages`).

    With ``schema`` and a backend that supports it, the answer is requested as JSON-schema structured output
    and ``ModelCall.raw`` holds its JSON text. Failures of that attempt:
    - the backend says it does not support structured output (:func:`structured_output_unsupported`):
      structured output is switched off for this model for the rest of the run and the call is made as
      plain text (``params.structured_note`` says so);
    - the model answered but not in the schema: its text goes to the caller's tolerant parser (a plain call
      is made when the error kept no text);
    - anything else (timeouts, 5xx, transport errors): the configured retry policy has already retried it
      (the OpenAI client's ``max_retries`` or ``.with_retry``), so the call fails with ModelCallError, once,
      and structured output stays on for the next call.
    ``parse_status`` is left for the caller to set.
    """
    params = handle.sampling_params(temperature, n_sample_index)
    schema_hash = _schema_hash(schema) if schema is not None else None
    prepared = prepare_call(handle, messages, prompt=prompt, images=images, cache=cache,
                            key_parts={"kind": "chat", "params": params, "schema": schema_hash},
                            image_labels=image_labels)
    cached, cache_note = lookup_cached(prepared, cache, _chat_value_ok)
    if cached is not None:
        return prepared.record(cached["raw"], "hit", None,  # no tokens were spent on a hit
                               {**params, "structured": cached.get("structured", False)})

    lc_messages = prepared.langchain_messages()
    chat = handle.variant(params["temperature"], params["seed"])
    raw_text: str | None = None
    usage: dict[str, Any] | None = None
    structured_used = False
    structured_note: str | None = None
    with handle.slot:
        if schema is not None and handle.supports_structured_output and not handle.structured_disabled:
            try:
                runnable = chat.with_structured_output(schema, method=handle.config.structured_method,
                                                       include_raw=True)
                result = _within_deadline(
                    lambda: _call_with_policy(lambda: _with_retry(runnable, handle).invoke(lc_messages), handle), handle)
            except AgentCirError:
                raise
            except Exception as err:  # noqa: BLE001 - sorted below: unsupported, answer off-schema, or failed
                reason = redact(f"{type(err).__name__}: {str(err)[:200]}", handle)
                answer = _answer_not_in_schema(err)
                if structured_output_unsupported(err):
                    handle.structured_disabled = True
                    structured_note = f"structured output unsupported by this backend ({reason}); plain text from now on"
                elif answer is not None:
                    structured_note = f"structured output did not parse: {reason}"
                    raw_text = answer or None
                else:
                    raise _call_failed(handle, err, "structured") from err
            else:
                parsed, raw_message = result.get("parsed"), result.get("raw")
                usage = _usage(raw_message)
                if parsed is not None:
                    payload = parsed.model_dump() if isinstance(parsed, BaseModel) else parsed
                    raw_text = json.dumps(payload, ensure_ascii=False)
                    structured_used = True
                else:  # the model answered, but not in the schema: keep its text for the tolerant parser
                    raw_text = _message_text(raw_message)
                    structured_note = redact(f"structured output did not parse: {result.get('parsing_error')}",
                                             handle)[:300]
        if raw_text is None:
            try:
                message = _within_deadline(
                    lambda: _call_with_policy(lambda: _with_retry(chat, handle).invoke(lc_messages), handle), handle)
            except AgentCirError:
                raise
            except Exception as err:  # noqa: BLE001 - reported with the model and endpoint
                raise _call_failed(handle, err) from err
            raw_text = _message_text(message)
            usage = _usage(message)
    call_params = {**params, "structured": structured_used}
    if structured_note:
        call_params["structured_note"] = structured_note
    if cache_note:
        call_params["cache_note"] = cache_note
    raw_text, call_params = cap_raw_answer(raw_text, call_params)  # cached as kept: a hit matches the miss
    if cache is not None and prepared.key is not None:
        cache.put(prepared.key, {"raw": raw_text, "structured": structured_used, "usage": usage})
    return prepared.record(raw_text, "miss" if cache is not None else "off", usage, call_params)
