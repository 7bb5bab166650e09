"""Backend-side scoring from next-token logits: P("yes") of a local transformers model (``hf:`` or ``hf-vlm:``).

A pointwise judge or a verifier asks "does this candidate show the wanted image? yes or no". A local model can
answer with a probability instead of a word (as AnswerDotAI rerankers' MonoVLM ranker scores with the logits of
its "True"/"False" tokens): P(yes) = sum of the probabilities of the first tokens of the "yes" spellings,
divided by that of the "yes" and "no" spellings together, read at the last prompt position. No generation.

Several questions are scored in ONE padded forward (:func:`yes_probabilities`, up to the model's
``batch_size`` rows): rows are left-padded, the attention mask hides the padding, each row's logits are read at
its own last real token, and position ids are counted from each row's first real token (what ``generate``
does), so a row scores the same alone or in a batch. Qwen2-VL-style models (3-D rotary positions) derive
their positions from the attention mask themselves and get none. Text rows that begin with the same tokens (a
verifier's questions differ only in the candidate) have that prefix computed once and reused through its
key/value cache (:func:`shared_prefix_logits`): one forward of the prefix, one batched forward of the suffixes.

Only the chat model's public surface is used: ``chat.prepare_inputs_many(conversations)`` (padded model inputs
for several LangChain conversations), ``chat.weights.model`` (called for its ``.logits``),
``chat.weights.processor`` (its ``.tokenizer``, or the processor itself for a text model), ``chat.weights.lock``
(held while the model runs, as generation does). Calls go through the same path as chat answers
(:func:`agent_cir.backends.prepared.prepare_call`): the same cache (key kind ``yes_probability``), damaged-entry
handling, concurrency slot and ``ModelCall`` record (one per question; ``params.batch_rows`` says how many
questions shared its forward).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from typing import Any

from agent_cir.backends.call_policy import call_failed
from agent_cir.backends.handle import ChatModelHandle
from agent_cir.backends.prepared import PreparedCall, lookup_cached, prepare_call
from agent_cir.cache import ModelCache
from agent_cir.errors import AgentCirError
from agent_cir.prompts import PromptTemplate
from agent_cir.types import ModelCall

YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes")
NO_WORDS = ("no", "No", "NO", " no", " No")
_OWN_POSITION_MODELS = frozenset({"qwen2_vl", "qwen2_5_vl"})
"""Model types that build (3-D, multimodal) rotary positions from the attention mask inside forward."""


def first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The ids of the first token of each spelling (a spelling may tokenize into several pieces)."""
    ids: set[int] = set()
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if encoded:
            ids.add(int(encoded[0]))
    return sorted(ids)


def supports_yes_probability(handle: Any) -> bool:
    """Whether ``handle`` is a local model (``hf:`` / ``hf-vlm:``) whose next-token logits we can read."""
    chat = getattr(handle, "chat", None)
    capabilities = getattr(handle, "capabilities", None)
    return (bool(getattr(capabilities, "next_token_logits", False))
            and callable(getattr(chat, "prepare_inputs_many", None))
            and hasattr(type(chat), "weights"))


def _value_ok(value: dict[str, Any]) -> bool:
    p_yes = value.get("p_yes")
    return (isinstance(value.get("raw"), str) and isinstance(p_yes, (int, float)) and not isinstance(p_yes, bool)
            and math.isfinite(p_yes) and 0.0 <= p_yes <= 1.0)


def _takes_position_ids(model: Any) -> bool:
    if getattr(getattr(model, "config", None), "model_type", None) in _OWN_POSITION_MODELS:
        return False
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def last_token_logits(model: Any, inputs: Any) -> Any:
    """(rows, vocab) float logits at each row's last real token, from one forward over padded ``inputs``."""
    import torch

    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    if _takes_position_ids(model) and "position_ids" not in inputs:
        # generate's rule: a row's positions count from its first real token (left padding shifts nothing)
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(**inputs).logits
    columns = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), columns, torch.zeros_like(columns)).max(dim=1).values  # any padding side
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, last.to(logits.device)].float()


