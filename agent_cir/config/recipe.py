"""The whole recipe (``Recipe``): its sections, per-benchmark overrides, published numbers, redaction and what
running it needs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from agent_cir.config.base import ConfigError, _Strict
from agent_cir.config.models import EncoderConfig, ModelConfig
from agent_cir.config.names import BenchmarkName
from agent_cir.config.stages import (
    MODEL_STAGES,
    CacheConfig,
    CaptionConfig,
    ImagineConfig,
    MultigrainConfig,
    OneStageConfig,
    PredicatesConfig,
    RefineConfig,
    RerankConfig,
    RetrieveConfig,
    RewriteConfig,
    SessionConfig,
    VerifyConfig,
)
from agent_cir.hashing import stable_hash
from agent_cir.redact import redact_secrets as _redact_secrets

SECRET_KEYS = frozenset({"api_key"})
"""Kept for callers that import it; what is redacted is decided by ``agent_cir.redact.is_secret_key`` (any key
whose name says key / token / secret / password / authorization / credential) and by value shape."""


class PublishedResult(_Strict):
    """One number a paper reports for the setting a recipe follows (shown beside ours by ``compare --published``)."""

    dataset: BenchmarkName
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
    predicates: PredicatesConfig = Field(default_factory=PredicatesConfig)
    multigrain: MultigrainConfig = Field(default_factory=MultigrainConfig)
    imagine: ImagineConfig = Field(default_factory=ImagineConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    """Multi-turn sessions (``Pipeline.session``, ``agent-cir chat``)."""
    max_concurrency: int = Field(4, ge=1)
    circo: CircoOptions = Field(default_factory=CircoOptions)
    """CIRCO protocol options (``agent-cir eval`` on CIRCO): the query text convention."""
    published: list[PublishedResult] = Field(default_factory=list)
    """The paper's own numbers for this recipe's setting (``agent-cir compare RUN --published``)."""
    by_dataset: dict[BenchmarkName, dict[str, Any]] = Field(default_factory=dict)
    """Per-benchmark overrides (a partial recipe each, e.g. ``{fashioniq: {retrieve: {alpha: 0.9}}}``), deep-merged
    by ``agent-cir eval`` when that benchmark runs (see :meth:`for_dataset`); the merged values go to run.json."""
    chunk_size: int = Field(256, ge=1)
    """Queries per chunk in ``Pipeline.run_batch``: each stage runs over a whole chunk before the next starts
    (one encoder batch, one search, concurrent model calls). Bounds memory; changes no result (runtime only)."""

    def enabled_stages(self) -> list[str]:
        """The stages this recipe runs, in order: the one stage list every reader uses."""
        order = ["one_stage"] if self.one_stage.enabled else [
            name for name in ("caption", "rewrite") if getattr(self, name).enabled]
        if self.imagine.enabled:
            order.append("imagine")
        order.append("retrieve")
        order += [name for name in ("multigrain", "verify", "refine", "predicates", "rerank")
                  if getattr(self, name).enabled]
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
    def _imagine_is_whole(self) -> Recipe:
        retrieve = self.retrieve
        if retrieve.mode == "dual" and not self.imagine.enabled:
            raise ValueError("retrieve.mode 'dual' retrieves with the edited image: enable the imagine stage "
                             "(imagine: {enabled: true, model: ...}) or choose another mode")
        if retrieve.mode == "dual" and retrieve.dual_fusion == "wiser" and not self.verify.enabled:
            raise ValueError("retrieve.dual_fusion 'wiser' orders by the verifier's confidences: enable verify, "
                             "or use dual_fusion mix or rrf")
        if retrieve.dual_image_text and not self.imagine.describe_model:
            raise ValueError("retrieve.dual_image_text needs imagine.describe_model (the VLM that describes the "
                             "edited image)")
        describe = self.imagine.describe_model
        if self.imagine.enabled and describe and describe not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ValueError(f"imagine.describe_model names {describe!r}, which is not under 'models:' (defined: {known})")
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
        if self.predicates.enabled and self.predicates.reasoner not in self.models:
            raise ValueError(f"predicates.reasoner names {self.predicates.reasoner!r}, which is not under 'models:'")
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
    imagine = recipe.imagine
    if imagine.enabled:
        provider, _, name = imagine.model.partition(":")
        if provider == "openai-images":
            if imagine.base_url:
                servers.append(f"OpenAI-compatible images server at {imagine.base_url} serving {name}")
            else:
                keys.append(imagine.api_key_env or "OPENAI_API_KEY")
        else:
            weights.append(f"image-edit {imagine.model} (pip install 'agent-cir[edit]')")
        if imagine.describe_model and imagine.describe_model in recipe.models:
            weights.append(f"describer {recipe.models[imagine.describe_model].spec}")
    if recipe.retrieve.gallery_twins:
        data.append("the index's synthetic twins (agent_cir.index.twins.build_twins)")
    captions = recipe.retrieve.gallery_captions
    if captions is not None:
        data.append(f"gallery captions JSON ({captions.path or '--gallery-captions'})")
    unique = lambda items: list(dict.fromkeys(items))  # noqa: E731
    return {"servers": unique(servers), "keys": unique(keys), "weights": unique(weights), "data": unique(data)}



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



def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
