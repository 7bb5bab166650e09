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
from agent_cir.redact import REDACTED  # noqa: F401 - re-exported: callers import it from here
from agent_cir.redact import redact_secrets as _redact_secrets


MODEL_STAGES = ("caption", "rewrite", "one_stage", "verify", "refine", "rerank")
"""Stages that call a chat model (recipe section name = stage name; each section names its model)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ConfigError(AgentCirError, ValueError):
    """A recipe file is missing, unreadable or invalid. The message names the file and the bad key."""


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

    backend: Literal["open_clip", "hf", "sentence-transformers"] = "open_clip"
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
    fallback: Literal["modification", "reference_caption"] = "modification"
    """What becomes the query when no answer can be read. modification: the modification text alone (CIReVL
    src/utils.py:183-196, OSrCIR). reference_caption: the reference image's (first) caption, as ImageScope
    (imagescope.py:290-304); the modification text when there is no caption."""


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
    """g in score = (1-g) cos(q, image) + g mean_j cos(q, caption_j). g = 1 needs no image encoder.
    ImageScope's tau (0.15) and WeiMoCIR's beta (0.1) are this weight."""
    pairing: Literal["mean", "paired"] = "mean"
    """mean: every caption of an item is scored against the one query (ImageScope, our mixes).
    paired: WeiMoCIR - the query built from the reference's j-th caption is scored against each item's
    j-th caption, averaged over j (mode weimocir implies it)."""
    per_item: int | None = Field(None, ge=1)
    """paired: how many captions per item take part (J; WeiMoCIR: 3). None: the most any item has."""


_RENAMED_RETRIEVE_FIELDS = {
    "pdv_a": "pdv_alpha_t and pdv_alpha_i (PDV's alpha_T for the text branch, alpha_I for the image branch)",
    "pdv_b": "pdv_beta (PDV-F's fusion weight of the text branch PDV-T; 1 - beta weights PDV-I)",
}


class RetrieveConfig(_Strict):
    """Consumed by ``agent_cir.stages.retrieve`` (formulas in ``agent_cir.fusion``, search in ``agent_cir.retrieval``).

    Modes (q = the query vector; txt = the target description(s) unless text_source says otherwise):
      text      q = txt
      image     q = img(reference)
      fusion    q = normalise((1 - alpha) img + alpha txt)                              (unit inputs)
      weimocir  image branch q = normalise((1 - alpha) img + alpha txt(modification)) (raw inputs), caption
                branch q_j from the reference's caption j, scored against caption j; weight gallery_captions.weight
      pdv       PDV-F of PDV-T = txt(ref caption) + alpha_T D and PDV-I = img + alpha_I D, D = txt - txt(ref caption)
      sqaf      SQUARE: normalise((1 - sqaf_weight) normalise((1 - alpha) img + alpha txt(modification))
                + sqaf_weight txt(target description))
    """

    mode: Literal["text", "image", "fusion", "pdv", "weimocir", "sqaf"] = "text"
    alpha: float = Field(0.8, ge=0.0, le=1.0)
    """fusion / weimocir / sqaf: weight of the text in the image-text fusion (WeiMoCIR CLIP: 0.8)."""
    pdv_alpha_t: float = 1.0
    """PDV alpha_T: scale of the prompt direction added to the reference-text embedding (PDV-T)."""
    pdv_alpha_i: float = 1.0
    """PDV alpha_I: scale of the prompt direction added to the reference-image embedding (PDV-I)."""
    pdv_beta: float = Field(1.0, ge=0.0, le=1.0)
    """PDV-F = normalise((1 - beta) PDV-I + beta PDV-T) (official pseudo-code); 1 = PDV-T alone (the default)."""
    sqaf_weight: float = Field(0.5, ge=0.0, le=1.0)
    """sqaf: weight of the MLLM target caption added to the composed image+modification query."""
    description_scoring: Literal["mean_embedding", "mean_score"] = "mean_embedding"
    """Several target descriptions: mean_embedding = one query, the normalised mean embedding (CIReVL-style);
    mean_score = the mean of each description's score (ImageScope). Same ranking in text mode; scores differ."""
    max_descriptions: int | None = Field(None, ge=1)
    """Score only the first n target descriptions (ImageScope: 3, core / enhanced / comprehensive). None: all."""
    k: int = Field(50, ge=1)
    exclude_reference: bool = True
    """Leave the reference out of its results (see ``exclude_reference_by``)."""
    reference_average_tasks: list[str] = Field(default_factory=list)
    """Benchmark tasks (``Query.meta["task"]``) whose text query is averaged with the reference image feature:
    q = normalise((q_text + normalise(q_image)) / 2). CIReVL does this for GeneCIS focus_attribute only
    (Vision_by_Language src/main.py:212-215)."""
    exclude_reference_by: Literal["id+copies", "id"] = "id+copies"
    """id+copies: the reference's gallery id and every byte-identical copy (a user rarely wants the photo they
    gave back, under any name); id: its gallery id only, as the official CIRR evaluation does (SEARLE
    validate.py:198-202); benchmarks set it."""
    gallery_captions: GalleryCaptionsConfig | None = None
    text_source: Literal["target", "target+modification", "modification", "caption", "caption+modification"] = "target"
    """Which text becomes txt: the target description(s) (default); target+modification ensembles them with
    the modification text itself (mean of normalised embeddings); the others are no-LLM baselines."""
    nprobe: int | None = Field(None, ge=1)
    """IVF indexes: inverted lists visited per query (None: the index's own setting)."""
    ef_search: int | None = Field(None, ge=1)
    """HNSW indexes: search-time candidate list size, efSearch (None: the index's own setting)."""
    faiss_params: dict[str, float] = Field(default_factory=dict)
    """Any other faiss ParameterSpace setting of the image index, e.g. {"k_factor_rf": 4} for a refine stage."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, replacement in _RENAMED_RETRIEVE_FIELDS.items():
                if old in data:
                    raise ValueError(
                        f"retrieve.{old} was replaced by {replacement}; PDV is now computed as published "
                        "(see agent_cir/fusion.py), so set the new fields instead"
                    )
        return data


MAX_GRID_CELL_SIZE = 1024
MAX_GRID_PIXELS = 40_000_000
"""About 120 MB as RGB: far above what any judge model takes in one image."""


class GridConfig(_Strict):
    """Consumed by ``agent_cir.grid.render_grid`` (through the rerank stage)."""

    rows: int = Field(3, ge=1)
    cols: int = Field(3, ge=1)
    cell_size: int = Field(256, ge=32, le=MAX_GRID_CELL_SIZE)
    """Side of each square cell in pixels; pictures are letterboxed into it, never cropped."""
    gap: int = Field(8, ge=0, le=256)
    background: str = "#202020"
    caption_strip: bool = False
    """Draw each candidate's gallery caption under its cell (needs captions handed to the rerank stage)."""
    reference: Literal["separate", "cell", "none"] = "separate"
    """separate: the reference goes to the judge as its own first image; cell: it takes the first cell,
    marked "R"; none: the judge sees only the candidates."""
    mark_scale: float = Field(0.2, gt=0.0, le=0.5)
    """Height of the number on each cell as a fraction of the cell size."""

    @model_validator(mode="after")
    def _bounded_size(self) -> GridConfig:
        # The grid is one RGB image in memory (and sent to a model): refuse sizes no judge could take.
        width = self.cols * self.cell_size + (self.cols + 1) * self.gap
        height = self.rows * self.cell_size + (self.rows + 1) * self.gap
        if width * height > MAX_GRID_PIXELS:
            raise ValueError(
                f"a {self.rows}x{self.cols} grid of {self.cell_size}px cells is {width}x{height} pixels, more than "
                f"the limit of {MAX_GRID_PIXELS:,}; use fewer rows/cols or a smaller cell_size"
            )
        return self


