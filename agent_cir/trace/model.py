"""The trace as pydantic models: one ``Trace`` per query, one typed record class per stage kind.

``agent_cir.trace.build_trace`` writes a record through :class:`Trace` (schema ``3.0``); readers call
:func:`load_trace`, which loads 3.x, 2.x and 1.x records (every field but ``query_id`` has a default; 3.0 adds
fields and changes none: per-record ``round``, ``ordered_by``, ``rounds``, per-candidate ``judge_score`` /
``verify_score`` / ``final_score``, the verify and refine records, and the retrieve record's
``candidates_total`` beside its head). The JSON layout is the 1.0 layout, so old readers of plain dicts keep
working.

Every model keeps keys it does not know (``extra="allow"``): a trace written by a newer agent_cir, or a
stage that adds an output field, still loads, and dumping it back loses nothing. ``stages`` is a union
discriminated on ``stage``; a stage name outside the five kinds (a user's own stage) loads as
:class:`OtherStageRecord` with an untyped ``output``.

Typed down to the fields consumers read. Left as plain dicts/lists on purpose: the query's ``meta``
(caller-owned), a model call's ``usage`` and ``params`` (backend-specific), and the rerank stage's
per-judge ``parsed`` / ``windows`` entries (their keys differ between grid, pointwise and logit judges).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias, Union, overload

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from agent_cir.errors import AgentCirError

TRACE_SCHEMA_VERSION = "3.0"
ParseStatus = Literal["ok", "repaired", "fallback", "not_applicable"]
DescriptionSource = Literal["rewrite", "one_stage", "manual", "fallback", "modification", "caption", "refine"]

READABLE_MAJOR_VERSIONS = ("1", "2", "3")


class TraceFormatError(AgentCirError, ValueError):
    """A record is not a trace this agent_cir can read (names the field, what was found, and what to do)."""


def _id_text(value: Any) -> Any:
    # Gallery and query ids are strings; a JSON number written by another tool is read as its text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, BeforeValidator(_id_text)]


class _Open(BaseModel):
    """Unknown keys are kept (and dumped back), so newer fields survive a round trip through older code."""

    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------------------------- parts


class RankedItem(_Open):
    """One row of a ranking: the final ``results`` ({rank, id, path, score}) or retrieval ``candidates``."""

    rank: int = 0
    id: Id
    path: str | None = None
    score: float | None = None
    """The retrieval score."""
    judge_score: float | None = None
    verify_score: float | None = None
    final_score: float | None = None
    """Written (3.0) only where that stage scored the item; ``Trace.ordered_by`` names the one the order follows."""


class ModelCallRecord(_Open):
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


class QueryRecord(_Open):
    id: Id | None = None
    text: str = ""
    image_path: str | None = None
    image_hash: str | None = None
    reference_id: Id | None = None
    reference_caption: str | None = None
    target_text: str | None = None
    candidate_ids: list[Id] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class RecipeRef(_Open):
    name: str | None = None
    hash: str | None = None


class EncoderRecord(_Open):
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


class Totals(_Open):
    seconds: float = 0.0
    model_calls: int = 0
    cache_hits: int = 0


class EvalRecord(_Open):
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


# ------------------------------------------------------------------------------------ stage outputs


class CaptionOutput(_Open):
    captions: list[str] = Field(default_factory=list)


class RewriteOutput(_Open):
    target_descriptions: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    description_source: DescriptionSource | None = None


class OneStageOutput(_Open):
    target_descriptions: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    reference_description: str | None = None
    description_source: DescriptionSource | None = None


class RetrieveOutput(_Open):
    """``mode`` .. ``search`` are always written; the rest only by the modes or settings that use them."""

    mode: str | None = None
    k: int | None = None
    query_texts: list[str] = Field(default_factory=list)
    caption_weight: float | None = None
    excluded: list[Id] = Field(default_factory=list)
    """Gallery ids left out of the ranking (every copy of the reference)."""
    candidates: list[RankedItem] = Field(default_factory=list)
    candidates_total: int | None = None
    """How many entries the ranking has (3.0: always; ``candidates`` holds its head). In 2.0 traces: set by
    `agent-cir eval` when it trimmed ``candidates``."""
    search: str | None = None
    """The faiss structure that was searched."""
    search_settings: dict[str, Any] | None = None
    restricted_to: int | None = None
    description_scoring: str | None = None
    alpha: float | None = None
    pairing: str | None = None
    captions_per_item: int | None = None
    raw_projections: bool | None = None
    pdv_alpha_t: float | None = None
    pdv_alpha_i: float | None = None
    pdv_beta: float | None = None
    reference_texts: list[str] | None = None
    sqaf_weight: float | None = None
    target_texts: list[str] | None = None
    dual_weight: float | None = None
    """mode dual: the image path's weight."""
    dual_fusion: str | None = None
    paths: dict[str, list[Id]] | None = None
    """mode dual: each path's own top ids (text, image)."""


