"""The policy around one model call: retries (``.with_retry`` and malformed 200 answers), the wall-clock deadline,
and the ModelCallError a failed call becomes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent_cir.backends.credentials import redact, redact_url
from agent_cir.backends.errors import ModelCallError
from agent_cir.backends.handle import ChatModelHandle


def with_retry(runnable: Any, handle: ChatModelHandle) -> Any:
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


def _malformed_response(err: BaseException) -> bool:
    """A 200 answer that is not a chat completion at all (an HTML error page from a proxy, a truncated
    body): the server's fault, retried like a 5xx."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if "APIResponseValidationError" in names:
        return True
    return isinstance(err, (AttributeError, TypeError, KeyError)) and "choices" in str(err)


def call_with_policy(call: Callable[[], Any], handle: ChatModelHandle) -> Any:
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


def within_deadline(call: Callable[[], Any], handle: ChatModelHandle) -> Any:
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


def call_failed(handle: ChatModelHandle, err: Exception, attempt: str = "") -> ModelCallError:
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
