"""A fake OpenAI-compatible chat server on 127.0.0.1 that records every request (for tests and benchmarks)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    def image_urls(self) -> list[str]:
        urls = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, list):
                urls += [b["image_url"]["url"] for b in content if isinstance(b, dict) and b.get("type") == "image_url"]
        return urls

    def texts(self) -> list[str]:
        out = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out += [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return out


@dataclass
class FakeOpenAIServer:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint on 127.0.0.1 that records every request.

    ``replies`` are answered in order (the last one repeats); a reply may be a function of the request body.
    ``fail_next(n, status)`` makes the next n requests fail with that HTTP status (to exercise retries).
    """

    replies: list[str | Callable[[dict[str, Any]], str]] = field(default_factory=lambda: ["ok"])
    requests: list[RecordedRequest] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    logprobs: Callable[[dict[str, Any], str], dict[str, Any] | None] | None = None
    """When set and a request asks for logprobs: the ``choices[0].logprobs`` object for (body, reply text)."""
    port: int = 0
    answered: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self.failures.extend([status] * count)

    def _reply_for(self, body: dict[str, Any]) -> str:
        with self._lock:
            reply = self.replies[min(self.answered, len(self.replies) - 1)]
            self.answered += 1
        return reply(body) if callable(reply) else reply

    def start(self) -> FakeOpenAIServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test and benchmark output clean
                return None

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with owner._lock:
                    owner.requests.append(RecordedRequest(self.path, dict(self.headers), body))
                    status = owner.failures.pop(0) if owner.failures else None
                if status is not None:
                    self._send(status, {"error": {"message": "injected failure", "type": "server_error"}})
                    return
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                text = owner._reply_for(body)
                logprobs = owner.logprobs(body, text) if owner.logprobs and body.get("logprobs") else None
                prompt_tokens = sum(len(t.split()) for t in RecordedRequest(self.path, {}, body).texts())
                self._send(200, {
                    "id": f"chatcmpl-{len(owner.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "unknown"),
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": logprobs,
                    }],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(text.split()),
                        "total_tokens": prompt_tokens + len(text.split()),
                    },
                })

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
