"""The in-process backends ``hf:`` (a transformers text LLM, GGUF included) and ``hf-vlm:`` (a transformers VLM);
the models themselves are in ``hf_chat_model.py``."""

from __future__ import annotations

from agent_cir.backends.capabilities import BuiltChatModel
from agent_cir.backends.rate_limit import rate_limiter
from agent_cir.config import ModelConfig


def create_local(config: ModelConfig, model: str, vision: bool) -> BuiltChatModel:
    from agent_cir.backends.hf_models import TransformersChatModel, TransformersVLMChatModel
    from agent_cir.backends.hf_weights import split_gguf_path

    model_path, gguf_file = split_gguf_path(model, config.gguf_file)
    cls = TransformersVLMChatModel if vision else TransformersChatModel
    chat = cls(
        model_path=model_path,
        gguf_file=gguf_file,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        num_beams=config.num_beams,
        seed=config.seed,
        timeout=config.timeout,
        device_map=config.device_map,
        dtype=config.dtype,
        quantization=config.quantization,
        num_threads=config.num_threads,
        batch_size=config.batch_size,
        load_kwargs=dict(config.extra),
        rate_limiter=rate_limiter(config),
    )
    chat.weights  # load now: a missing model fails when the pipeline is built, not mid-run
    return BuiltChatModel(
        chat=chat,
        model=model_path,
        fingerprint={"gguf_file": gguf_file, "dtype": config.dtype, "quantization": config.quantization,
                     **({"num_beams": config.num_beams} if (config.num_beams or 1) > 1 else {})},
    )