MIN_SHARED_PREFIX = 8
"""Fewer common tokens than this: not worth a second forward; the rows go through one plain batched forward."""


def shared_prefix_logits(model: Any, inputs: Any) -> Any | None:
    """(rows, vocab) logits at each row's last token, the rows' common token prefix computed ONCE: one forward of
    the prefix (batch 1, its key/value cache kept), then one batched forward of the rows' own suffixes on that
    cache (right-padded; causal attention keeps a row's real tokens from seeing its padding, and each row is
    read at its own last real token). None when the inputs are not plain text rows or share too little.

    A verifier's k questions differ only in the candidate (its captions): the instructions, the modification and
    the reference come first and are the same, so most of the work is done once instead of k times."""
    import torch

    if set(inputs.keys()) - {"input_ids", "attention_mask"} or inputs["input_ids"].shape[0] < 2:
        return None  # images (pixel values, grids) or a single row: the plain batched forward
    mask = inputs.get("attention_mask")
    ids = inputs["input_ids"]
    rows = [row[m.bool()] if mask is not None else row for row, m in zip(ids, mask if mask is not None else ids)]
    shortest = min(len(row) for row in rows)
    common = 0
    first = rows[0]
    while common < shortest - 1 and all(int(row[common]) == int(first[common]) for row in rows[1:]):
        common += 1
    if common < MIN_SHARED_PREFIX:
        return None
    suffixes = [row[common:] for row in rows]
    width = max(len(suffix) for suffix in suffixes)
    pad = int(first[0])  # any id: padded positions come after a row's real tokens and are never read
    suffix_ids = torch.full((len(rows), width), pad, dtype=ids.dtype, device=ids.device)
    suffix_mask = torch.zeros((len(rows), width), dtype=torch.long, device=ids.device)
    for index, suffix in enumerate(suffixes):
        suffix_ids[index, : len(suffix)] = suffix
        suffix_mask[index, : len(suffix)] = 1
    with torch.inference_mode():
        prefix = model(input_ids=first[:common].unsqueeze(0), use_cache=True)
        cache = getattr(prefix, "cache", None) or prefix.past_key_values
        cache.batch_repeat_interleave(len(rows))
        # transformers renames the argument (past_key_values -> cache, 5.x); pass it under the name forward takes
        cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        full_mask = torch.cat([torch.ones((len(rows), common), dtype=torch.long, device=ids.device), suffix_mask], 1)
        positions = (common + torch.arange(width, device=ids.device)).expand(len(rows), width)
        logits = model(input_ids=suffix_ids, attention_mask=full_mask, position_ids=positions,
                       use_cache=True, **{cache_argument: cache}).logits
    last = suffix_mask.sum(dim=1) - 1
    return logits[torch.arange(len(rows), device=logits.device), last.to(logits.device)].float()


def _score_rows(handle: ChatModelHandle, prepared: list[PreparedCall], share_prefix: bool = True
                ) -> list[tuple[float, float, int]]:
    """(P(yes-like), P(no-like), prompt tokens) per call, the calls' model inputs padded into one forward."""
    import torch

    chat = handle.chat
    try:
        weights = chat.weights
        tokenizer = getattr(weights.processor, "tokenizer", weights.processor)
        yes_ids, no_ids = first_token_ids(tokenizer, YES_WORDS), first_token_ids(tokenizer, NO_WORDS)
        with handle.slot, weights.lock:
            inputs = chat.prepare_inputs_many([call.langchain_messages() for call in prepared])
            device = getattr(weights.model, "device", None)
            if device is not None:
                inputs = inputs.to(device)
            logits = None
            if share_prefix:
                try:
                    logits = shared_prefix_logits(weights.model, inputs)
                except Exception:  # noqa: BLE001 - a cache that cannot be repeated over rows: the plain forward
                    logits = None
            if logits is None:
                logits = last_token_logits(weights.model, inputs)
            lengths = inputs["attention_mask"].sum(dim=1).tolist() if "attention_mask" in inputs else (
                [int(inputs["input_ids"].shape[1])] * len(prepared))
    except AgentCirError:
        raise
    except Exception as err:  # noqa: BLE001 - reported with the model, like a failed generation
        raise call_failed(handle, err) from err
    probabilities = torch.softmax(logits, dim=-1)
    yes = probabilities[:, yes_ids].sum(dim=1).tolist()
    no = probabilities[:, no_ids].sum(dim=1).tolist()
    return [(float(y), float(n), int(length)) for y, n, length in zip(yes, no, lengths)]


