"""Recipe schema: one YAML file configures every stage. Validated with pydantic; errors name the key and file.

Ownership while the project is young: each ``*Config`` class belongs to the module that consumes it
(named in its docstring); add fields there, with defaults, and keep ``extra="forbid"`` so that typos in
a recipe are caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_cir.errors import AgentCirError
from agent_cir.hashing import stable_hash


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ConfigError(AgentCirError, ValueError):
    """A recipe file is missing, unreadable or invalid. The message names the file and the bad key."""


class EncoderConfig(_Strict):
    """Image-text (or text-only) encoder. Consumed by ``agent_cir.encoders.create_encoder``."""

    backend: Literal["open_clip", "hf", "sentence-transformers"] = "open_clip"
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    """open_clip: pretrained tag, local checkpoint path, or 'none' for random init. hf: unused (model is the id)."""
    device: str = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = Field(64, ge=1)


class ModelConfig(_Strict):
    """A chat model. Consumed by ``agent_cir.backends.create_chat_model``.

    ``spec`` is ``openai:MODEL``, ``ollama:MODEL``, ``hf:ID_OR_PATH``, ``hf-vlm:ID_OR_PATH`` or ``fake:...``.
    """

    spec: str
    base_url: str | None = None
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
    extra: dict[str, Any] = Field(default_factory=dict)
    """Passed through to the LangChain chat model constructor."""


class CaptionConfig(_Strict):
    """Consumed by ``agent_cir.stages.caption``."""

    enabled: bool = True
    model: str = "vlm"
    """Name of an entry under ``models:``."""
    prompt: str = "caption"
    num_captions: int = Field(1, ge=1)
    temperature: float | None = None
    """Sampling temperature when num_captions > 1 (None: the model's own)."""


class RewriteConfig(_Strict):
    """Consumed by ``agent_cir.stages.rewrite``."""

    enabled: bool = True
    model: str = "llm"
    prompt: str = "rewrite_cot"
    num_descriptions: int = Field(1, ge=1)
    structured_output: bool = True
    """Ask the backend for JSON-schema output where it supports it; the tolerant parser is always the fallback."""
    per_caption: bool = True
    """With several captions (caption.num_captions > 1): one rewrite call per caption, every description kept
    (an ensemble). False: one call that sees all captions (template variable ``captions``)."""


class OneStageConfig(_Strict):
    """Consumed by ``agent_cir.stages.one_stage``. When enabled, replaces caption + rewrite."""

    enabled: bool = False
    model: str = "vlm"
    prompt: str = "one_stage"
    num_descriptions: int = Field(1, ge=1)
    structured_output: bool = True


class GalleryCaptionsConfig(_Strict):
    path: str | None = None
    """JSON file: gallery id -> caption or list of captions (None: given at run time, e.g. --gallery-captions)."""
    weight: float = Field(1.0, ge=0.0, le=1.0)
    """g in score = (1-g) cos(q, image) + g mean_j cos(q, caption_j). g = 1 needs no image encoder."""


class RetrieveConfig(_Strict):
    """Consumed by ``agent_cir.stages.retrieve``."""

    mode: Literal["text", "image", "fusion", "pdv"] = "text"
    alpha: float = Field(0.8, ge=0.0, le=1.0)
    """fusion: q = normalise((1 - alpha) * img + alpha * txt)."""
    pdv_a: float = 1.0
    pdv_b: float = Field(0.5, ge=0.0, le=1.0)
    """pdv: d = txt(target) - txt(caption); q = normalise((1-b)(img + a d) + b (txt(target) + a d))."""
    k: int = Field(50, ge=1)
    exclude_reference: bool = True
    gallery_captions: GalleryCaptionsConfig | None = None
    text_source: Literal["target", "target+modification", "modification", "caption", "caption+modification"] = "target"
    """Which text becomes txt: the target description(s) (default); target+modification ensembles them with
    the modification text itself (mean of normalised embeddings); the others are no-LLM baselines."""


class GridConfig(_Strict):
    """Consumed by ``agent_cir.grid.render_grid`` (through the rerank stage)."""

    rows: int = Field(3, ge=1)
    cols: int = Field(3, ge=1)
    cell_size: int = Field(256, ge=32)
    """Side of each square cell in pixels; pictures are letterboxed into it, never cropped."""
    gap: int = Field(8, ge=0)
    background: str = "#202020"
    caption_strip: bool = False
    """Draw each candidate's gallery caption under its cell (needs captions handed to the rerank stage)."""
    reference: Literal["separate", "cell", "none"] = "separate"
    """separate: the reference goes to the judge as its own first image; cell: it takes the first cell,
    marked "R"; none: the judge sees only the candidates."""
    mark_scale: float = Field(0.2, gt=0.0, le=0.5)
    """Height of the number on each cell as a fraction of the cell size."""


class RerankConfig(_Strict):
    """Consumed by ``agent_cir.stages.rerank``."""

    enabled: bool = False
    model: str = "judge"
    prompt: str = "judge_grid"
    """Template for method=grid; method=pointwise uses ``pointwise_prompt``."""
    pointwise_prompt: str = "judge_pointwise"
    k: int = Field(9, ge=1)
    """How many of the retrieved candidates the judge sees; the rest keep their retrieval order below them."""
    method: Literal["grid", "pointwise"] = "grid"
    grid: GridConfig = Field(default_factory=GridConfig)
    passes: int = Field(1, ge=1)
    """Position-bias control: pass 1 shows retrieval order, further passes seeded shuffles of the cells."""
    aggregation: Literal["borda", "rrf"] = "borda"
    rrf_k: int = Field(60, ge=0)
    """Constant of reciprocal-rank aggregation: score = sum over passes of 1 / (rrf_k + rank)."""
    seed: int = 0
    overflow: Literal["sliding", "tournament"] = "sliding"
    """k larger than one grid. sliding: windows of one grid from the bottom of the list up (RankGPT); the
    best (grid - step) candidates are sure to reach the top; calls ~ (k - grid) / step + 1 per pass.
    tournament: round-robin groups of one grid each, the top grid // groups of each advance to a final
    grid (recursively); the others follow by their rank in their group; calls = groups + later rounds."""
    window_step: int | None = Field(None, ge=1)
    """Sliding windows: how far each window moves up (None: half a grid)."""
    fusion_weight: float = Field(0.0, ge=0.0, le=1.0)
    """0: final order = judge order. w > 0: final score = w * retrieval + (1 - w) * judge, both scaled to
    [0, 1] over the reranked candidates (retrieval min-max, judge from its rank or P(yes))."""
    include_caption: bool = True
    """Give the judge the reference caption (from the caption stage or the query)."""
    structured_output: bool = True
    """Ask the backend for JSON-schema output where it supports it; the tolerant parser is always the fallback."""
    temperature: float | None = None
    """Judge temperature (None: the model's own)."""


class CacheConfig(_Strict):
    enabled: bool = True
    path: str | None = None
    """SQLite file; None means ~/.cache/agent_cir/cache.sqlite (or $AGENT_CIR_CACHE)."""


class Recipe(_Strict):
    """A complete pipeline configuration."""

    name: str = "custom"
    description: str = ""
    mirrors: str = ""
    """Which published method and setting this recipe follows."""
    differences: str = ""
    """What differs from that paper's setting."""
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    caption: CaptionConfig = Field(default_factory=lambda: CaptionConfig(enabled=False))
    rewrite: RewriteConfig = Field(default_factory=lambda: RewriteConfig(enabled=False))
    one_stage: OneStageConfig = Field(default_factory=OneStageConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    max_concurrency: int = Field(4, ge=1)
    chunk_size: int = Field(256, ge=1)
    """Queries per chunk in ``Pipeline.run_batch``: each stage runs over a whole chunk before the next starts
    (one encoder batch, one search, concurrent model calls). Bounds memory; changes no result (runtime only)."""

    @model_validator(mode="after")
    def _models_exist(self) -> Recipe:
        for stage_name in ("caption", "rewrite", "one_stage", "rerank"):
            stage = getattr(self, stage_name)
            if stage.enabled and stage.model not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise ValueError(
                    f"{stage_name}.model names {stage.model!r}, which is not under 'models:' (defined: {known})"
                )
        if self.one_stage.enabled and (self.caption.enabled or self.rewrite.enabled):
            raise ValueError("one_stage replaces caption and rewrite: disable them (enabled: false) or one_stage")
        return self

    @property
    def hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent / "recipes"


def available_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid recipe {source}:"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and where it is nested)"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def recipe_from_dict(data: dict[str, Any], source: str = "<dict>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe by packaged name (``cirevl``) or YAML path; ``overrides`` are deep-merged on top."""
    raw = str(name_or_path)
    path = Path(raw).expanduser()
    if not path.is_file():
        packaged = available_recipes()
        if raw in packaged:
            path = packaged[raw]
        else:
            raise ConfigError(
                f"recipe {raw!r} not found: no such file, and no packaged recipe of that name "
                f"(packaged: {', '.join(packaged) or 'none'}; list them with `agent-cir recipes`)"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"recipe {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: the top level must be a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = deep_merge(data, overrides)
    return recipe_from_dict(data, source=str(path))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