class ImagineOutput(_Open):
    """The imagine stage's edit: the backend, the instruction it was given, the settings and the picture."""

    model: str | None = None
    """The image-edit backend spec (``diffusers:...``, ``openai-images:...``)."""
    instruction: str | None = None
    source: str | None = None
    """modification | description: what the instruction carries."""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    image_guidance: float | None = None
    strength: float | None = None
    size: int | None = None
    image_sha256: str | None = None
    path: str | None = None
    """The edited image's file in the query's artifacts folder (None when the run keeps no artifacts)."""
    description: str | None = None
    """A VLM's one-sentence description of the edited image (``imagine.describe_model``)."""


class GridRecord(_Open):
    path: str | None = None
    cells: dict[str, Id] = Field(default_factory=dict)
    """Cell number (as text) -> the gallery id shown in it."""


class RerankScore(_Open):
    id: Id
    retrieval: float | None = None
    judge: float | None = None
    final: float | None = None


class AgreementSummary(_Open):
    kendall_tau_mean: float | None = None
    top1_agreement: float | None = None
    windows: int | None = None


class RerankOutput(_Open):
    method: str | None = None
    judge: str | None = None
    k: int | None = None
    input_order: list[Id] = Field(default_factory=list)
    final_order: list[Id] = Field(default_factory=list)
    grids: list[GridRecord] = Field(default_factory=list)
    raw: list[str] = Field(default_factory=list)
    parsed: list[dict[str, Any]] = Field(default_factory=list)
    repairs: list[dict[str, Any] | str] = Field(default_factory=list)
    """One entry per judge call ({window, pass or item, repairs: [...], details}); plain strings in old traces."""
    passes: int | None = None
    aggregation: str | None = None
    agreement: AgreementSummary | None = None
    windows: list[dict[str, Any]] = Field(default_factory=list)
    fusion_weight: float | None = None
    scores: list[RerankScore] = Field(default_factory=list)
    calls: int | None = None
    """How many judge calls were made (the calls themselves are the record's ``calls``)."""
    images_sent: int | None = None
    seconds: float | None = None


class VerifyItem(_Open):
    id: Id
    confidence: float | None = None
    """P(yes) in [0, 1]: from token probabilities, or 1/0 from a parsed answer (``source`` says which)."""
    source: str | None = None
    """logits | logprobs | answer | unparsed"""
    answer: str | None = None
    reason: str | None = None
    retrieval: float | None = None


class VerifyOutput(_Open):
    input: str | None = None
    """image | caption: what the verifier was shown for each candidate."""
    k: int | None = None
    threshold: float | None = None
    items: list[VerifyItem] = Field(default_factory=list)
    best_confidence: float | None = None
    decision: str | None = None
    """accept | refine | stopped (no rounds left) | unverified (no refine stage)"""
    fusion: str | None = None
    """Set when the loop ended and the rounds were fused into the final order."""
    final_order: list[Id] = Field(default_factory=list)


class Proposition(_Open):
    """One atomic check of ImageScope's stage 2: a yes/no question and the answer the wanted image gives."""

    question: str
    expected: bool


class PredicateCandidate(_Open):
    id: Id
    retrieval: float | None = None
    answers: list[bool] | None = None
    """The MLLM's yes (True) / no (False) per proposition; None when the candidate had no image to show."""
    satisfied: int = 0
    """How many answers equal the expected ones (the score the head is sorted by)."""


