"""What each stage writes into its trace record: one pydantic class per stage kind (``CaptionOutput`` ...
``RerankOutput``), and the ranked rows they share. A stage builds its output as one of these (validated where it
is built); ``agent_cir.trace.model`` wraps it in the stage's record and the query's ``Trace``.

Every class keeps keys it does not know (``extra="allow"``): a stage that adds a field, or a trace written by a
newer agent_cir, loses nothing in a round trip. ``RetrieveOutput.rows`` and ``RerankOutput.repair_lines`` are
derived values the report and the demo show.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DescriptionSource = Literal["rewrite", "one_stage", "manual", "fallback", "modification", "caption", "refine"]


def _id_text(value: Any) -> Any:
    # Gallery and query ids are strings; a JSON number written by another tool is read as its text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, BeforeValidator(_id_text)]


class OpenModel(BaseModel):
    """Unknown keys are kept (and dumped back), so newer fields survive a round trip through older code."""

    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------------------------- rows


class RankedItem(OpenModel):
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


def ranked_rows(rows: list[RankedItem], sort: bool = False) -> list[RankedItem]:
    """``rows`` with a rank on each (a row without one, rank 0, gets a copy ranked by its position)."""
    read = [row if row.rank else row.model_copy(update={"rank": position}) for position, row in enumerate(rows, 1)]
    return sorted(read, key=lambda row: row.rank) if sort else read


# ------------------------------------------------------------------------------------ stage outputs


class CaptionOutput(OpenModel):
    captions: list[str] = Field(default_factory=list)


class RewriteOutput(OpenModel):
    target_descriptions: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    description_source: DescriptionSource | None = None


class OneStageOutput(OpenModel):
    target_descriptions: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    reference_description: str | None = None
    description_source: DescriptionSource | None = None


class RetrieveOutput(OpenModel):
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

    @property
    def rows(self) -> list[RankedItem]:
        """The head in rank order (a row without a rank takes its position in the list)."""
        return ranked_rows(self.candidates, sort=True)

    @property
    def ranked(self) -> int:
        """How many entries the ranking has (``candidates_total``; the rows kept when a trace lacks it)."""
        return self.candidates_total if self.candidates_total is not None else len(self.candidates)


class ImagineOutput(OpenModel):
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


class GridRecord(OpenModel):
    path: str | None = None
    cells: dict[str, Id] = Field(default_factory=dict)
    """Cell number (as text) -> the gallery id shown in it."""

    @property
    def ordered_cells(self) -> list[tuple[str, str]]:
        """(cell number, gallery id) in cell order."""
        return sorted(self.cells.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)


class RerankScore(OpenModel):
    id: Id
    retrieval: float | None = None
    judge: float | None = None
    final: float | None = None


class AgreementSummary(OpenModel):
    kendall_tau_mean: float | None = None
    top1_agreement: float | None = None
    windows: int | None = None


class RerankOutput(OpenModel):
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

    @property
    def repair_lines(self) -> list[str]:
        """The repairs as readable lines; entries that repaired nothing are left out (plain strings in old traces
        are kept as they are)."""
        lines: list[str] = []
        for entry in self.repairs:
            if not isinstance(entry, dict):
                lines.append(str(entry))
                continue
            done = entry.get("repairs") if isinstance(entry.get("repairs"), list) else []
            if not done:
                continue
            where = ", ".join(f"{key} {entry[key]}" for key in ("window", "pass", "item") if key in entry)
            details = "; ".join(f"{key}: {entry[key]}" for key in ("out_of_range", "duplicates", "not_numbers",
                                                                     "appended") if entry.get(key))
            lines.append(f"{where}: {', '.join(map(str, done))}" + (f" ({details})" if details else ""))
        return lines


class VerifyItem(OpenModel):
    """One judged candidate (fields in the order the verify stage writes them)."""

    id: Id
    retrieval: float | None = None
    confidence: float | None = None
    """P(yes) in [0, 1]: from token probabilities, or 1/0 from a parsed answer (``source`` says which)."""
    source: str | None = None
    """logits | logprobs | answer | unparsed"""
    answer: str | None = None
    reason: str | None = None


class VerifyOutput(OpenModel):
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


class Proposition(OpenModel):
    """One atomic check of ImageScope's stage 2: a yes/no question and the answer the wanted image gives."""

    question: str
    expected: bool


class PredicateCandidate(OpenModel):
    id: Id
    retrieval: float | None = None
    answers: list[bool] | None = None
    """The MLLM's yes (True) / no (False) per proposition; None when the candidate had no image to show."""
    satisfied: int = 0
    """How many answers equal the expected ones (the score the head is sorted by)."""


class PredicatesOutput(OpenModel):
    """The predicates stage (ImageScope's predicate verification of the top k)."""

    k: int | None = None
    propositions: list[Proposition] = Field(default_factory=list)
    dropped: int = 0
    """Entries of the proposition answer that were not a (question, True/False) pair."""
    scoring: str | None = None
    candidates: list[PredicateCandidate] = Field(default_factory=list)
    """In the new order."""
    final_order: list[Id] = Field(default_factory=list)


class MultigrainOutput(OpenModel):
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


class RefineOutput(OpenModel):
    previous_description: str | None = None
    target_descriptions: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    findings: list[str] = Field(default_factory=list)
    """What the verifier said the candidates miss (the refiner's input)."""


__all__ = [
    "AgreementSummary", "CaptionOutput", "DescriptionSource", "GridRecord", "Id", "ImagineOutput", "MultigrainOutput",
    "OneStageOutput", "OpenModel", "PredicateCandidate", "PredicatesOutput", "Proposition", "RankedItem", "RefineOutput", "RerankOutput", "RerankScore", "RetrieveOutput", "RewriteOutput", "VerifyItem",
    "VerifyOutput", "ranked_rows",
]
