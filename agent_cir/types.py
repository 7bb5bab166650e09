"""The vocabulary every part of agent_cir shares: queries, candidates, stage records, results.

Data flows one way: a ``QueryState`` is handed to each enabled stage in order; a stage reads what
earlier stages wrote, fills its own fields and returns a ``StageRecord`` for the trace.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

TRACE_SCHEMA_VERSION = "2.0"

ParseStatus = Literal["ok", "repaired", "fallback", "not_applicable"]
DescriptionSource = Literal["rewrite", "one_stage", "manual", "fallback", "modification", "caption"]


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
    """One gallery item in a ranking."""

    id: str
    """Gallery key: the image's path relative to the indexed folder, or a benchmark image name."""
    score: float
    path: str | None = None
    rank: int = 0
    """1-based rank, set by whichever stage produced the ranking."""

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "path": self.path, "score": float(self.score)}


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
    output: dict[str, Any] = field(default_factory=dict)
    calls: list[ModelCall] = field(default_factory=list)
    parse_status: ParseStatus = "not_applicable"
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    """Why the stage did not run (e.g. 'manual target description'); None when it ran."""

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
    records: list[StageRecord] = field(default_factory=list)
    artifacts_dir: Path | None = None
    """Where a stage may write files for the trace (grid images); None means do not write."""
    started: float = field(default_factory=time.time)


class Stage(Protocol):
    """A pipeline stage: reads the state, fills its fields, returns its trace record."""

    name: str

    def run(self, state: QueryState) -> StageRecord: ...


class BatchStage(Stage, Protocol):
    """A stage that can serve a whole chunk of queries at once (one encoder batch, one faiss call, one batched
    generate). The pipeline uses ``run_batch`` when a stage has it, otherwise ``run`` per state in a thread pool.

    Contract: one entry per state, in the same order; an exception object in place of a record marks that
    query as failed (the others go on). Seconds are set by the pipeline (the chunk's time, shared out).
    """

    def run_batch(self, states: list[QueryState]) -> list[StageRecord | BaseException]: ...


@dataclass
class Result:
    """What a query returns: the final ranking and the full trace record (a JSON-ready dict)."""

    query_id: str
    candidates: list[Candidate]
    trace: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "results": [c.to_dict() for c in self.candidates]}

    def stage(self, name: str) -> Any:
        """The typed trace record of stage ``name`` (``agent_cir.trace_model.RerankRecord`` for "rerank", ...),
        or None when it did not run: ``result.stage("retrieve").output.candidates[0].id``."""
        from agent_cir.trace_model import stage_of

        return stage_of(self.trace, name)

    def typed_trace(self) -> Any:
        """The whole trace as an ``agent_cir.trace_model.Trace`` (validated now: ``trace`` is a plain dict that
        callers may have changed)."""
        from agent_cir.trace_model import load_trace

        return load_trace(self.trace)


def record_to_dict(record: StageRecord) -> dict[str, Any]:
    """A stage record as a JSON-ready dict. ``output`` is copied one level deep only: it is already plain
    JSON data, and a whole-gallery ranking (thousands of entries) would cost more to deep-copy than to compute."""
    return {
        "stage": record.stage,
        "output": dict(record.output),
        "calls": [asdict(call) for call in record.calls],
        "parse_status": record.parse_status,
        "notes": list(record.notes),
        "seconds": record.seconds,
        "skipped": record.skipped,
        "model_calls": record.model_calls,
        "cache_hits": record.cache_hits,
    }
