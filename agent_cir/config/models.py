"""The model specs of a recipe: the image-text encoder (``encoder:``) and the chat models (``models:``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from agent_cir.config.base import _Strict
from agent_cir.config.names import registered_name
from agent_cir.encoders.registry import ENCODER_BACKENDS

EncoderBackend = registered_name("encoder backend", ENCODER_BACKENDS)
"""An ``encoder.backend`` name: a key of ``agent_cir.encoders.registry.ENCODER_BACKENDS``."""


class NormalizeConstants(_Strict):
    """Explicit per-channel (R, G, B) normalisation constants: pixel = (pixel - mean) / std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @model_validator(mode="after")
    def _positive_std(self) -> "NormalizeConstants":
        if any(not value > 0 for value in self.std):
            raise ValueError(f"normalize.std values must be > 0 (they divide the pixels), got {list(self.std)}")
        return self


class EncoderConfig(_Strict):
    """Image-text (or text-only) encoder. Consumed by ``agent_cir.encoders.create_encoder``."""

    backend: EncoderBackend = "open_clip"
    """A key of ``agent_cir.encoders.registry.ENCODER_BACKENDS`` (open_clip, hf, sentence-transformers)."""
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    """open_clip: pretrained tag, local checkpoint path, or 'none' for random init. hf: unused (model is the id)."""
    device: str = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = Field(64, ge=1)
    preprocess: Literal["center_crop", "targetpad"] = "center_crop"
    """Image preprocessing. center_crop: the model's own (open_clip's transforms / the transformers processor:
    resize the short side, centre crop). targetpad: pad the short side with black until long / short =
    target_ratio, then the model's own (CIReVL's and SEARLE's default). Recorded in the index; an index is
    searched only with the preprocessing it was built with."""
    target_ratio: float = Field(1.25, ge=1.0)
    """targetpad only: the aspect ratio (long side / short side) images are padded to."""
    normalize: Literal["model", "openai"] | NormalizeConstants = "model"
    """Image normalisation constants. model: the model's own (open_clip's per-tag values / the processor's).
    openai: OpenAI CLIP's mean and std whatever the weights, as CIReVL and WeiMoCIR hard-code them. Or
    explicit ``{mean: [r, g, b], std: [r, g, b]}``. Recorded in the index; part of the encoder identity."""


class ModelConfig(_Strict):
    """A chat model. Consumed by ``agent_cir.backends.create_chat_model``.

    ``spec`` is ``openai:MODEL``, ``ollama:MODEL``, ``hf:ID_OR_PATH``, ``hf-vlm:ID_OR_PATH`` or ``fake:...``.
    """

    spec: str
    base_url: str | list[str] | None = None
    """One OpenAI-compatible server, or a list of replicas of the same model: calls are spread round-robin and
    failed over to the next replica on transport errors, timeouts and 5xx (``backends/multi_endpoint.py``)."""
    failover_cooldown: float = Field(30.0, ge=0.0)
    """With several base_urls: seconds a replica that failed is skipped."""
    api_key: str | None = None
    api_key_env: str | None = None
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 512
    seed: int | None = 0
    timeout: float = 120.0
    max_retries: int = Field(3, ge=0)
    max_concurrency: int = Field(4, ge=1)
    requests_per_second: float | None = None
    # local transformers backends (accelerate / bitsandbytes options)
    device_map: str | None = None
    dtype: str | None = None
    quantization: Literal["4bit", "8bit"] | None = None
    gguf_file: str | None = None
    structured_method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema"
    """How structured output is asked for (LangChain's with_structured_output method). json_mode suits servers
    that take only {"type": "json_object"} (llama-cpp-python); the schema then lives in the prompt alone."""
    num_threads: int | None = Field(None, ge=1)
    """Local backends: torch CPU threads while generating (None: torch's default). On a busy shared CPU, 1 is
    often several times faster than oversubscribed threads."""
    num_beams: int | None = Field(None, ge=1)
    """Local backends (hf:, hf-vlm:): beam search with this many beams (None or 1: greedy at temperature 0).
    CIReVL's BLIP-2 captioner decodes with LAVIS's defaults, 5 beams and 30 new tokens (max_tokens: 30).
    Servers ignore it."""
    batch_size: int = Field(8, ge=1)
    """Local backends (hf:, hf-vlm:): conversations per padded generate call when a stage sends a list of
    prompts (LangChain ``batch``). Servers ignore it: they take up to max_concurrency requests at once."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Passed through to the LangChain chat model constructor."""

