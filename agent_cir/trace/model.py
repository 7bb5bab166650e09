"""The trace as pydantic models: one ``Trace`` per query, one typed record class per stage kind, each holding its
stage's typed output (``agent_cir.trace.outputs``).

``agent_cir.trace.build`` assembles the ``Trace`` of a finished query (schema ``3.0``) and the writer dumps it;
readers of files go through ``agent_cir.trace.load`` (``load_trace``, ``salvage_trace``), which loads 3.x, 2.x and
1.x records (every field but ``query_id`` has a default; 3.0 adds fields and changes none: per-record ``round``,
``ordered_by``, ``rounds``, per-candidate ``judge_score`` / ``verify_score`` / ``final_score``, the verify and
refine records, and the retrieve record's ``candidates_total`` beside its head). The JSON layout is the 1.0
layout, so old readers of plain dicts keep working.

Every model keeps keys it does not know (``extra="allow"``): a trace written by a newer agent_cir, or a
stage that adds an output field, still loads, and dumping it back loses nothing. ``stages`` is a union
discriminated on ``stage``; a stage name outside the seven kinds (a user's own stage) loads as
:class:`OtherStageRecord` with an untyped ``output``.

Typed down to the fields consumers read. Left as plain dicts/lists on purpose: the query's ``meta``
(caller-owned), a model call's ``usage`` and ``params`` (backend-specific), and the rerank stage's
per-judge ``parsed`` / ``windows`` entries (their keys differ between grid, pointwise and logit judges).

The small properties (``Trace.ground_truth``, ``Trace.retrieval``, ``RoundRecord.head_confidences`` ...) are the
derived values the report and the demo show, computed from the record rather than copied into other types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, TypeAlias, Union, overload

from pydantic import BaseModel, Discriminator, Field, Tag

from agent_cir.trace.outputs import (
    CaptionOutput,
    DescriptionSource,
    Id,
    ImagineOutput,
    MultigrainOutput,
    OneStageOutput,
    OpenModel,
    PredicatesOutput,
    RankedItem,
    RefineOutput,
    RerankOutput,
    RetrieveOutput,
    RewriteOutput,
    VerifyOutput,
    ranked_rows,
)

TRACE_SCHEMA_VERSION = "3.0"
ParseStatus = Literal["ok", "repaired", "fallback", "not_applicable"]


def as_id_list(value: Any) -> list[str]:
    """Ids as a list of text: one id, a list of them, or nothing (None, or a value that is not a list)."""
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [str(value)]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [str(item) for item in value]
    return []


# ------------------------------------------------------------------------------------------- parts


class ModelCallRecord(OpenModel):
    """One chat-model call (``agent_cir.types.ModelCall`` as written)."""

    backend: str = ""
    model: str = ""
    prompt_name: str = ""
    prompt_hash: str = ""
    raw: str = ""
    cache: Literal["hit", "miss", "off"] = "off"
    seconds: float = 0.0
    usage: dict[str, Any] | None = None
    parse_status: ParseStatus | None = None
    prompt: str | None = None
    images: list[str] = Field(default_factory=list)
    """Content hashes of the images sent with the call."""
    params: dict[str, Any] = Field(default_factory=dict)


class QueryRecord(OpenModel):
    id: Id | None = None
    text: str = ""
    image_path: str | None = None
    image_hash: str | None = None
    reference_id: Id | None = None
    reference_caption: str | None = None
    target_text: str | None = None
    candidate_ids: list[Id] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class RecipeRef(OpenModel):
    name: str | None = None
    hash: str | None = None


class EncoderRecord(OpenModel):
    """The encoder that embedded the query (``agent_cir.provenance.encoder_provenance``)."""

    backend: str | None = None
    model: str | None = None
    architecture: str | None = None
    pretrained: Any = None
    """As the encoder reports it (a tag, a path, or None); so are ``weights`` and ``preprocess``."""
    weights: Any = None
    preprocess: Any = None
    dim: int | None = None
    random_weights: bool | None = None
    """True when the weights are a random init: the rankings then mean nothing."""


class Totals(OpenModel):
    seconds: float = 0.0
    model_calls: int = 0
    cache_hits: int = 0


class EvalRecord(OpenModel):
    """What `agent-cir eval` adds to each trace: the scored ranking and the official target rank."""

    dataset: str | None = None
    split: str | None = None
    category: str | None = None
    ranking: list[Id] = Field(default_factory=list)
    kept_top: int | None = None
    ranked: int | None = None
    target_rank: int | None = None
    identity: str | None = None
    """The run identity hash the query ran under (resume refuses a mismatch)."""


class RoundRecord(OpenModel):
    """One finished round of the retrieve -> verify (-> refine) loop."""

    round: int
    description: list[str] = Field(default_factory=list)
    head: list[Id] = Field(default_factory=list)
    """The retrieval head the verifier judged."""
    confidences: list[float | None] = Field(default_factory=list)
    best_confidence: float | None = None
    decision: str | None = None
    calls: int = 0
    seconds: float = 0.0

    @property
    def head_confidences(self) -> list[tuple[str, float | None]]:
        """(gallery id, the verifier's confidence) for the head it judged."""
        return list(zip(self.head, self.confidences))


# ------------------------------------------------------------------------------------ stage records


class StageRecordBase(OpenModel):
    """Fields every stage record has (``agent_cir.types.StageRecord`` as written)."""

    stage: str
    output: Any = None
    """Each kind's typed output (declared here so that it keeps its place in the JSON layout: after ``stage``)."""
    calls: list[ModelCallRecord] = Field(default_factory=list)
    parse_status: ParseStatus = "not_applicable"
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    """Why the stage did not run; None when it ran."""
    round: int = 0
    """The loop round (3.0; 0 = the first pass, and every record of older traces)."""
    model_calls: int = 0
    cache_hits: int = 0

    def output_data(self) -> dict[str, Any]:
        """The output as plain data: the keys that were written (extras included)."""
        output = getattr(self, "output", None)
        if isinstance(output, BaseModel):
            return output.model_dump(exclude_unset=True)
        return dict(output) if isinstance(output, Mapping) else {}


class CaptionRecord(StageRecordBase):
    stage: Literal["caption"] = "caption"
    output: CaptionOutput = Field(default_factory=CaptionOutput)


class RewriteRecord(StageRecordBase):
    stage: Literal["rewrite"] = "rewrite"
    output: RewriteOutput = Field(default_factory=RewriteOutput)


class OneStageRecord(StageRecordBase):
    stage: Literal["one_stage"] = "one_stage"
    output: OneStageOutput = Field(default_factory=OneStageOutput)


class RetrieveRecord(StageRecordBase):
    stage: Literal["retrieve"] = "retrieve"
    output: RetrieveOutput = Field(default_factory=RetrieveOutput)


class ImagineRecord(StageRecordBase):
    stage: Literal["imagine"] = "imagine"
    output: ImagineOutput = Field(default_factory=ImagineOutput)


class RerankRecord(StageRecordBase):
    stage: Literal["rerank"] = "rerank"
    output: RerankOutput = Field(default_factory=RerankOutput)


class VerifyRecord(StageRecordBase):
    stage: Literal["verify"] = "verify"
    output: VerifyOutput = Field(default_factory=VerifyOutput)


class RefineRecord(StageRecordBase):
    stage: Literal["refine"] = "refine"
    output: RefineOutput = Field(default_factory=RefineOutput)


class PredicatesRecord(StageRecordBase):
    stage: Literal["predicates"] = "predicates"
    output: PredicatesOutput = Field(default_factory=PredicatesOutput)


class MultigrainRecord(StageRecordBase):
    stage: Literal["multigrain"] = "multigrain"
    output: MultigrainOutput = Field(default_factory=MultigrainOutput)


class OtherStageRecord(StageRecordBase):
    """A stage outside the five kinds (a user's own stage): its output stays a plain dict."""

    output: dict[str, Any] = Field(default_factory=dict)


RECORD_CLASSES: dict[str, type[StageRecordBase]] = {
    "caption": CaptionRecord,
    "rewrite": RewriteRecord,
    "one_stage": OneStageRecord,
    "retrieve": RetrieveRecord,
    "imagine": ImagineRecord,
    "rerank": RerankRecord,
    "verify": VerifyRecord,
    "refine": RefineRecord,
    "predicates": PredicatesRecord,
    "multigrain": MultigrainRecord,
}


def _stage_kind(value: Any) -> str:
    name = value.get("stage") if isinstance(value, Mapping) else getattr(value, "stage", None)
    return name if name in RECORD_CLASSES else "other"


AnyStageRecord: TypeAlias = Annotated[
    Union[
        Annotated[CaptionRecord, Tag("caption")],
        Annotated[RewriteRecord, Tag("rewrite")],
        Annotated[OneStageRecord, Tag("one_stage")],
        Annotated[RetrieveRecord, Tag("retrieve")],
        Annotated[ImagineRecord, Tag("imagine")],
        Annotated[RerankRecord, Tag("rerank")],
        Annotated[VerifyRecord, Tag("verify")],
        Annotated[RefineRecord, Tag("refine")],
        Annotated[PredicatesRecord, Tag("predicates")],
        Annotated[MultigrainRecord, Tag("multigrain")],
        Annotated[OtherStageRecord, Tag("other")],
    ],
    Discriminator(_stage_kind),
]


# ------------------------------------------------------------------------------------------ the trace


class Trace(OpenModel):
    """One query's trace record. Field order is the JSON layout ``build_trace`` writes."""

    schema_version: str = "1.0"
    """Missing only in hand-made records; those are read as 1.0."""
    query_id: Id
    query: QueryRecord = Field(default_factory=QueryRecord)
    recipe: RecipeRef = Field(default_factory=RecipeRef)
    encoder: EncoderRecord | None = None
    captions: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    target_descriptions: list[str] = Field(default_factory=list)
    description_source: DescriptionSource | None = None
    stages: list[AnyStageRecord] = Field(default_factory=list)
    results: list[RankedItem] = Field(default_factory=list)
    results_total: int | None = None
    """3.0: how many entries the final ranking has (``results`` holds its head)."""
    ordered_by: str | None = None
    """3.0: the score the final order follows: retrieval | judge | fused | verifier."""
    rounds: list[RoundRecord] = Field(default_factory=list)
    """3.0: one record per round of the verify -> refine loop (empty without a loop)."""
    totals: Totals = Field(default_factory=Totals)
    artifacts_dir: str | None = None
    created: str | None = None
    eval: EvalRecord | None = None

    @overload
    def stage(self, name: Literal["caption"]) -> CaptionRecord | None: ...
    @overload
    def stage(self, name: Literal["rewrite"]) -> RewriteRecord | None: ...
    @overload
    def stage(self, name: Literal["one_stage"]) -> OneStageRecord | None: ...
    @overload
    def stage(self, name: Literal["retrieve"]) -> RetrieveRecord | None: ...
    @overload
    def stage(self, name: Literal["imagine"]) -> ImagineRecord | None: ...
    @overload
    def stage(self, name: Literal["rerank"]) -> RerankRecord | None: ...
    @overload
    def stage(self, name: Literal["verify"]) -> VerifyRecord | None: ...
    @overload
    def stage(self, name: Literal["refine"]) -> RefineRecord | None: ...
    @overload
    def stage(self, name: str) -> StageRecordBase | None: ...

    def stage(self, name: str) -> StageRecordBase | None:
        """The record of stage ``name`` (typed by its kind) of the last round it ran in, or None when that
        stage did not run. ``stages_named`` gives every round's."""
        return next((record for record in reversed(self.stages) if record.stage == name), None)

    def stages_named(self, name: str) -> list[StageRecordBase]:
        """Every record of stage ``name``, one per round, in the order they ran."""
        return [record for record in self.stages if record.stage == name]

    def extra(self, key: str, default: Any = None) -> Any:
        """A top-level key outside the schema (e.g. ``error`` in a failed query's record)."""
        return (self.model_extra or {}).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict: the keys that were present (or set), extras included, in the JSON layout."""
        return self.model_dump(exclude_unset=True)

    def to_json_dict(self) -> dict[str, Any]:
        """``to_dict`` with JSON types only (what the writer writes)."""
        return self.model_dump(mode="json", exclude_unset=True)

    # ---- derived values the report and the demo show

    @property
    def ground_truth(self) -> list[str]:
        """The query's ground-truth ids (``meta.ground_truth``), as text."""
        return as_id_list(self.query.meta.get("ground_truth"))

    @property
    def subset(self) -> list[str]:
        """The benchmark subset members (``meta.subset``), as text."""
        return as_id_list(self.query.meta.get("subset"))

    @property
    def other_meta(self) -> dict[str, Any]:
        """The query's meta without ``ground_truth`` and ``subset`` (those have properties of their own)."""
        return {key: value for key, value in self.query.meta.items() if key not in ("ground_truth", "subset")}

    @property
    def retrieval(self) -> RetrieveRecord | None:
        """The (last round's) retrieve record, when retrieval ran."""
        record = self.stage("retrieve")
        return record if record is not None and not record.skipped else None

    @property
    def rerank(self) -> RerankRecord | None:
        return self.stage("rerank")

    @property
    def reranked(self) -> bool:
        rerank = self.rerank
        return rerank is not None and not rerank.skipped

    @property
    def error(self) -> Any:
        """A failed query's error (``error`` outside the schema), or None."""
        return self.extra("error")

    @property
    def final_order_by(self) -> str:
        """The score the final order follows (3.0 traces say; older ones: judge after a rerank, else retrieval)."""
        return self.ordered_by or ("judge" if self.reranked else "retrieval")

    @property
    def has_results(self) -> bool:
        """Whether the record holds final results (a running query's partial trace does not)."""
        return "results" in self.model_fields_set

    @property
    def result_rows(self) -> list[RankedItem]:
        """``results`` with a rank on every row (a row without one takes its position)."""
        return ranked_rows(self.results)

    def refine_before(self, round_number: int) -> RefineOutput | None:
        """The refine output that started round ``round_number`` (its findings, the description it changed)."""
        return next((record.output for record in self.stages_named("refine") if record.round == round_number
                     and isinstance(record, RefineRecord)), None)


__all__ = [
    "AnyStageRecord", "CaptionRecord", "EncoderRecord", "EvalRecord", "ModelCallRecord", "OneStageRecord",
    "OtherStageRecord", "ParseStatus", "QueryRecord", "RECORD_CLASSES", "RecipeRef", "RefineRecord", "RerankRecord",
    "RetrieveRecord", "RewriteRecord", "RoundRecord", "StageRecordBase", "TRACE_SCHEMA_VERSION", "Totals", "Trace",
    "VerifyRecord", "as_id_list",
]