class PredicatesOutput(_Open):
    """The predicates stage (ImageScope's predicate verification of the top k)."""

    k: int | None = None
    propositions: list[Proposition] = Field(default_factory=list)
    dropped: int = 0
    """Entries of the proposition answer that were not a (question, True/False) pair."""
    scoring: str | None = None
    candidates: list[PredicateCandidate] = Field(default_factory=list)
    """In the new order."""
    final_order: list[Id] = Field(default_factory=list)


class MultigrainOutput(_Open):
    """The multigrain stage (CoTMR's multi-grained scoring of the ranking)."""

    target_descriptions: list[str] = Field(default_factory=list)
    present_objects: list[str] = Field(default_factory=list)
    absent_objects: list[str] = Field(default_factory=list)
    present_weight: float | None = None
    absent_weight: float | None = None
    aggregate: str | None = None
    rescored: int = 0
    """How many ranked entries were scored again (the whole ranking retrieval returned)."""
    head: list[RankedItem] = Field(default_factory=list)


class RefineOutput(_Open):
    previous_description: str | None = None
    target_descriptions: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    findings: list[str] = Field(default_factory=list)
    """What the verifier said the candidates miss (the refiner's input)."""


class RoundRecord(_Open):
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


# ------------------------------------------------------------------------------------ stage records


class _StageRecordBase(_Open):
    """Fields every stage record has (``agent_cir.types.StageRecord`` as written)."""

    stage: str
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


class CaptionRecord(_StageRecordBase):
    stage: Literal["caption"] = "caption"
    output: CaptionOutput = Field(default_factory=CaptionOutput)


class RewriteRecord(_StageRecordBase):
    stage: Literal["rewrite"] = "rewrite"
    output: RewriteOutput = Field(default_factory=RewriteOutput)


class OneStageRecord(_StageRecordBase):
    stage: Literal["one_stage"] = "one_stage"
    output: OneStageOutput = Field(default_factory=OneStageOutput)


class RetrieveRecord(_StageRecordBase):
    stage: Literal["retrieve"] = "retrieve"
    output: RetrieveOutput = Field(default_factory=RetrieveOutput)


class ImagineRecord(_StageRecordBase):
    stage: Literal["imagine"] = "imagine"
    output: ImagineOutput = Field(default_factory=ImagineOutput)


class RerankRecord(_StageRecordBase):
    stage: Literal["rerank"] = "rerank"
    output: RerankOutput = Field(default_factory=RerankOutput)


class VerifyRecord(_StageRecordBase):
    stage: Literal["verify"] = "verify"
    output: VerifyOutput = Field(default_factory=VerifyOutput)


class RefineRecord(_StageRecordBase):
    stage: Literal["refine"] = "refine"
    output: RefineOutput = Field(default_factory=RefineOutput)


class PredicatesRecord(_StageRecordBase):
    stage: Literal["predicates"] = "predicates"
    output: PredicatesOutput = Field(default_factory=PredicatesOutput)


class MultigrainRecord(_StageRecordBase):
    stage: Literal["multigrain"] = "multigrain"
    output: MultigrainOutput = Field(default_factory=MultigrainOutput)


class OtherStageRecord(_StageRecordBase):
    """A stage outside the five kinds (a user's own stage): its output stays a plain dict."""

    output: dict[str, Any] = Field(default_factory=dict)


