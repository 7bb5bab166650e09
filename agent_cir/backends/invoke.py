"""``invoke``: one cached, traced chat-model call. Every stage's model call goes through here."""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

from pydantic import BaseModel

from agent_cir.backends.call_policy import call_failed, call_with_policy, with_retry, within_deadline
from agent_cir.backends.credentials import redact
from agent_cir.backends.handle import ChatModelHandle
from agent_cir.backends.messages import message_text, message_usage
from agent_cir.backends.prepared import cap_raw_answer, lookup_cached, prepare_call
from agent_cir.backends.structured import answer_not_in_schema, structured_output_unsupported
from agent_cir.cache import ModelCache
from agent_cir.errors import AgentCirError
from agent_cir.hashing import stable_hash
from agent_cir.prompts import PromptTemplate
from agent_cir.types import ModelCall


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
                result = within_deadline(
                    lambda: call_with_policy(lambda: with_retry(runnable, handle).invoke(lc_messages), handle), handle)
            except AgentCirError:
                raise
            except Exception as err:  # noqa: BLE001 - sorted below: unsupported, answer off-schema, or failed
                reason = redact(f"{type(err).__name__}: {str(err)[:200]}", handle)
                answer = answer_not_in_schema(err)
                if structured_output_unsupported(err):
                    handle.structured_disabled = True
                    structured_note = f"structured output unsupported by this backend ({reason}); plain text from now on"
                elif answer is not None:
                    structured_note = f"structured output did not parse: {reason}"
                    raw_text = answer or None
                else:
                    raise call_failed(handle, err, "structured") from err
            else:
                parsed, raw_message = result.get("parsed"), result.get("raw")
                usage = message_usage(raw_message)
                if parsed is not None:
                    payload = parsed.model_dump() if isinstance(parsed, BaseModel) else parsed
                    raw_text = json.dumps(payload, ensure_ascii=False)
                    structured_used = True
                else:  # the model answered, but not in the schema: keep its text for the tolerant parser
                    raw_text = message_text(raw_message)
                    structured_note = redact(f"structured output did not parse: {result.get('parsing_error')}",
                                             handle)[:300]
        if raw_text is None:
            try:
                message = within_deadline(
                    lambda: call_with_policy(lambda: with_retry(chat, handle).invoke(lc_messages), handle), handle)
            except AgentCirError:
                raise
            except Exception as err:  # noqa: BLE001 - reported with the model and endpoint
                raise call_failed(handle, err) from err
            raw_text = message_text(message)
            usage = message_usage(message)
    call_params = {**params, "structured": structured_used}
    if structured_note:
        call_params["structured_note"] = structured_note
    if cache_note:
        call_params["cache_note"] = cache_note
    raw_text, call_params = cap_raw_answer(raw_text, call_params)  # cached as kept: a hit matches the miss
    if cache is not None and prepared.key is not None:
        cache.put(prepared.key, {"raw": raw_text, "structured": structured_used, "usage": usage})
    return prepared.record(raw_text, "miss" if cache is not None else "off", usage, call_params)
