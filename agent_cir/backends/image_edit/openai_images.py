"""``openai-images:MODEL``: an OpenAI-compatible images endpoint (OpenAI itself, or a local server speaking its API).

An edit is ``images.edit`` with the reference as a PNG upload; a text-only request is ``images.generate``. The
answer must carry ``b64_json`` (asked for with ``response_format`` except for gpt-image models, which always
answer so); a URL-only answer is refused, since fetching it would be a second, untraced download. The seed is
not an images-API field: servers that take one get it through ``imagine.extra: {extra_body: {seed: 0}}``; the
cache makes a rerun return the same picture either way.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

from agent_cir.backends.image_edit.base import EditRequest, ImageEditError

LOCAL_KEY_PLACEHOLDER = "not-needed"


class OpenAIImagesEditor:
    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str | None = None,
                 timeout: float = 300.0) -> None:
        self.model = model
        self.spec = f"openai-images:{model}"
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout = timeout
        self._client: Any = None

    @property
    def info(self) -> dict[str, Any]:
        from agent_cir.backends.credentials import redact_url

        return {"backend": "openai-images", "model": self.model, "base_url": redact_url(self.base_url)}

    def _api_key(self) -> str:
        env = self.api_key_env or "OPENAI_API_KEY"
        key = os.environ.get(env)
        if key:
            return key
        if self.base_url:
            return LOCAL_KEY_PLACEHOLDER  # a local server needs none
        raise ImageEditError(f"openai-images:{self.model} needs an API key in ${env}, or imagine.base_url of a "
                             "local OpenAI-compatible server")

    def _openai(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.base_url, api_key=self._api_key(), timeout=self.timeout, max_retries=2)
        return self._client

    def edit(self, request: EditRequest) -> bytes:
        import openai

        arguments: dict[str, Any] = {"model": self.model, "prompt": request.prompt, "n": 1}
        if request.size:
            arguments["size"] = f"{request.size}x{request.size}"
        if not self.model.startswith("gpt-image"):
            arguments["response_format"] = "b64_json"
        arguments.update(request.extra)
        client = self._openai()
        where = f"openai-images:{self.model}" + (f" at {self.info['base_url']}" if self.base_url else "")
        try:
            if request.reference is not None:
                answer = client.images.edit(image=("reference.png", _as_png(request.reference), "image/png"), **arguments)
            else:
                answer = client.images.generate(**arguments)
        except openai.APIError as err:
            raise ImageEditError(f"{where}: the images request failed ({' '.join(str(err).split())[:300]})") from err
        data = getattr(answer, "data", None) or []
        encoded = getattr(data[0], "b64_json", None) if data else None
        if not encoded:
            raise ImageEditError(f"{where} answered without b64_json image data (a URL-only answer is not fetched); "
                                 "use a server that returns b64_json")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ImageEditError(f"{where} answered with b64_json that is not base64") from err
        return _as_png(raw, where)


def _as_png(data: bytes, where: str = "the reference") -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format == "PNG":
                opened.verify()
                return data
            picture = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageEditError(f"{where}: the image data is not a readable image") from err
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