_RECORD_CLASSES: dict[str, type[_StageRecordBase]] = {
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
    return name if name in _RECORD_CLASSES else "other"


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


class Trace(_Open):
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
    def stage(self, name: str) -> _StageRecordBase | None: ...

    def stage(self, name: str) -> _StageRecordBase | None:
        """The record of stage ``name`` (typed by its kind) of the last round it ran in, or None when that
        stage did not run. ``stages_named`` gives every round's."""
        return next((record for record in reversed(self.stages) if record.stage == name), None)

    def stages_named(self, name: str) -> list[_StageRecordBase]:
        """Every record of stage ``name``, one per round, in the order they ran."""
        return [record for record in self.stages if record.stage == name]

    def extra(self, key: str, default: Any = None) -> Any:
        """A top-level key outside the schema (e.g. ``error`` in a failed query's record)."""
        return (self.model_extra or {}).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict: only keys that were present (or set), extras included."""
        return self.model_dump(exclude_unset=True)


# ------------------------------------------------------------------------------------------ reading

_TAGS = {*_RECORD_CLASSES, "other"}


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[tuple[Any, ...], bool]:
    """The part of an error location that exists in ``data`` (union tags and member names left out), and
    whether the whole location exists (False: the last key is missing, or the walk hit a non-container)."""
    path: list[Any] = []
    node = data
    for key in loc:
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            path.append(key)
            node = node[key]
        elif isinstance(node, Mapping) and key in node:
            path.append(key)
            node = node[key]
        elif isinstance(node, Mapping) and key in _TAGS:
            continue  # the discriminated union's tag, not a key of the record
        else:
            return tuple(path), False
    return tuple(path), True


def _readable(path: tuple[Any, ...], missing: Any = None) -> str:
    text = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")
    if missing is not None:
        text = f"{text}.{missing}" if text else str(missing)
    return text or "the record"


def _format_error(err: ValidationError, data: Any) -> str:
    problems = []
    for error in err.errors()[:5]:
        loc = tuple(error["loc"])
        path, whole = _data_path(loc, data)
        missing = loc[-1] if error["type"] == "missing" and loc and not whole else None
        found = "" if missing is not None else f" (found {_short(error.get('input'))})"
        problems.append(f"{_readable(path, missing)}: {error['msg']}{found}")
    more = f" (and {err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return "; ".join(problems) + more


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_version(data: Mapping[str, Any]) -> str:
    """The record's schema version (a record without one is read as 1.0); an unreadable major version raises."""
    version = str(data.get("schema_version") or "1.0")
    if version.split(".")[0] not in READABLE_MAJOR_VERSIONS:
        raise TraceFormatError(
            f"trace {data.get('query_id')!r}: schema_version {version!r} is not one this agent_cir reads "
            f"(1.x, 2.x, 3.x); read it with the agent_cir version that wrote it, or upgrade agent_cir"
        )
    return version


def _check_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TraceFormatError(f"a trace record is a JSON object; got {type(data).__name__} ({_short(data)})")
    check_version(data)
    return data


def load_trace(data: Any) -> Trace:
    """A trace record (a dict as read from traces.jsonl, schema 1.x or 2.x) as a :class:`Trace`.

    Raises :class:`TraceFormatError` naming the field when the record is not a trace (not an object, no
    ``query_id``, a documented field of the wrong type, an unreadable schema version).
    """
    data = _check_object(data)
    try:
        return Trace.model_validate(data)
    except ValidationError as err:
        raise TraceFormatError(
            f"trace {data.get('query_id')!r} is not a valid trace record: {_format_error(err, data)}"
        ) from err


def salvage_trace(data: Any, max_rounds: int = 20) -> tuple[Trace, list[str]]:
    """For display (report, demo), where a record is data from a file and one bad field must not hide the
    rest: each field of the wrong type is dropped (so it takes its default; a list item that cannot be read
    is dropped from its list) and named in the returned notes. A record that is not a trace at all (not an
    object, no readable ``query_id``, an unreadable version) still raises :class:`TraceFormatError`."""
    data = _check_object(data)
    try:
        return Trace.model_validate(data), []
    except ValidationError:
        pass
    work = copy.deepcopy(dict(data))
    notes: list[str] = []
    for _ in range(max_rounds):
        try:
            return Trace.model_validate(work), notes
        except ValidationError as err:
            drops: dict[tuple[Any, ...], str] = {}
            for error in err.errors():
                path, whole = _data_path(tuple(error["loc"]), work)
                if not whole and error["type"] == "missing":
                    # A required key is absent: the item that lacks it cannot be read (a row without an id).
                    drops.setdefault(path, f"{_readable(path)}: no {error['loc'][-1]}")
                else:
                    drops.setdefault(path, f"{_readable(path)}: {error['msg']}")
            if () in drops or ("query_id",) in drops:
                raise TraceFormatError(
                    f"trace {data.get('query_id')!r} is not a trace record: {_format_error(err, work)}"
                ) from err
            for path in sorted(drops, key=_sort_key, reverse=True):  # later list items first: indices hold
                parent = work
                for key in path[:-1]:
                    parent = parent[key]
                del parent[path[-1]]
                notes.append(f"trace {data.get('query_id')!r}: dropped {drops[path]}")
    raise TraceFormatError(f"trace {data.get('query_id')!r}: too many unreadable fields to show it")


def _sort_key(path: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, key) if isinstance(key, int) else (1, str(key)) for key in path)