class RerankConfig(_Strict):
    """Consumed by ``agent_cir.rerank.stage``."""

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


class VerifyConfig(_Strict):
    """Consumed by ``agent_cir.stages.verify``: a yes/no judgement of each of the top ``k`` candidates, "does it show
    the reference changed as asked". Confidence = P(yes): next-token logits of a local ``hf-vlm:`` model, the
    ``top_logprobs`` of an OpenAI-compatible server, else the parsed answer (1 / 0). With ``refine`` enabled, a
    query whose best confidence is below ``threshold`` goes round again."""

    enabled: bool = False
    model: str = "verifier"
    k: int = Field(20, ge=1, le=200)
    threshold: float = Field(0.7, ge=0.0, le=1.0)
    """A query is accepted when its best candidate's confidence exceeds this; at or below it the query is uncertain
    (WISER: 0.7, src/utils.py:596, 646-649)."""
    input: Literal["image", "caption"] = "image"
    """image: the verifier sees the reference and the candidate image; caption: the candidate's gallery captions
    (caption galleries, such as the CIRR text surrogate)."""
    prompt: str | None = None
    """Template name; None: ``verify_image`` or ``verify_caption`` by ``input``."""
    fusion: Literal["confidence", "last_round", "rrf"] = "confidence"
    """How the rounds make the final order. confidence: every verified candidate of every round, by its best
    confidence, then retrieval score (WISER's adaptive fusion); last_round: the last round's verified head by
    confidence; rrf: reciprocal-rank fusion of the rounds' confidence orders."""
    rrf_k: int = Field(60, ge=0)
    scoring: Literal["auto", "answer"] = "auto"
    """auto: token probabilities where the backend gives them (logits, logprobs), else the parsed answer;
    answer: always the parsed answer."""
    max_captions: int = Field(5, ge=1)
    """caption input: at most this many gallery captions of a candidate are shown."""


