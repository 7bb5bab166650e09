"""P(yes) for a yes/no question, from whatever the backend can give: next-token logits (local ``hf-vlm:``),
``top_logprobs`` of the first answer token (OpenAI-compatible servers: vLLM, SGLang, llama.cpp, OpenAI), or the
parsed answer (1 for yes, 0 for no) where neither exists.

:func:`ask_yes_no_many` asks several questions of one model: a local model scores them in one padded forward
per ``batch_size`` questions (:func:`agent_cir.backends.logit_scoring.yes_probabilities`); other backends are
asked one question at a time.

Every path goes through the same cache, concurrency slot and ``ModelCall`` record as a chat answer. The result
says where the confidence came from (``source``): ``logits``, ``logprobs``, ``answer`` or ``unparsed`` (no
yes/no could be read: confidence None).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_cir.backends.call_policy import call_failed, call_with_policy, with_retry
from agent_cir.backends.handle import ChatModelHandle
from agent_cir.backends.invoke import invoke
from agent_cir.backends.logit_scoring import supports_yes_probability, yes_probabilities, yes_probability
from agent_cir.backends.messages import message_text, message_usage
from agent_cir.backends.prepared import lookup_cached, prepare_call
from agent_cir.cache import ModelCache
from agent_cir.errors import AgentCirError
from agent_cir.parsing import bound_answer
from agent_cir.prompts import PromptTemplate
from agent_cir.rerank.parse import parse_yes_no
from agent_cir.types import ModelCall

TOP_LOGPROBS = 10
_YES = frozenset({"yes", "true"})
_NO = frozenset({"no", "false"})
_FIRST_LINE_ANSWER = re.compile(r"^\W*(yes|no|true|false)\b[\s.,:;!\-–—]*", re.IGNORECASE)
MAX_REASON_CHARS = 300


@dataclass
class YesNo:
    call: ModelCall
    confidence: float | None
    """P(yes) in [0, 1]; None when no answer could be read."""
    source: str
    answer: str | None
    """yes | no | None"""
    reason: str | None


def supports_logprobs(handle: Any) -> bool:
    """Whether ``handle``'s answers can carry ``top_logprobs`` (its backend declares the capability)."""
    return isinstance(handle, ChatModelHandle) and handle.capabilities.logprobs


def reason_of(raw: str | None) -> str | None:
    """The short reason after the yes/no word (first lines of the answer), or None."""
    text = bound_answer(raw)[0].strip()
    if not text:
        return None
    text = _FIRST_LINE_ANSWER.sub("", text, count=1).strip()
    text = " ".join(text.split())
    if not text:
        return None
    return text[:MAX_REASON_CHARS]


def _token_probabilities(metadata: Mapping[str, Any]) -> tuple[float, float] | None:
    """(P(yes-like first token), P(no-like first token)) from a response's logprobs, or None when absent.

    Reads the chat shape ``logprobs.content[0].top_logprobs = [{token, logprob}, ...]`` and the legacy
    completions shape ``logprobs.top_logprobs[0] = {token: logprob}``. The first token that is not whitespace
    or punctuation is the answer token (some servers start with a space or a newline token)."""
    logprobs = metadata.get("logprobs") if isinstance(metadata, Mapping) else None
    if not isinstance(logprobs, Mapping):
        return None
    positions: list[list[tuple[str, float]]] = []
    content = logprobs.get("content")
    if isinstance(content, list):
        for entry in content[:4]:
            if not isinstance(entry, Mapping):
                continue
            options = entry.get("top_logprobs") or [{"token": entry.get("token"), "logprob": entry.get("logprob")}]
            positions.append([(str(o.get("token", "")), o.get("logprob")) for o in options if isinstance(o, Mapping)])
    legacy = logprobs.get("top_logprobs")
    if not positions and isinstance(legacy, list):
        for entry in legacy[:4]:
            if isinstance(entry, Mapping):
                positions.append([(str(token), value) for token, value in entry.items()])
    for options in positions:
        cleaned = [(token.strip().strip(".,:;!\"'*").lower(), value) for token, value in options]
        if all(not token for token, _ in cleaned):
            continue  # a whitespace/punctuation token first: the answer is the next position
        yes = no = 0.0
        for token, value in cleaned:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            if token in _YES:
                yes += math.exp(min(0.0, value))
            elif token in _NO:
                no += math.exp(min(0.0, value))
        return yes, no
    return None


