"""Backend-side scoring from next-token logits: P("yes") of a local transformers VLM (``hf-vlm:``).

A pointwise judge asks "does this candidate show the wanted image? yes or no". A local model can answer
with a probability instead of a word (as AnswerDotAI rerankers' MonoVLM ranker scores with the logits of
its "True"/"False" tokens): P(yes) = sum of the probabilities of the first tokens of the "yes" spellings,
divided by that of the "yes" and "no" spellings together, from one forward pass.

Only the chat model's public surface is used: ``chat.prepare_inputs(messages)`` (the model inputs for
LangChain messages), ``chat.weights.model`` (called for its ``.logits``), ``chat.weights.processor``
(its ``.tokenizer``, or the processor itself for a text model), ``chat.weights.lock`` (held while the
model runs, as generation does). Calls go through the same path as chat answers
(:func:`agent_cir.backends.invoke.prepare_call`): the same cache (key kind ``yes_probability``), damaged-entry
handling, concurrency slot and ``ModelCall`` record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from agent_cir.backends.chat import ChatModelHandle
from agent_cir.backends.invoke import _call_failed, lookup_cached, prepare_call
from agent_cir.cache import ModelCache
from agent_cir.errors import AgentCirError
from agent_cir.prompts import PromptTemplate
from agent_cir.types import ModelCall

YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes")
NO_WORDS = ("no", "No", "NO", " no", " No")


def first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The ids of the first token of each spelling (a spelling may tokenize into several pieces)."""
    ids: set[int] = set()
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if encoded:
            ids.add(int(encoded[0]))
    return sorted(ids)


def supports_yes_probability(handle: Any) -> bool:
    """Whether ``handle`` is a local VLM whose next-token logits we can read."""
    chat = getattr(handle, "chat", None)
    capabilities = getattr(handle, "capabilities", None)
    return (bool(getattr(capabilities, "next_token_logits", False)) and callable(getattr(chat, "prepare_inputs", None))
            and hasattr(type(chat), "weights"))


def _value_ok(value: dict[str, Any]) -> bool:
    p_yes = value.get("p_yes")
    return (isinstance(value.get("raw"), str) and isinstance(p_yes, (int, float)) and not isinstance(p_yes, bool)
            and math.isfinite(p_yes) and 0.0 <= p_yes <= 1.0)


def yes_probability(
    handle: ChatModelHandle,
    messages: list[tuple[str, str]],
    *,
    prompt: PromptTemplate,
    images: Sequence[Any] = (),
    cache: ModelCache | None = None,
) -> tuple[ModelCall, float]:
    """(the call's trace record, P(yes)) for a yes/no question to a local VLM, through the cache."""
    if not supports_yes_probability(handle):
        raise AgentCirError(f"model {getattr(handle, 'id', handle)} exposes no logits (only hf-vlm: does)")
    prepared = prepare_call(handle, messages, prompt=prompt, images=images, cache=cache,
                            key_parts={"kind": "yes_probability"})
    cached, cache_note = lookup_cached(prepared, cache, _value_ok)
    if cached is not None:
        return prepared.record(cached["raw"], "hit", None, {"scoring": "yes_probability"}), float(cached["p_yes"])

    import torch

    chat = handle.chat
    lc_messages = prepared.langchain_messages()
    try:
        weights = chat.weights
        tokenizer = getattr(weights.processor, "tokenizer", weights.processor)
        yes_ids, no_ids = first_token_ids(tokenizer, YES_WORDS), first_token_ids(tokenizer, NO_WORDS)
        with handle.slot, weights.lock:
            inputs = chat.prepare_inputs(lc_messages)
            device = getattr(weights.model, "device", None)
            if device is not None:
                inputs = inputs.to(device)
            with torch.inference_mode():
                logits = weights.model(**inputs).logits[0, -1].float()
    except AgentCirError:
        raise
    except Exception as err:  # noqa: BLE001 - reported with the model, like a failed generation
        raise _call_failed(handle, err) from err
    probabilities = torch.softmax(logits, dim=-1)
    p_yes_raw = float(probabilities[yes_ids].sum())
    p_no_raw = float(probabilities[no_ids].sum())
    total = p_yes_raw + p_no_raw
    p = p_yes_raw / total if total > 0 else 0.5
    raw = f"{'yes' if p >= 0.5 else 'no'} (P(yes)={p:.4f} from next-token logits)"
    if cache is not None and prepared.key is not None:
        cache.put(prepared.key, {"raw": raw, "p_yes": p})
    prompt_tokens = int(inputs["input_ids"].shape[1])
    usage = {"input_tokens": prompt_tokens, "output_tokens": 0, "total_tokens": prompt_tokens}
    params: dict[str, Any] = {"scoring": "yes_probability", "p_yes_raw": p_yes_raw, "p_no_raw": p_no_raw}
    if cache_note:
        params["cache_note"] = cache_note
    return prepared.record(raw, "miss" if cache is not None else "off", usage, params), p
