"""The stage sections of a recipe, one class per section; each names the module that consumes it.

Ownership while the project is young: each ``*Config`` class belongs to the module that consumes it
(named in its docstring); add fields there, with defaults, and keep ``extra="forbid"`` (``_Strict``) so that
typos in a recipe are caught.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from agent_cir.config.base import _Strict
from agent_cir.config.names import AggregationMethod, JudgeMethod

MODEL_STAGES = ("caption", "rewrite", "one_stage", "verify", "refine", "predicates", "rerank")
"""Stages that call a chat model (recipe section name = stage name; each section names its model)."""


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
      dual      two paths, text (q = txt) and image (q = img(edited image) from the imagine stage), fused by
                ``dual_fusion`` with ``dual_weight`` w = the image path's weight (``agent_cir.retrieval.dual``)
    """

    mode: Literal["text", "image", "fusion", "pdv", "weimocir", "sqaf", "dual"] = "text"
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
    dual_weight: float = Field(0.5, ge=0.0, le=1.0)
    """mode dual: w, the image path's weight (1 - w weights the text path). Paracosm's lambda: 0.3."""
    dual_fusion: Literal["mix", "rrf", "wiser"] = "mix"
    """mode dual. mix: score = (1 - w) cos(q_txt, g) + w cos(q_img, g) over the whole gallery (one exact search
    with the mixed query); rrf: (1 - w) / (rrf_k + rank_txt) + w / (rrf_k + rank_img) over both top-k lists;
    wiser: the pool of both top-k lists (in rrf order) goes to the verifier, whose confidences make the final
    order as WISER sums them (c_txt + c_img, docs/PROTOCOLS.md); needs verify."""
    dual_rrf_k: int = Field(60, ge=0)
    """mode dual, dual_fusion rrf: the reciprocal-rank constant."""
    dual_image_text: bool = False
    """mode dual: the image path's query is normalise(img(edited) + txt(description of the edited image)), as
    Paracosm's mental image + its description (needs ``imagine.describe_model``); both on unit vectors (Paracosm sums raw
    projections; no encoder here gives them: a declared difference)."""
    gallery_twins: bool = False
    """Score every gallery item by its real + synthetic twin feature, normalise(normalise(real) + normalise(twin))
    (Paracosm); the index needs its twins (``agent_cir.index.twins.build_twins``)."""


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
    method: JudgeMethod = "grid"
    """A judge of ``agent_cir.rerank.judges.JUDGES`` (names: ``config/names.py`` JUDGE_METHODS): grid, pointwise
    (P(yes) from logits where the backend gives them, else the parsed answer), logits (logits required), pairwise
    (ImageScope's evaluator, ``pairwise_prompt``) or cotrr (CoTRR's listwise call, ``cotrr_prompt``)."""
    pairwise_prompt: str = "imagescope_evaluate"
    cotrr_prompt: str = "cotrr_listwise"
    grid: GridConfig = Field(default_factory=GridConfig)
    passes: int = Field(1, ge=1)
    """Position-bias control: pass 1 shows retrieval order, further passes seeded shuffles of the cells."""
    aggregation: AggregationMethod = "borda"
    """How passes are combined: a key of ``agent_cir.rerank.aggregate.AGGREGATIONS`` (borda, rrf)."""
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
    the reference changed as asked". Confidence = P(yes): next-token logits of a local ``hf:`` / ``hf-vlm:`` model
    (the k candidates in one batched forward), the ``top_logprobs`` of an OpenAI-compatible server, else the parsed
    answer (1 / 0). With ``refine`` enabled, a query whose best confidence is below ``threshold`` goes round again."""

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


class PredicatesConfig(_Strict):
    """Consumed by ``agent_cir.stages.predicates``: ImageScope's stage 2. A text model (``reasoner``) splits the
    modification into yes/no propositions with expected answers; an MLLM (``model``) answers each for each of the
    top ``k`` candidates (image alone); the top k are stably sorted by the number of answers that match."""

    enabled: bool = False
    model: str = "verifier"
    reasoner: str = "llm"
    k: int = Field(20, ge=1, le=200)
    prompt: str = "imagescope_propositions"
    question_prompt: str = "imagescope_predicate"
    scoring: Literal["answer", "auto"] = "answer"
    """answer: the generated answer, yes when it contains "yes" (ImageScope); auto: P(yes) >= 0.5 where the
    backend gives token probabilities (a local model: one batched forward), else the answer."""


class MultigrainConfig(_Strict):
    """Consumed by ``agent_cir.stages.multigrain``: CoTMR's multi-grained scoring. The description stage's answer
    also lists objects that must be present / absent; the ranking is scored again with
    S = mean cos(caption, v) + w_present * agg cos(present, v) - w_absent * agg cos(absent, v)."""

    enabled: bool = False
    present_weight: float = Field(1.0, ge=0.0)
    absent_weight: float = Field(1.0, ge=0.0)
    aggregate: Literal["mean", "sum", "max"] = "mean"
    object_template: str = "{}"
    """How an object phrase is put to the text encoder (e.g. "a photo of {}")."""
    max_objects: int = Field(8, ge=0, le=32)


class ImagineConfig(_Strict):
    """Consumed by ``agent_cir.stages.imagine``: the reference image edited into a picture of the target through
    an image-edit backend (``agent_cir.backends.image_edit``), for ``retrieve.mode: dual``."""

    enabled: bool = False
    model: str = "diffusers:timbrooks/instruct-pix2pix"
    """Backend spec: ``diffusers:ID_OR_PATH`` (any diffusers image-to-image or instruction-editing pipeline, in
    process), ``openai-images:MODEL`` (an OpenAI-compatible images endpoint: images.edit), or a registered one."""
    prompt: str = "imagine"
    """Template of the edit instruction (variables: modification, description, caption)."""
    source: Literal["modification", "description"] = "modification"
    """What the instruction carries: the modification text, or the rewritten target description (falls back to
    the modification when no description exists)."""
    steps: int = Field(30, ge=1, le=1000)
    guidance: float = Field(7.5, ge=0.0)
    """Text guidance scale (diffusers guidance_scale; true_cfg_scale for pipelines that take it)."""
    image_guidance: float | None = Field(1.5, ge=0.0)
    """Image guidance (InstructPix2Pix's image_guidance_scale), passed only to pipelines that take it."""
    strength: float | None = Field(None, gt=0.0, le=1.0)
    """Image-to-image strength (img2img pipelines); None: the pipeline's default."""
    negative_prompt: str | None = None
    seed: int = 0
    size: int | None = Field(512, ge=16, le=4096)
    """Side of the square output (height = width); None: the pipeline's default."""
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    device: str | None = None
    """diffusers: where the pipeline runs (cpu, cuda, cuda:1); None: cuda when available, else cpu."""
    device_map: str | None = None
    """diffusers: a pipeline-level device_map (e.g. balanced) instead of one device."""
    cpu_offload: Literal["model", "sequential"] | None = None
    """diffusers: enable_model_cpu_offload / enable_sequential_cpu_offload (large models on small GPUs)."""
    base_url: str | None = None
    """openai-images: the server (an OpenAI-compatible /v1)."""
    api_key_env: str | None = None
    """openai-images: the environment variable holding the key (default OPENAI_API_KEY; none needed locally)."""
    timeout: float = Field(300.0, gt=0.0)
    describe_model: str | None = None
    """A chat VLM under ``models:`` that describes the edited image in one sentence (Paracosm's mental-image
    description, prompt ``imagine_describe``); None: no description."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Passed through to the backend: diffusers call keyword arguments, or images.edit fields."""


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

