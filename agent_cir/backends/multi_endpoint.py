"""Several replicas of one OpenAI-compatible model server behind one chat model: round-robin + failover.

A recipe's model block may list ``base_url: [http://a:8000/v1, http://b:8000/v1]`` (vLLM / SGLang replicas,
Ray Serve deployments, several llama.cpp servers). Each call goes to the next healthy endpoint in turn; a
call that fails with a transport error, a timeout or a 5xx/429 answer is retried at once on the next
endpoint, and the failing endpoint sits out ``cooldown`` seconds. A query is lost only when every endpoint
fails ``max_retries + 1`` attempts in total. 4xx answers (a bad request) are not failed over: every
replica would give the same answer.

The class subclasses ``ChatOpenAI`` so ``with_structured_output``, tool binding and the handle's retry
policy behave exactly as for one endpoint: the bound kwargs (``response_format``...) reach ``_generate``,
which delegates to one member client per attempt.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI
from pydantic import PrivateAttr


def is_failover_error(err: BaseException) -> bool:
    """True for errors another replica may not have: transport, timeout, 5xx, 429 (overloaded)."""
    if isinstance(err, (openai.APIConnectionError, ConnectionError, TimeoutError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(err, openai.APIStatusError):
        return err.status_code >= 500 or err.status_code == 429
    return False


class MultiEndpointChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` over several ``base_url``s of the same model (see the module docstring)."""

    endpoints: list[str]
    cooldown: float = 30.0
    """Seconds an endpoint that failed is skipped (unless every endpoint is cooling down)."""
    attempts: int = 3
    """Attempts per call across all endpoints (the model's ``max_retries + 1``, at least one per endpoint)."""

    _members: list[ChatOpenAI] = PrivateAttr(default_factory=list)
    _down_until: list[float] = PrivateAttr(default_factory=list)
    _next: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _served: list[int] = PrivateAttr(default_factory=list)
    _failed: list[int] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        settings = self.model_dump(exclude={"endpoints", "cooldown", "attempts", "openai_api_base", "max_retries"},
                                   exclude_none=True, by_alias=False)
        key = self.openai_api_key.get_secret_value() if self.openai_api_key else None
        settings.pop("openai_api_key", None)
        for private in ("client", "async_client", "root_client", "root_async_client", "http_client",
                        "http_async_client", "rate_limiter"):
            settings.pop(private, None)
        self._members = [
            ChatOpenAI(**settings, api_key=key, base_url=url, max_retries=0)  # retries are ours: across replicas
            for url in self.endpoints
        ]
        self._down_until = [0.0] * len(self.endpoints)
        self._served = [0] * len(self.endpoints)
        self._failed = [0] * len(self.endpoints)

    @property
    def _llm_type(self) -> str:
        return "openai-chat-multi-endpoint"

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Calls served and failed per endpoint (for logs and tests)."""
        with self._lock:
            return {url: {"served": s, "failed": f} for url, s, f in zip(self.endpoints, self._served, self._failed)}

    def _order(self) -> list[int]:
        """Endpoints to try for one call: healthy ones from the round-robin position, cooling ones last."""
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self._members)
            now = time.monotonic()
            rotation = [(start + i) % len(self._members) for i in range(len(self._members))]
            healthy = [i for i in rotation if self._down_until[i] <= now]
            cooling = [i for i in rotation if self._down_until[i] > now]
        order = healthy + cooling
        tries = max(self.attempts, 1)
        return [order[i % len(order)] for i in range(tries)]

    def _record(self, position: int, ok: bool) -> None:
        with self._lock:
            if ok:
                self._served[position] += 1
                self._down_until[position] = 0.0
            else:
                self._failed[position] += 1
                self._down_until[position] = time.monotonic() + self.cooldown

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last: BaseException | None = None
        for attempt, position in enumerate(self._order()):
            try:
                result = self._members[position]._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
            except Exception as err:  # noqa: BLE001 - classified just below
                if not is_failover_error(err):
                    raise
                self._record(position, ok=False)
                last = err
                if len(self._members) == 1:
                    time.sleep(min(2.0, 0.1 * 2**attempt))  # the same replica again: back off a little
                continue
            self._record(position, ok=True)
            return result
        assert last is not None
        raise last

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last: BaseException | None = None
        for position in self._order():
            try:
                result = await self._members[position]._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
            except Exception as err:  # noqa: BLE001
                if not is_failover_error(err):
                    raise
                self._record(position, ok=False)
                last = err
                continue
            self._record(position, ok=True)
            return result
        assert last is not None
        raise last

    def _stream(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        # Streaming is not failed over mid-stream (half an answer cannot be retried); pick one replica.
        position = self._order()[0]
        yield from self._members[position]._stream(*args, **kwargs)
