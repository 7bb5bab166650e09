"""The vocabulary every part of agent_cir shares: queries, candidates, stage records, results.

A ``QueryState`` is handed to each enabled stage in order (and round after round where the recipe loops, see
``agent_cir.engine``); a stage reads what earlier stages wrote, fills its own fields and returns a
``StageRecord`` for the trace, whose ``output`` is that stage's typed output (``agent_cir.trace.model``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from agent_cir.trace.model import ParseStatus, Trace
from agent_cir.trace.outputs import DescriptionSource


@dataclass
class Query:
    """One composed query: a reference image plus a modification text.

    ``Query(image="ref.jpg", text="make it red")`` gets an automatic ``id`` (see :func:`auto_query_id`);
    positional ``Query("q1", "make it red")`` still means id, text.
    """

    id: str | None = None
    """None: derived from text, image path and target_text (stable across runs and machines)."""
    text: str = ""
    image: str | None = None
    """Path of the reference image file (None in caption-only runs such as the CIRR text surrogate)."""
    reference_id: str | None = None
    """Gallery id of the reference when it is known (benchmarks); used to exclude it and reuse its embedding."""
    reference_caption: str | None = None
    """A caption supplied with the query (text surrogate, or a user); the caption stage then makes no call."""
    target_text: str | None = None
    """Intervention: a hand-written target description; caption and rewrite stages are skipped."""
    candidate_ids: list[str] | None = None
    """Rank only these gallery ids (a per-query gallery, as in GeneCIS); None ranks the whole gallery."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything the caller wants carried into the trace (e.g. benchmark subset members). Not read by stages."""

    def __post_init__(self) -> None:
        if self.image is not None:
            self.image = str(self.image)  # a Path is welcome; the trace and the cache key hold strings
        if self.id is None or self.id == "":
            self.id = auto_query_id(self.text, self.image, self.target_text)


def auto_query_id(text: str, image: str | None, target_text: str | None) -> str:
    """``q-`` + 10 hex digits of sha256 over (text, image path as given, target_text).

    The path is taken as written (not resolved), so the same command line gives the same id anywhere;
    two queries differing in any of the three get different ids.
    """
    import hashlib
    import json

    payload = json.dumps([text or "", image, target_text], ensure_ascii=False)
    return "q-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:10]


@dataclass
class Candidate:
    """One gallery item in a ranking, with every score a stage gave it.

    ``score`` is the retrieval score (also ``retrieval_score``); ``judge_score`` (rerank), ``verify_score``
    (the verifier's confidence) and ``final_score`` (the score the final order follows when it is not the
    retrieval score) are None where that stage did not score the item. ``Result.ordered_by`` says which one
    ordered the ranking.
    """

    id: str
    """Gallery key: the image's path relative to the indexed folder, or a benchmark image name."""
    score: float
    path: str | None = None
    rank: int = 0
    """1-based rank, set by whichever stage produced the ranking."""
    judge_score: float | None = None
    verify_score: float | None = None
    final_score: float | None = None

    @property
    def retrieval_score(self) -> float:
        return float(self.score)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"rank": self.rank, "id": self.id, "path": self.path, "score": float(self.score)}
        for name in ("judge_score", "verify_score", "final_score"):
            value = getattr(self, name)
            if value is not None:
                row[name] = round(float(value), 6)
        return row


@dataclass
class ModelCall:
    """One chat-model call as it appears in a trace (a cache hit is recorded too, with cache='hit')."""

    backend: str
    model: str
    prompt_name: str
    prompt_hash: str
    raw: str
    cache: Literal["hit", "miss", "off"]
    seconds: float
    usage: dict[str, Any] | None = None
    parse_status: ParseStatus | None = None
    prompt: str | None = None
    """The rendered text prompt (images are referenced by content hash, never inlined)."""
    images: list[str] = field(default_factory=list)
    """Content hashes of the images sent with the call."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageRecord:
    """A stage's part of the per-query trace."""

    stage: str
    output: BaseModel | dict[str, Any] = field(default_factory=dict)
    """The stage's typed output (``CaptionOutput`` ... ``RerankOutput`` of ``agent_cir.trace.model``, keeping any
    extra field); a user's own stage may give a plain dict."""
    calls: list[ModelCall] = field(default_factory=list)
    parse_status: ParseStatus = "not_applicable"
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    """Why the stage did not run (e.g. 'manual target description'); None when it ran."""
    round: int = 0
    """The loop round this record belongs to (0: the first pass)."""

    @property
    def model_calls(self) -> int:
        """Calls that reached a model (cache misses and uncached calls)."""
        return sum(1 for call in self.calls if call.cache != "hit")

    @property
    def cache_hits(self) -> int:
        return sum(1 for call in self.calls if call.cache == "hit")


