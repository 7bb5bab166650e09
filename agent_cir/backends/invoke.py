"""``invoke``: one cached, traced chat-model call. Every stage's model call goes through here."""

from __future__ import annotations

import base64
import io
import json
import time
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
    """(bytes, mime type) of an image given as raw bytes, a PIL image or a file path."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ImageInputError(f"image {path} cannot be read ({err.strerror or err}); check the path") from None
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless and deterministic: same pixels, same hash
        return buffer.getvalue(), "image/png"
    else:
        raise ImageInputError(f"an image must be bytes, a PIL image or a file path, got {type(image).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except (UnidentifiedImageError, OSError):
        where = f" {image}" if isinstance(image, (str, Path)) else ""
        raise ImageInputError(f"image{where} is not a readable image file") from None
    if fmt not in _MIME:  # formats chat APIs do not take (TIFF, ...): send PNG
        with Image.open(io.BytesIO(data)) as img:
            buffer = io.BytesIO()
            img.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    return data, _MIME[fmt]


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def to_langchain_messages(
    messages: Sequence[tuple[str, str]], image_urls: Sequence[str] = ()
) -> list[BaseMessage]:
    """Role/text pairs -> LangChain messages; images go into the last user message as ``image_url`` blocks."""
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


def _with_retry(runnable: Any, handle: ChatModelHandle) -> Any:
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


def _call_failed(handle: ChatModelHandle, err: Exception) -> ModelCallError:
    where = f" at {handle.config.base_url}" if handle.config.base_url else ""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if handle.backend in ("hf", "hf-vlm"):
        advice = "the local model could not generate; check its files, dtype and device_map"
    elif handle.backend == "fake":
        advice = "check the fake model's scripted answers"
    else:
        advice = (
            "check that the server is running and the model name, key and base_url are right "
            f"(retries: {handle.config.max_retries})"
        )
    return ModelCallError(f"model {handle.id}{where} failed: {type(err).__name__}: {detail}. What to do: {advice}")


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
) -> ModelCall:
    """Call ``handle``'s model with rendered ``messages`` (+ images), through the cache; return the trace record.

    With ``schema`` and a backend that supports it, the answer is requested as JSON-schema structured output
    and ``ModelCall.raw`` holds its JSON text; if that fails the call is repeated as plain text (the caller
    parses ``raw`` either way). ``parse_status`` is left for the caller to set.
    """
    started = time.perf_counter()
    encoded = [image_bytes(image) for image in images]
    image_hashes = [bytes_hash(data) for data, _ in encoded]
    params = handle.sampling_params(temperature, n_sample_index)
    schema_hash = stable_hash(schema.model_json_schema()) if schema is not None else None
    prompt_text = _render_prompt_text(messages)
    key = None
    if cache is not None:
        key = cache.make_key(
            kind="chat",
            backend=handle.backend,
            model=handle.model,
            fingerprint=handle.fingerprint,
            prompt_hash=prompt.hash,
            messages=[list(m) for m in messages],
            images=image_hashes,
            params=params,
            schema=schema_hash,
        )
        cached = cache.get(key)
        if cached is not None:
            return ModelCall(
                backend=handle.backend,
                model=handle.model,
                prompt_name=prompt.name,
                prompt_hash=prompt.hash,
                raw=cached["raw"],
                cache="hit",
                seconds=round(time.perf_counter() - started, 6),
                usage=None,  # no tokens were spent on a hit
                prompt=prompt_text,
                images=image_hashes,
                params={**params, "structured": cached.get("structured", False)},
            )

    lc_messages = to_langchain_messages(messages, [data_url(data, mime) for data, mime in encoded])
    chat = handle.variant(params["temperature"], params["seed"])
    raw_text: str | None = None
    usage: dict[str, Any] | None = None
    structured_used = False
    structured_note: str | None = None
    with handle.slot:
        if schema is not None and handle.supports_structured_output and not handle.structured_disabled:
            try:
                method = handle.config.structured_method
                runnable = chat.with_structured_output(schema, method=method, include_raw=True)
                result = _with_retry(runnable, handle).invoke(lc_messages)
                parsed, raw_message = result.get("parsed"), result.get("raw")
                usage = _usage(raw_message)
                if parsed is not None:
                    payload = parsed.model_dump() if isinstance(parsed, BaseModel) else parsed
                    raw_text = json.dumps(payload, ensure_ascii=False)
                    structured_used = True
                else:  # the model answered, but not in the schema: keep its text for the tolerant parser
                    raw_text = _message_text(raw_message)
                    structured_note = f"structured output did not parse: {result.get('parsing_error')}"
            except Exception as err:  # noqa: BLE001 - any refusal of structured output -> plain text
                structured_note = f"structured output unavailable ({type(err).__name__}: {str(err)[:200]})"
                raw_text = None
        if raw_text is None:
            try:
                message = _with_retry(chat, handle).invoke(lc_messages)
            except AgentCirError:
                raise
            except Exception as err:  # noqa: BLE001 - reported with the model and endpoint
                raise _call_failed(handle, err) from err
            if structured_note and structured_note.startswith("structured output unavailable"):
                handle.structured_disabled = True  # the plain call worked: the backend lacks structured output
            raw_text = _message_text(message)
            usage = _usage(message)
    seconds = round(time.perf_counter() - started, 6)
    call_params = {**params, "structured": structured_used}
    if structured_note:
        call_params["structured_note"] = structured_note
    if cache is not None and key is not None:
        cache.put(key, {"raw": raw_text, "structured": structured_used, "usage": usage})
    return ModelCall(
        backend=handle.backend,
        model=handle.model,
        prompt_name=prompt.name,
        prompt_hash=prompt.hash,
        raw=raw_text,
        cache="miss" if cache is not None else "off",
        seconds=seconds,
        usage=usage,
        prompt=prompt_text,
        images=image_hashes,
        params=call_params,
    )