_HEAD_ROWS = 64
"""Rows of each long ranking ``validate_written`` checks. A ranking's rows are made by one comprehension, so
a wrong type shows in its first rows; checking a whole-gallery ranking (thousands of rows per query in an
eval run) would cost more than the retrieval itself. Readers (``load_trace``) check every row."""


def _ranking_head(data: Mapping[str, Any]) -> dict[str, Any]:
    view = dict(data)
    if isinstance(view.get("results"), list):
        view["results"] = view["results"][:_HEAD_ROWS]
    if isinstance(view.get("stages"), list):
        stages = []
        for stage in view["stages"]:
            output = stage.get("output") if isinstance(stage, Mapping) else None
            if isinstance(output, Mapping) and isinstance(output.get("candidates"), list):
                stage = {**stage, "output": {**output, "candidates": output["candidates"][:_HEAD_ROWS]}}
            stages.append(stage)
        view["stages"] = stages
    return view


def validate_written(data: Mapping[str, Any]) -> None:
    """Strict check of a record the pipeline is about to write: no coercion, so a stage that wrote a number
    as text, a tuple for a list or a dict of the wrong shape is caught where it happens. Strict validation
    converts nothing, so the record itself is what a dump of the model would give (same keys, same order);
    the caller keeps it rather than paying for a copy. Long rankings are checked on their first rows."""
    view = _ranking_head(data)
    try:
        Trace.model_validate(view, strict=True)
    except ValidationError as err:
        raise TraceFormatError(
            f"query {data.get('query_id')!r}: a stage wrote a trace field of the wrong type: "
            f"{_format_error(err, view)}"
        ) from err


_STAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyStageRecord)


def load_stage(data: Any) -> _StageRecordBase:
    """One stage record (an element of a trace's ``stages``) as its typed class."""
    try:
        return _STAGE_ADAPTER.validate_python(data)
    except ValidationError as err:
        stage = data.get("stage") if isinstance(data, Mapping) else None
        raise TraceFormatError(f"stage record {stage!r} is not valid: {_format_error(err, data)}") from err


def stage_of(trace: Mapping[str, Any], name: str) -> _StageRecordBase | None:
    """The typed record of stage ``name`` in a trace dict, validating only that record (cheap on a trace
    that holds a whole-gallery ranking)."""
    stages = trace.get("stages")
    if not isinstance(stages, list):
        return None
    # With a loop a stage appears once per round: the last one is the current state.
    found = next((s for s in reversed(stages) if isinstance(s, Mapping) and s.get("stage") == name), None)
    return None if found is None else load_stage(found)


__all__ = [
    "AgreementSummary", "AnyStageRecord", "CaptionOutput", "CaptionRecord", "EncoderRecord", "EvalRecord",
    "GridRecord", "ModelCallRecord", "OneStageOutput", "OneStageRecord", "OtherStageRecord", "QueryRecord",
    "RankedItem", "RecipeRef", "RefineOutput", "RefineRecord", "RoundRecord", "VerifyItem", "VerifyOutput",
    "VerifyRecord", "RerankOutput", "RerankRecord", "RerankScore", "RetrieveOutput", "RetrieveRecord",
    "RewriteOutput", "RewriteRecord", "TRACE_SCHEMA_VERSION", "Totals", "Trace", "TraceFormatError",
    "check_version", "load_stage", "load_trace", "salvage_trace", "stage_of", "validate_written",
]
