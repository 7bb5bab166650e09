"""Reading LangChain message content for a local model: text parts, image blocks (data URL, base64, local file)
decoded to PIL images, and the rendered conversation (prompt text + images) a model kind produces."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_cir.backends.errors import LocalModelError

ROLE_OF = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
"""LangChain message type -> chat-template role."""


def decode_image_block(block: dict[str, Any]) -> Any:
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


def is_image_block(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image_url", "image")


def text_of(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") == "text":
        return str(part.get("text", ""))
    return None


@dataclass
class RenderedConversation:
    """One conversation as the model sees it: the prompt text (chat template applied) and its images."""

    prompt: str
    images: list[Any]