def _value_ok(value: dict[str, Any]) -> bool:
    p = value.get("p_yes")
    return isinstance(value.get("raw"), str) and (p is None or (
        isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0.0 <= p <= 1.0))


def _logprob_call(handle: ChatModelHandle, messages: list[tuple[str, str]], prompt: PromptTemplate,
                  images: Sequence[Any], cache: ModelCache | None) -> tuple[ModelCall, float | None]:
    params = handle.sampling_params()
    prepared = prepare_call(handle, messages, prompt=prompt, images=images, cache=cache,
                            key_parts={"kind": "yes_logprobs", "params": params, "top_logprobs": TOP_LOGPROBS})
    cached, cache_note = lookup_cached(prepared, cache, _value_ok)
    if cached is not None:
        return prepared.record(cached["raw"], "hit", None, {**params, "scoring": "logprobs"}), cached.get("p_yes")
    chat = handle.variant(params["temperature"], params["seed"]).bind(logprobs=True, top_logprobs=TOP_LOGPROBS)
    with handle.slot:
        try:
            message = call_with_policy(lambda: with_retry(chat, handle).invoke(prepared.langchain_messages()), handle)
        except AgentCirError:
            raise
        except Exception as err:  # noqa: BLE001 - reported with the model and endpoint
            raise call_failed(handle, err) from err
    raw = message_text(message)
    found = _token_probabilities(getattr(message, "response_metadata", {}) or {})
    p_yes: float | None = None
    call_params: dict[str, Any] = {**params, "scoring": "logprobs"}
    if found is not None and sum(found) > 0:
        p_yes = found[0] / (found[0] + found[1])
        call_params.update({"p_yes_raw": found[0], "p_no_raw": found[1]})
    else:
        call_params["scoring_note"] = "no yes/no token among the first token's top_logprobs"
    if cache_note:
        call_params["cache_note"] = cache_note
    if cache is not None and prepared.key is not None:
        cache.put(prepared.key, {"raw": raw, "p_yes": p_yes})
    return prepared.record(raw, "miss" if cache is not None else "off", message_usage(message), call_params), p_yes


def ask_yes_no(handle: Any, messages: list[tuple[str, str]], *, prompt: PromptTemplate, images: Sequence[Any] = (),
               cache: ModelCache | None = None, scoring: str = "auto") -> YesNo:
    """Ask ``handle`` a yes/no question; the confidence from the best source the backend offers."""
    if scoring == "auto" and supports_yes_probability(handle):
        call, p = yes_probability(handle, messages, prompt=prompt, images=images, cache=cache)
        return YesNo(call, p, "logits", "yes" if p >= 0.5 else "no", None)
    if scoring == "auto" and supports_logprobs(handle):
        call, p = _logprob_call(handle, messages, prompt, images, cache)
        parsed, _where = parse_yes_no(call.raw)
        answer = None if parsed is None else ("yes" if parsed >= 0.5 else "no")
        if p is not None:
            return YesNo(call, p, "logprobs", answer, reason_of(call.raw))
        if parsed is not None:
            return YesNo(call, parsed, "answer", answer, reason_of(call.raw))
        return YesNo(call, None, "unparsed", None, reason_of(call.raw))
    call = invoke(handle, messages, prompt=prompt, images=images, cache=cache)
    parsed, _where = parse_yes_no(call.raw)
    if parsed is None:
        return YesNo(call, None, "unparsed", None, reason_of(call.raw))
    return YesNo(call, parsed, "answer", "yes" if parsed >= 0.5 else "no", reason_of(call.raw))


def ask_yes_no_many(handle: Any, questions: Sequence[list[tuple[str, str]]], *, prompt: PromptTemplate,
                    images: Sequence[Sequence[Any]] | None = None, cache: ModelCache | None = None,
                    scoring: str = "auto") -> list[YesNo]:
    """:func:`ask_yes_no` for each question, in order; batched into few forwards where the backend has logits."""
    images = list(images) if images is not None else [()] * len(questions)
    if scoring == "auto" and supports_yes_probability(handle):
        scored = yes_probabilities(handle, list(questions), prompt=prompt, images=images, cache=cache)
        return [YesNo(call, p, "logits", "yes" if p >= 0.5 else "no", None) for call, p in scored]
    return [ask_yes_no(handle, messages, prompt=prompt, images=shown, cache=cache, scoring=scoring)
            for messages, shown in zip(questions, images)]
