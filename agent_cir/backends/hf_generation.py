"""Batched generation with local transformers weights, as functions of the model and tokenizer: the ``generate``
settings, the order and chunks of a batch, one padded ``generate`` call, and one row of its output decoded."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from agent_cir.backends.hf_inputs import RenderedConversation


def generation_settings(
    tokenizer: Any, *, temperature: float, max_tokens: int, top_p: float | None, num_beams: int | None,
    timeout: float | None, stop: list[str] | None,
) -> dict[str, Any]:
    """The keyword arguments of ``generate``: greedy at temperature 0, sampling above, beams, time and stop limits."""
    generate_kwargs: dict[str, Any] = {"max_new_tokens": max_tokens}
    if temperature > 0:
        generate_kwargs.update(do_sample=True, temperature=temperature)
        if top_p is not None:
            generate_kwargs["top_p"] = top_p
    else:
        generate_kwargs["do_sample"] = False  # greedy (or beam search): deterministic at temperature 0
    if num_beams and num_beams > 1:
        generate_kwargs["num_beams"] = int(num_beams)
    if timeout:
        generate_kwargs["max_time"] = float(timeout)
    if stop:
        generate_kwargs.update(stop_strings=stop, tokenizer=tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is not None:
        generate_kwargs["pad_token_id"] = pad_id
    return generate_kwargs


def end_of_sequence_ids(model: Any, tokenizer: Any) -> set[int]:
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}


def is_encoder_decoder(model: Any) -> bool:
    config = model.config
    text_config = getattr(config, "text_config", None)
    return bool(getattr(config, "is_encoder_decoder", False) or getattr(text_config, "is_encoder_decoder", False))


def run_generate(model: Any, inputs: Any, generate_kwargs: dict[str, Any], *, temperature: float, seed: int | None,
                 num_threads: int | None) -> Any:
    """One ``generate`` call (the caller holds the weights' lock): inputs on the model's device, the seed set
    for sampling, torch's CPU threads set for the call and restored."""
    import torch

    device = getattr(model, "device", None)
    if device is not None:
        inputs = inputs.to(device)
    if temperature > 0 and seed is not None:
        torch.manual_seed(int(seed))  # under the lock: a call's samples depend only on its seed
    previous_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        with torch.inference_mode():
            return model.generate(**inputs, **generate_kwargs)
    finally:
        if num_threads:
            torch.set_num_threads(previous_threads)


def row_answer(output: Any, inputs: Any, row: int, *, tokenizer: Any, pad_id: int | None, eos_ids: set[int],
               encoder_decoder: bool, model_name: str) -> ChatResult:
    """One row of a padded generate output -> its answer (new tokens up to the first end-of-sequence)."""
    if encoder_decoder:
        new_tokens = output[row, 1:].tolist()  # the decoder output starts with its start token
    else:
        new_tokens = output[row, inputs["input_ids"].shape[1] :].tolist()
    end = next((i + 1 for i, token in enumerate(new_tokens) if token in eos_ids), None)
    if end is not None:
        new_tokens = new_tokens[:end]
    else:  # stopped by a stop string or the token limit: what follows in the padded batch is padding
        while new_tokens and new_tokens[-1] == pad_id:
            new_tokens.pop()
    text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    mask = inputs.get("attention_mask")
    prompt_tokens = int(mask[row].sum()) if mask is not None else int(inputs["input_ids"].shape[1])
    usage = {
        "input_tokens": prompt_tokens,
        "output_tokens": len(new_tokens),
        "total_tokens": prompt_tokens + len(new_tokens),
    }
    message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": model_name})
    return ChatResult(generations=[ChatGeneration(message=message)])


def batch_chunks(rendered: list[RenderedConversation | BaseException], tokenizer: Any, batch_size: int) -> list[list[int]]:
    """Indices of the renderable conversations, longest first, ``batch_size`` at a time; conversations with
    and without images never share a call (a processor takes images for all rows or none)."""
    usable = [i for i, item in enumerate(rendered) if isinstance(item, RenderedConversation)]
    lengths = {i: len(tokenizer(rendered[i].prompt, add_special_tokens=False)["input_ids"]) for i in usable}  # type: ignore[union-attr]
    order = sorted(usable, key=lambda i: (len(rendered[i].images) > 0, lengths[i]), reverse=True)  # type: ignore[union-attr]
    chunks: list[list[int]] = []
    for index in order:
        has_images = len(rendered[index].images) > 0  # type: ignore[union-attr]
        if chunks and len(chunks[-1]) < batch_size and (len(rendered[chunks[-1][0]].images) > 0) == has_images:  # type: ignore[union-attr]
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return chunks
