"""The per-query trace, built from a finished query (``build_trace``) or from one still running (``partial_trace``,
the demo's live view); the writer and readers are ``agent_cir.trace.io``.

The result is an ``agent_cir.trace.model.Trace`` (one record class per stage kind, each with its stage's typed
output), validated once here, where it is built; the writer dumps it as JSON in the layout below.

Schema (version ``TRACE_SCHEMA_VERSION``), one JSON object per line::

    schema_version      "3.0" (1.0 and 2.0 have the same layout minus the 3.0 fields; ``load_trace`` reads all)
    query_id            the query id
    query               {id, text, image_path, image_hash, reference_id, reference_caption, target_text,
                         candidate_ids, meta}
    recipe              {name, hash}
    encoder             the encoder that embedded the query: {backend, architecture, pretrained, weights,
                         preprocess, dim, random_weights}; random_weights is true when the weights are a random
                         init (results then mean nothing)
    captions            captions of the reference image (from the caption stage or supplied with the query)
    reasoning           the rewriter's reasoning text, or null
    target_descriptions the target description(s) retrieval used
    description_source  rewrite | one_stage | manual | fallback | modification | caption
    stages              [{stage, output, calls: [ModelCall], parse_status, notes, seconds, skipped, round,
                          model_calls, cache_hits}]  in the order they ran (a loop repeats retrieve, verify and
                          refine, one record per round); a stage that served a whole chunk
                          at once (one encoder batch) records this query's share of that time and says so in
                          its notes (amortised); per-query stages record the query's own time
    results             the head of the final ranking [{rank, id, path, score, judge_score?, verify_score?,
                         final_score?}]; score is the retrieval score, the others are written where a stage gave one
    results_total       how many entries the final ranking has (3.0)
    ordered_by          the score the final order follows: retrieval | judge | fused | verifier (3.0)
    rounds              the verify -> refine loop, one entry per round: {round, description, head, confidences,
                         best_confidence, decision: accept|refine|stopped|unverified, calls, seconds} (3.0)
    totals              {seconds, model_calls, cache_hits}; seconds = the sum of the stage seconds
    artifacts_dir       folder of files the stages wrote for this query (grid images), or null
    created             ISO-8601 UTC time the record was made
    eval                only in `agent-cir eval` runs: {dataset, split, category, ranking, kept_top, ranked,
                         target_rank}
    A retrieve record's ``candidates`` is the head of its ranking; ``candidates_total`` is the ranking's length.

Each ``ModelCall``: {backend, model, prompt_name, prompt_hash, raw, cache: hit|miss|off, seconds, usage,
parse_status, prompt, images: [content hashes], params}.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from agent_cir.trace.load import check_built, load_stage, salvage_trace
from agent_cir.trace.model import RECORD_CLASSES, TRACE_SCHEMA_VERSION, Trace


def build_trace(
    state: Any, recipe_name: str, recipe_hash: str, seconds: float, encoder: dict[str, Any] | None = None,
    *, ranking: Any = None, head: int | None = None, shown: list[Any] | None = None,
) -> Trace:
    """The query's trace. ``state``: its ``agent_cir.types.QueryState``; ``ranking`` (an
    ``agent_cir.retrieval.ranking.Ranking``): the final ranking, whose first ``head`` entries become ``results``
    (``results_total`` says how many it has; ``shown``: those entries already built as candidates); without one,
    the state's candidates are the results. A stage output of the wrong type raises ``TraceFormatError`` naming
    the field."""
    query = state.query
    stages = [stage_entry(record) for record in state.records]
    if ranking is not None:
        if shown is None:
            shown = ranking.head(head) if head is not None and head < len(ranking) else ranking.head()
        results, total, ordered_by = [c.to_dict() for c in shown], len(ranking), ranking.ordered_by
    else:
        results = [candidate.to_dict() for candidate in state.candidates]
        total, ordered_by = len(results), "retrieval"
    record = {
        "schema_version": TRACE_SCHEMA_VERSION,
        "query_id": query.id,
        "query": {
            "id": query.id,
            "text": query.text,
            "image_path": query.image,
            "image_hash": state.image_hash,
            "reference_id": query.reference_id,
            "reference_caption": query.reference_caption,
            "target_text": query.target_text,
            "candidate_ids": query.candidate_ids,
            "meta": query.meta,
        },
        "recipe": {"name": recipe_name, "hash": recipe_hash},
        "encoder": dict(encoder) if encoder is not None else None,
        "captions": list(state.captions),
        "reasoning": state.reasoning,
        "target_descriptions": list(state.target_descriptions),
        "description_source": state.description_source,
        "stages": stages,
        "results": results,
        "results_total": total,
        "ordered_by": ordered_by,
        "rounds": [round_summary(summary, state.records) for summary in state.rounds],
        "totals": {
            "seconds": round(seconds, 6),
            "model_calls": sum(stage["model_calls"] for stage in stages),
            "cache_hits": sum(stage["cache_hits"] for stage in stages),
        },
        "artifacts_dir": str(state.artifacts_dir) if state.artifacts_dir else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return check_built(record)  # a stage that wrote a field of the wrong type fails here, naming the field


def stage_entry(record: Any) -> dict[str, Any]:
    """A stage's ``agent_cir.types.StageRecord`` in the trace's layout. Its output is kept as the stage built it
    (a typed output is not copied or validated again); a user's own stage may give a dict, or a model whose
    fields are then kept as plain data."""
    output = record.output
    if record.stage not in RECORD_CLASSES and isinstance(output, BaseModel):
        output = output.model_dump()
    return {
        "stage": record.stage,
        "output": output,
        "calls": [asdict(call) for call in record.calls],
        "parse_status": record.parse_status,
        "notes": list(record.notes),
        "seconds": record.seconds,
        "skipped": record.skipped,
        "round": record.round,
        "model_calls": record.model_calls,
        "cache_hits": record.cache_hits,
    }


def stage_json(record: Any) -> dict[str, Any]:
    """One stage record as the trace file holds it (JSON data, dumped through its typed record class)."""
    return load_stage(stage_entry(record), strict=True).model_dump(mode="json", exclude_unset=True)


def round_summary(summary: dict[str, Any], records: list[Any]) -> dict[str, Any]:
    """A finished round as the trace keeps it: what it searched, what the verifier found, what was decided, and
    what it cost (the calls and seconds of that round's records)."""
    number = summary.get("round", 0)
    mine = [record for record in records if record.round == number]
    return {
        "round": number,
        "description": list(summary.get("description") or []),
        "head": list(summary.get("head") or []),
        "confidences": list(summary.get("confidences") or []),
        "best_confidence": summary.get("best_confidence"),
        "decision": summary.get("decision"),
        "calls": sum(record.model_calls for record in mine),
        "seconds": round(sum(record.seconds for record in mine), 6),
    }


def partial_trace(state: Any) -> tuple[Trace, list[str]]:
    """The trace of a query still running (the demo shows each stage as it finishes): what the stages so far
    wrote, no results yet (``Trace.has_results`` is False) and no query id. Read for display: a field a stage
    got wrong is left out and named in the notes instead of hiding the rest."""
    return salvage_trace({
        "query_id": "",
        "captions": list(state.captions),
        "reasoning": state.reasoning,
        "target_descriptions": list(state.target_descriptions),
        "description_source": state.description_source,
        "stages": [stage_entry(record) for record in state.records],
        "rounds": [round_summary(summary, state.records) for summary in state.rounds],
    })


__all__ = ["build_trace", "partial_trace", "round_summary", "stage_entry", "stage_json"]