class RefineConfig(_Strict):
    """Consumed by ``agent_cir.stages.refine``: for a query the verifier did not accept, the model reads the
    modification, the current target description and the verifier's findings, and writes a new target description
    (the rewriter's schema); the query then retrieves and verifies again, up to ``max_rounds`` extra rounds."""

    enabled: bool = False
    model: str = "llm"
    prompt: str = "refine"
    max_rounds: int = Field(1, ge=0, le=5)
    structured_output: bool = True
    findings: int = Field(3, ge=1, le=20)
    """How many of the verifier's best candidates (with its reasons) the refiner is shown."""


class SessionConfig(_Strict):
    """Multi-turn sessions (``agent_cir.session``): the dialogue rewrite and the clarifying question."""

    model: str | None = None
    """The model under ``models:`` that rewrites the dialogue and asks questions; None: the rewrite stage's."""
    rewrite_prompt: str = "dialogue_rewrite"
    question_prompt: str = "dialogue_question"
    clarify: bool = False
    """Ask one question after a turn whose result is uncertain (PlugIR-style); the user's answer is a turn."""
    confidence: float = Field(0.5, ge=0.0, le=1.0)
    """Uncertain when the verifier ran and its confidence in the first result is below this."""
    margin: float = Field(0.02, ge=0.0)
    """Uncertain, without a verifier, when the first result's retrieval score leads the second's by less."""
    rejected_per_turn: int = Field(1, ge=0, le=10)
    """Results of a turn the user moved on from without picking, told to the next rewrite as not wanted."""
    question_candidates: int = Field(3, ge=0, le=10)
    """Top results whose captions the question prompt sees (to ask what tells them apart)."""


class CacheConfig(_Strict):
    enabled: bool = True
    path: str | None = None
    """SQLite file; None means ~/.cache/agent_cir/cache.sqlite (or $AGENT_CIR_CACHE)."""


SECRET_KEYS = frozenset({"api_key"})
"""Kept for callers that import it; what is redacted is decided by ``agent_cir.redact.is_secret_key`` (any key
whose name says key / token / secret / password / authorization / credential) and by value shape."""


class PublishedResult(_Strict):
    """One number a paper reports for the setting a recipe follows (shown beside ours by ``compare --published``)."""

    dataset: Literal["circo", "cirr", "fashioniq", "genecis"]
    split: Literal["val", "test"]
    metric: str
    """Our metric key: ``mAP@5``, ``recall@1``, ``recall_subset@1``; FashionIQ/GeneCIS use ``<category>/recall@10``
    (``mean/recall@10`` for the mean over the three FashionIQ categories, ``average/recall@1`` for GeneCIS)."""
    value: float
    backbone: str
    """The retrieval model of that table row (e.g. ``ViT-L/14``); compared with the run's encoder."""
    pretrained: str | None = None
    """The weights of that row as an open_clip pretrained tag (``laion2b_s32b_b82k``, ``openai``) when the
    source or the official code names them; compared with the run's encoder by ``compare --published``."""
    source: str
    """Where the number is printed: paper, table, row."""
    llm: str | None = None
    """The paper's LLM / MLLM for that row, when the row names one."""
    notes: str = ""


