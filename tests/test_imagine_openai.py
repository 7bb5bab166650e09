"""``openai-images:MODEL`` against a fake OpenAI-compatible images server on loopback (no network)."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from agent_cir.backends.image_edit import EditRequest, ImageEditError, create_image_editor
from agent_cir.backends.image_edit.cached import edit_image
from agent_cir.cache import ModelCache
from agent_cir.config import ImagineConfig


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeImagesServer:
    """Answers POST /v1/images/edits and /v1/images/generations; records each request's path and raw body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes, str]] = []
        self.answer: dict = {"created": 0, "data": [{"b64_json": base64.b64encode(_png((0, 0, 255))).decode()}]}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests.append((self.path, body, self.headers.get("Content-Type", "")))
                payload = json.dumps(owner.answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def images_server():
    server = FakeImagesServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _editor(server: FakeImagesServer, model: str = "dall-e-2"):
    return create_image_editor(ImagineConfig(enabled=True, model=f"openai-images:{model}", base_url=server.base_url,
                                             size=256))


def test_an_edit_sends_the_reference_and_reads_b64_json(images_server: FakeImagesServer) -> None:
    reference = _png((255, 0, 0))
    png = _editor(images_server).edit(EditRequest("make it blue", reference, size=256))
    assert Image.open(io.BytesIO(png)).getpixel((0, 0)) == (0, 0, 255)
    (path, body, content_type), = images_server.requests
    assert path == "/v1/images/edits" and content_type.startswith("multipart/form-data")
    assert reference in body and b"make it blue" in body and b"b64_json" in body and b"256x256" in body


def test_gpt_image_models_are_not_sent_response_format(images_server: FakeImagesServer) -> None:
    _editor(images_server, "gpt-image-1").edit(EditRequest("make it blue", _png((255, 0, 0)), size=256))
    assert b"response_format" not in images_server.requests[0][1]


def test_a_text_only_request_is_an_images_generation(images_server: FakeImagesServer) -> None:
    _editor(images_server).edit(EditRequest("a red dog", None, size=256))
    path, body, _ = images_server.requests[0]
    assert path == "/v1/images/generations" and json.loads(body)["prompt"] == "a red dog"


def test_a_cached_edit_makes_no_second_request(images_server: FakeImagesServer, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache.sqlite")
    editor = _editor(images_server)
    request = EditRequest("make it blue", _png((255, 0, 0)), size=256)
    first = edit_image(editor, request, prompt_name="imagine", prompt_hash="h", cache=cache)
    second = edit_image(editor, request, prompt_name="imagine", prompt_hash="h", cache=cache)
    assert len(images_server.requests) == 1 and second.call.cache == "hit" and second.png == first.png


@pytest.mark.parametrize("answer, message", [
    ({"created": 0, "data": [{"url": "http://example.invalid/x.png"}]}, "without b64_json"),
    ({"created": 0, "data": []}, "without b64_json"),
    ({"created": 0, "data": [{"b64_json": "%%% not base64 %%%"}]}, "not base64"),
    ({"created": 0, "data": [{"b64_json": base64.b64encode(b"plain text").decode()}]}, "not a readable image"),
])
def test_answers_without_a_usable_picture_are_clear_errors(images_server: FakeImagesServer, answer: dict,
                                                           message: str) -> None:
    images_server.answer = answer
    with pytest.raises(ImageEditError, match=message):
        _editor(images_server).edit(EditRequest("make it blue", _png((255, 0, 0)), size=256))


def test_no_key_and_no_server_says_where_the_key_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    editor = create_image_editor(ImagineConfig(enabled=True, model="openai-images:gpt-image-1"))
    with pytest.raises(ImageEditError, match=r"\$OPENAI_API_KEY"):
        editor.edit(EditRequest("x", _png((1, 1, 1))))