@dataclass
class QueryState:
    """What flows through the stages for one query. Each stage fills its own fields."""

    query: Query
    image_hash: str | None = None
    captions: list[str] = field(default_factory=list)
    reasoning: str | None = None
    target_descriptions: list[str] = field(default_factory=list)
    description_source: DescriptionSource | None = None
    """Where ``target_descriptions`` came from. Set by the stage that produced them (rewrite, one_stage) or by
    the pipeline (manual, modification); retrieval and rerank only read it."""
    reference_description: str | None = None
    """The one-stage model's own description of the reference image (one_stage writes it; the pipeline hands
    it on as the caption when no caption stage ran)."""
    candidates: list[Candidate] = field(default_factory=list)
    """The head of the current ranking as objects (what a person or a model looks at)."""
    ranking: Any = None
    """An ``agent_cir.retrieval.ranking.Ranking`` (typed ``Any`` here: that module builds on this one): the whole
    current ranking, column-wise (None until retrieval ran; then ``candidates`` is its head)."""
    round: int = 0
    """0 for the first pass; the loop's refine stage starts round 1, 2, ..."""
    verification: dict[str, Any] | None = None
    """The verifier's findings of the current round (read by refine)."""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """One summary per finished round (description, retrieval head, verifier scores, decision)."""
    records: list[StageRecord] = field(default_factory=list)
    edited_image: Any = None
    """The imagine stage's picture of the target: an ``agent_cir.stages.imagine.EditedImage`` (None without it)."""
    dual_paths: list[dict[str, Any]] = field(default_factory=list)
    """Dual retrieval: per round, the ids each path (text, image) put in its top k (WISER's fusion reads them)."""
    artifacts_dir: Path | None = None
    """Where a stage may write files for the trace (grid images); None means do not write."""
    started: float = field(default_factory=time.time)


class Stage(Protocol):
    """A pipeline stage: reads the state, fills its fields, returns its trace record."""

    name: str

    def run(self, state: QueryState) -> StageRecord: ...


class Result:
    """What a query returns: the final ranking, the score that ordered it, and its trace.

    ``ranking`` is the whole final ranking (column-wise, ``agent_cir.retrieval.ranking.Ranking``);
    ``candidates`` its first ``shown`` entries as objects (built on first use); ``ordered_by`` names the score
    the order follows: ``retrieval``, ``judge``, ``fused`` (judge fused with retrieval) or ``verifier``.
    ``trace`` is the typed trace (``agent_cir.trace.model.Trace``) that ``agent_cir.trace.io.TraceWriter``
    writes: ``result.trace.stage("retrieve").output.candidates[0].id``.
    """

    def __init__(self, query_id: str, candidates: list[Candidate] | None = None, trace: Trace | None = None,
                 *, ranking: Any = None, ordered_by: str | None = None, shown: int | None = None) -> None:
        self.query_id = query_id
        self.trace: Trace = trace if trace is not None else Trace(query_id=query_id)
        self.ranking = ranking
        self.shown = shown
        self._candidates = list(candidates) if candidates is not None else None
        self.ordered_by = ordered_by or (ranking.ordered_by if ranking is not None else "retrieval")

    @property
    def candidates(self) -> list[Candidate]:
        if self._candidates is None:
            self._candidates = self.ranking.head(self.shown) if self.ranking is not None else []
        return self._candidates

    def __repr__(self) -> str:
        return f"Result(query_id={self.query_id!r}, ordered_by={self.ordered_by!r}, candidates={len(self.candidates)})"

    def to_dict(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "ordered_by": self.ordered_by,
                "results": [c.to_dict() for c in self.candidates]}

    def stage(self, name: str) -> Any:
        """The typed trace record of stage ``name`` (``agent_cir.trace.model.RerankRecord`` for "rerank", ...),
        or None when it did not run. With a loop, the record of the last round."""
        return self.trace.stage(name)