def yes_probabilities(
    handle: ChatModelHandle,
    conversations: Sequence[list[tuple[str, str]]],
    *,
    prompt: PromptTemplate,
    images: Sequence[Sequence[Any]] | None = None,
    cache: ModelCache | None = None,
    batch_size: int | None = None,
    share_prefix: bool = True,
) -> list[tuple[ModelCall, float]]:
    """(trace record, P(yes)) for each yes/no question, in order; cache misses scored ``batch_size`` per forward
    (default: the model's own ``batch_size``). Questions with different numbers of images never share a forward
    (a processor takes images for every row or none). ``share_prefix``: text rows that start with the same
    tokens have that prefix computed once (:func:`shared_prefix_logits`; two forwards per batch instead of one)."""
    if not supports_yes_probability(handle):
        raise AgentCirError(f"model {getattr(handle, 'id', handle)} exposes no logits (only hf: and hf-vlm: do)")
    images = list(images) if images is not None else [()] * len(conversations)
    if len(images) != len(conversations):
        raise AgentCirError(f"yes_probabilities: {len(conversations)} questions but {len(images)} image lists")
    size = max(1, int(batch_size or getattr(handle.chat, "batch_size", 8) or 8))
    results: list[tuple[ModelCall, float] | None] = [None] * len(conversations)
    waiting: dict[int, list[tuple[int, PreparedCall, str | None]]] = {}
    for index, (messages, shown) in enumerate(zip(conversations, images)):
        prepared = prepare_call(handle, messages, prompt=prompt, images=shown, cache=cache,
                                key_parts={"kind": "yes_probability"})
        cached, cache_note = lookup_cached(prepared, cache, _value_ok)
        if cached is not None:
            results[index] = (prepared.record(cached["raw"], "hit", None, {"scoring": "yes_probability"}),
                              float(cached["p_yes"]))
        else:
            waiting.setdefault(len(shown), []).append((index, prepared, cache_note))
    for group in waiting.values():
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            began = time.perf_counter()
            scored = _score_rows(handle, [prepared for _, prepared, _ in chunk], share_prefix)
            share = (time.perf_counter() - began) / len(chunk)
            for (index, prepared, cache_note), (p_yes_raw, p_no_raw, tokens) in zip(chunk, scored):
                total = p_yes_raw + p_no_raw
                p = p_yes_raw / total if total > 0 else 0.5
                raw = f"{'yes' if p >= 0.5 else 'no'} (P(yes)={p:.4f} from next-token logits)"
                if cache is not None and prepared.key is not None:
                    cache.put(prepared.key, {"raw": raw, "p_yes": p})
                usage = {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}
                params: dict[str, Any] = {"scoring": "yes_probability", "p_yes_raw": p_yes_raw, "p_no_raw": p_no_raw,
                                          "batch_rows": len(chunk)}
                if cache_note:
                    params["cache_note"] = cache_note
                call = prepared.record(raw, "miss" if cache is not None else "off", usage, params)
                call.seconds = round(share, 6)  # the forward's time, shared by its rows
                results[index] = (call, p)
    return [result for result in results if result is not None]


def yes_probability(
    handle: ChatModelHandle,
    messages: list[tuple[str, str]],
    *,
    prompt: PromptTemplate,
    images: Sequence[Any] = (),
    cache: ModelCache | None = None,
) -> tuple[ModelCall, float]:
    """(the call's trace record, P(yes)) for one yes/no question to a local model, through the cache."""
    return yes_probabilities(handle, [messages], prompt=prompt, images=[images], cache=cache)[0]
