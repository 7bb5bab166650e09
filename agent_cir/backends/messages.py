"""LangChain messages for a model call: images as (bytes, mime) and data URLs, role/text pairs -> messages, and
the text and token usage read back from an answer."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from agent_cir.backends.errors import ImageInputError

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


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


def message_text(message: Any) -> str:
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


def message_usage(message: Any) -> dict[str, Any] | None:
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return None
    return {k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage}
