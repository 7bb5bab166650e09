"""Sorting the failures of a structured-output attempt: the backend does not support it (switch it off), or the
model answered off-schema (keep its text for the tolerant parser)."""

from __future__ import annotations

import json

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


def answer_not_in_schema(err: BaseException) -> str | None:
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