class CircoOptions(_Strict):
    """CIRCO protocol options a recipe chooses (recorded with the recipe in run.json and the run identity)."""

    query_text: str = "{relative_caption}"
    """The query text built from each annotation: a template with ``{relative_caption}`` and optionally
    ``{shared_concept}``. Default: the relative caption alone, as CIReVL and ImageScope query. Methods such
    as MagicLens put the shared concept in, e.g. ``"find {shared_concept} but {relative_caption}"``."""

    @model_validator(mode="after")
    def _known_placeholders(self) -> "CircoOptions":
        import string

        try:
            names = {field for _, field, _, _ in string.Formatter().parse(self.query_text) if field is not None}
        except ValueError as err:
            raise ValueError(f"circo.query_text {self.query_text!r} is not a valid template: {err}") from err
        unknown = names - {"relative_caption", "shared_concept"}
        if unknown or "relative_caption" not in names:
            raise ValueError(
                f"circo.query_text {self.query_text!r} must contain {{relative_caption}} and may contain "
                f"{{shared_concept}}; unknown placeholders: {sorted(unknown) or 'none'}"
            )
        return self


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
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    refine: RefineConfig = Field(default_factory=RefineConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    """Multi-turn sessions (``Pipeline.session``, ``agent-cir chat``)."""
    max_concurrency: int = Field(4, ge=1)
    circo: CircoOptions = Field(default_factory=CircoOptions)
    """CIRCO protocol options (``agent-cir eval`` on CIRCO): the query text convention."""
    published: list[PublishedResult] = Field(default_factory=list)
    """The paper's own numbers for this recipe's setting (``agent-cir compare RUN --published``)."""
    by_dataset: dict[Literal["circo", "cirr", "fashioniq", "genecis"], dict[str, Any]] = Field(default_factory=dict)
    """Per-benchmark overrides (a partial recipe each, e.g. ``{fashioniq: {retrieve: {alpha: 0.9}}}``), deep-merged
    by ``agent-cir eval`` when that benchmark runs (see :meth:`for_dataset`); the merged values go to run.json."""
    chunk_size: int = Field(256, ge=1)
    """Queries per chunk in ``Pipeline.run_batch``: each stage runs over a whole chunk before the next starts
    (one encoder batch, one search, concurrent model calls). Bounds memory; changes no result (runtime only)."""

    def enabled_stages(self) -> list[str]:
        """The stages this recipe runs, in order: the one stage list every reader uses."""
        order = ["one_stage"] if self.one_stage.enabled else [
            name for name in ("caption", "rewrite") if getattr(self, name).enabled]
        order.append("retrieve")
        order += [name for name in ("verify", "refine", "rerank") if getattr(self, name).enabled]
        return order

    def model_stages(self) -> list[str]:
        """The enabled stages that call a chat model (each names one under ``models:``)."""
        return [name for name in self.enabled_stages() if name in MODEL_STAGES]

    @model_validator(mode="after")
    def _loop_is_whole(self) -> Recipe:
        if self.refine.enabled and not self.verify.enabled:
            raise ValueError("refine needs verify (it rewrites the queries the verifier did not accept): "
                             "enable verify, or disable refine")
        return self

    @model_validator(mode="after")
    def _models_exist(self) -> Recipe:
        for stage_name in MODEL_STAGES:
            stage = getattr(self, stage_name)
            if stage.enabled and stage.model not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise ValueError(
                    f"{stage_name}.model names {stage.model!r}, which is not under 'models:' (defined: {known})"
                )
        if self.one_stage.enabled and (self.caption.enabled or self.rewrite.enabled):
            raise ValueError("one_stage replaces caption and rewrite: disable them (enabled: false) or one_stage")
        return self

    @model_validator(mode="after")
    def _dataset_overrides_validate(self) -> Recipe:
        # Check each per-dataset override now, so a typo in by_dataset fails at load and not mid-benchmark.
        for dataset, update in self.by_dataset.items():
            if not isinstance(update, dict):
                raise ValueError(f"by_dataset.{dataset} must be a mapping of recipe keys")
            if "by_dataset" in update or "published" in update:
                raise ValueError(f"by_dataset.{dataset} cannot set by_dataset or published")
            try:
                Recipe.model_validate(deep_merge(self._base_dump(), update))
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(part) for part in item['loc']) or '(top level)'}: {item['msg']}" for item in err.errors()
                )
                raise ValueError(f"by_dataset.{dataset}: {problems}") from err
        return self

    def _base_dump(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["by_dataset"] = {}
        return data

    def for_dataset(self, dataset: str) -> Recipe:
        """This recipe with ``by_dataset[dataset]`` deep-merged in (itself when there is none for that dataset)."""
        update = self.by_dataset.get(dataset)  # type: ignore[call-overload]
        if not update:
            return self
        return recipe_from_dict(deep_merge(self._base_dump(), update), source=f"recipe {self.name} (by_dataset.{dataset})")

    @property
    def hash(self) -> str:
        """Hash of the whole recipe with secrets redacted (a key never reaches a trace, even hashed)."""
        return stable_hash(redacted_recipe_dump(self))


def redact_secrets(data: Any) -> Any:
    """A copy of ``data`` (nested dicts/lists) with every secret replaced by ``<redacted>``: by key name (any key
    naming a key, token, secret, password, authorization or credential) and by shape (URL passwords, secret
    query parameters, Bearer credentials). The one redactor: :func:`agent_cir.redact.redact_secrets`."""
    return _redact_secrets(data)


def redacted_recipe_dump(recipe: Recipe) -> dict[str, Any]:
    """``recipe.model_dump(mode="json")`` with secrets (``api_key``) redacted: the only form of a recipe that may be
    written anywhere (run.json, traces, reports, logs, ``agent-cir recipes --json``)."""
    return redact_secrets(recipe.model_dump(mode="json"))


def recipe_needs(recipe: Recipe) -> dict[str, Any]:
    """What running ``recipe`` takes besides the package: model servers, API keys, weights, data files."""
    servers, keys, weights, data = [], [], [], []
    encoder = recipe.encoder
    weight = f"{encoder.backend} {encoder.model}" + (f" ({encoder.pretrained})" if encoder.pretrained else "")
    weights.append(weight)
    for stage_name in recipe.model_stages():
        stage = getattr(recipe, stage_name)
        model = recipe.models[stage.model]
        provider, _, name = model.spec.partition(":")
        if provider == "openai":
            if model.base_url:
                servers.append(f"OpenAI-compatible server at {model.base_url} serving {name}")
            else:
                keys.append(model.api_key_env or "OPENAI_API_KEY")
        elif provider == "ollama":
            servers.append(f"ollama ({model.base_url or 'localhost:11434'}) with {name} pulled")
        elif provider in ("hf", "hf-vlm"):
            weights.append(f"transformers {name}")
    captions = recipe.retrieve.gallery_captions
    if captions is not None:
        data.append(f"gallery captions JSON ({captions.path or '--gallery-captions'})")
    unique = lambda items: list(dict.fromkeys(items))  # noqa: E731
    return {"servers": unique(servers), "keys": unique(keys), "weights": unique(weights), "data": unique(data)}


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


MAX_RECIPE_BYTES = 1_000_000
MAX_YAML_NODES = 100_000
"""Nodes a recipe may have once its aliases are expanded: a real recipe has a few hundred; an alias tree
(a "billion laughs") that expands to billions would stall every later dump and hash of the recipe."""


def _expanded_nodes(root: yaml.Node, source: str) -> int:
    """How many nodes ``root`` stands for with every alias expanded (shared nodes counted once per use)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    # Iterative post-order walk: a deep document must not exhaust Python's recursion limit here.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        if ident in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if not children_done:
            if ident in visiting:
                raise ConfigError(f"recipe {source}: an alias refers to a node that contains it (a recursive alias)")
            visiting.add(ident)
            stack.append((node, True))
            for child in children:
                if id(child) in visiting:
                    raise ConfigError(
                        f"recipe {source}: an alias refers to a node that contains it (a recursive alias)"
                    )
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        visiting.discard(ident)
        total = 1 + sum(sizes[id(child)] for child in children)
        if total > MAX_YAML_NODES:
            mark = node.start_mark
            raise ConfigError(
                f"recipe {source} line {mark.line + 1}: with its aliases (*name) expanded this part has more than "
                f"{MAX_YAML_NODES:,} values; a recipe needs a few hundred. Write the values out, or share fewer"
            )
        sizes[ident] = total
    return sizes[id(root)]


def load_yaml_bounded(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing alias trees that expand past :data:`MAX_YAML_NODES` before building
    any Python object from them."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_nodes(root, source)
        return loader.construct_document(root)
    finally:
        loader.dispose()


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
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise ConfigError(
                f"recipe {path} is {size:,} bytes, more than the {MAX_RECIPE_BYTES:,} a recipe may have; "
                "is it the right file?"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"recipe {path} cannot be read ({err}); check the file") from None
    try:
        data = load_yaml_bounded(text, str(path)) or {}
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
