"""HTML of the report: jinja2 templates (autoescaped: trace text is data, never markup) fed with page contexts
built from ``QueryView``s, their ``Trace`` (``agent_cir.trace.model``) and the checked images
(``images.ReportImages``)."""

from __future__ import annotations

import json
from typing import Any

import jinja2

from agent_cir.report.analyse import STATUS_LABELS, STATUSES, QueryView
from agent_cir.report.chart import rank_chart
from agent_cir.report.images import ReportImages
from agent_cir.report.served import readable_name
from agent_cir.trace.model import StageRecordBase, Trace
from agent_cir.trace.outputs import RankedItem

RANDOM_ENCODER_BANNER = "random-init encoder: rankings are meaningless"
_HEAVY_OUTPUT_KEYS = {"candidates", "grids", "repairs"}
"""Stage output fields shown elsewhere on the page (thumbnails, grids, repair lines)."""


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("agent_cir.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    env.filters["pretty_json"] = lambda value: json.dumps(value, ensure_ascii=False, indent=2, default=str)
    env.tests["mapping"] = lambda value: isinstance(value, dict)
    return env


def format_number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return f"{value:.{digits}f}"


def readable_output(stage: StageRecordBase, max_items: int = 10, max_chars: int = 300) -> dict[str, Any]:
    """A stage's output for people: heavy fields left out (shown elsewhere), long lists and texts cut."""

    def cut(value: Any) -> Any:
        if isinstance(value, str):
            return value if len(value) <= max_chars else value[:max_chars] + "…"
        if isinstance(value, list):
            head = [cut(item) for item in value[:max_items]]
            return ", ".join(map(str, head)) + (f" … ({len(value)} in all)" if len(value) > max_items else "")
        if isinstance(value, dict):
            return {str(k): cut(v) for k, v in list(value.items())[:max_items]}
        return value

    return {key: cut(value) for key, value in stage.output_data().items() if key not in _HEAVY_OUTPUT_KEYS}


ORDER_SCORE_NAMES = {"retrieval": "cosine", "judge": "judge", "fused": "fused", "verifier": "verifier"}
"""The word a row's ordering score is shown under (the CLI's column names, cli/_ranking.py)."""
ORDER_DESCRIPTIONS = {"judge": "the judge's score", "fused": "the judge's score fused with retrieval",
                      "verifier": "the verifier's confidence, pooled over the rounds"}


def ordering_score(row: RankedItem, ordered_by: str) -> float | None:
    """The score that put ``row`` where it is under ``ordered_by`` (None: a later stage never scored it, so it
    follows in retrieval order). Same choice as the CLI's ``ranking_rows``."""
    if ordered_by == "retrieval":
        return row.score
    if row.final_score is not None:
        return row.final_score
    return row.verify_score if ordered_by == "verifier" else row.judge_score


def order_note(ordered_by: str, rows: list[RankedItem]) -> str:
    """One line saying which score ordered the list and which one is shown beside it."""
    if ordered_by == "retrieval":
        return "ordered by the retrieval score (cosine)"
    name = ORDER_SCORE_NAMES.get(ordered_by, ordered_by)
    note = (f"ordered by {ORDER_DESCRIPTIONS.get(ordered_by, ordered_by)}: each row shows the {name} score, "
            "then the retrieval score (cosine)")
    if any(ordering_score(row, ordered_by) is None for row in rows):
        judged = "verifier" if ordered_by == "verifier" else "judge"
        note += f"; rows with '-' were not shown to the {judged}; they follow in retrieval order"
    return note


def _rows(rows: list[RankedItem], images: ReportImages, targets: set[str], subset: set[str],
          captions: dict[str, list[str]], ordered_by: str = "retrieval") -> list[dict[str, Any]]:
    return [{
        "rank": row.rank,
        "id": row.id,
        "name": readable_name(row.id),
        "score": row.score,
        "ordered_by": ordered_by,
        "order_name": ORDER_SCORE_NAMES.get(ordered_by, ordered_by),
        "order_score": ordering_score(row, ordered_by),
        "image": images.thumb_of_id(row.id, row.path or None),
        "is_target": row.id in targets,
        "in_subset": row.id in subset,
        "caption": (captions.get(row.id) or [None])[0],
    } for row in rows]


def retrieval_heading(trace: Trace) -> dict[str, Any]:
    """The numbers behind 'Retrieval': rows shown, items ranked, the k asked for, in words that say which is which."""
    record = trace.retrieval
    if record is None:
        return {"title": "Retrieval", "detail": ""}
    retrieval = record.output
    shown = len(retrieval.candidates)
    title = f"Retrieval: top {shown}" + (f" of {retrieval.ranked:,} ranked" if retrieval.ranked > shown else "")
    parts = [f"mode: {retrieval.mode or '?'}"]
    if retrieval.k is not None:
        parts.append(f"k (items the stage was asked to rank): {retrieval.k:,}")
    if retrieval.ranked > shown:
        parts.append(f"the trace keeps the top {shown}")
    return {"title": title, "detail": " · ".join(parts)}


def _edited(trace: Any, images: ReportImages, base: str | None) -> dict[str, Any] | None:
    """The imagine stage's picture of the target (shown beside the reference), or None without that stage."""
    stage = trace.stage("imagine")
    if stage is None or stage.skipped:
        return None
    output = stage.output
    return {"image": images.grid(output.path, base), "instruction": output.instruction,
            "model": output.model, "seed": output.seed, "description": output.description}


def query_context(view: QueryView, images: ReportImages, captions: dict[str, list[str]]) -> dict[str, Any]:
    trace = view.trace
    query = trace.query
    targets, subset = set(view.ground_truth), set(view.subset)
    base = trace.artifacts_dir or None
    rerank = trace.rerank
    retrieval = trace.retrieval.output if trace.retrieval is not None else None
    grids = [{
        "number": number,
        "image": images.grid(grid.path, base),
        "label": images.display_path(grid.path) or f"grid {number}",
        "cells": [{"cell": cell, "id": item, "is_target": item in targets} for cell, item in grid.ordered_cells],
    } for number, grid in enumerate(rerank.output.grids if rerank is not None else [], start=1)]
    reference = _reference(trace, images)
    eval_facts = None
    if trace.eval is not None:
        eval_facts = {"dataset": trace.eval.dataset, "split": trace.eval.split,
                      "official target rank": trace.eval.target_rank, "items ranked": trace.eval.ranked,
                      "top kept in the trace": trace.eval.kept_top}
    return {
        "view": view,
        "trace": trace,
        "meta": trace.other_meta,
        "reference": reference,
        "reference_label": query.reference_id or images.display_path(query.image_path or None) or "no reference image",
        "reference_path": images.display_path(query.image_path or None),
        "reference_caption": (captions.get(str(query.reference_id)) or [None])[0],
        "caption_stage": trace.stage("caption"),
        "edited": _edited(trace, images, base),
        "retrieval": retrieval,
        "retrieval_heading": retrieval_heading(trace),
        "retrieve_rows": _rows(retrieval.rows if retrieval is not None else [], images, targets, subset, captions),
        "rerank": rerank,
        "agreement": (rerank.output.agreement.model_dump(exclude_unset=True)
                      if rerank is not None and rerank.output.agreement is not None else None),
        "grids": grids,
        "final_rows": _rows(trace.result_rows, images, targets, subset, captions, trace.final_order_by),
        "final_order_note": order_note(trace.final_order_by, trace.result_rows),
        "same_as_retrieval": rerank is None and not trace.rounds and retrieval is not None
        and [r.id for r in trace.results] == [r.id for r in retrieval.rows],
        "ground_truth": [{"id": gt, "image": images.thumb_of_id(gt), "caption": (captions.get(gt) or [None])[0]}
                         for gt in view.ground_truth],
        "rank_chart": rank_chart(view.points) if view.ground_truth else None,
        "stages": [{"record": stage, "output": readable_output(stage)} for stage in trace.stages],
        "eval_facts": eval_facts,
        "random_encoder": trace.encoder is not None and trace.encoder.random_weights is True,
        "banner": RANDOM_ENCODER_BANNER,
    }


def _reference(trace: Trace, images: ReportImages) -> Any:
    """The reference image's thumbnail: its path in the trace, else its gallery id."""
    reference = images.thumb(trace.query.image_path or None)
    if reference.src is None and reference.note is None and trace.query.reference_id:
        reference = images.thumb_of_id(trace.query.reference_id)
    return reference


def index_row(view: QueryView, images: ReportImages) -> dict[str, Any]:
    trace = view.trace
    return {
        "view": view,
        "reference": _reference(trace, images),
        "reference_label": trace.query.reference_id or view.query_id,
        "text": trace.query.text,
        "description": (trace.target_descriptions or [""])[0],
        "manual": trace.description_source == "manual",
        "seconds": trace.totals.seconds,
        "model_calls": trace.totals.model_calls,
    }


COMMON = {"status_labels": STATUS_LABELS, "statuses": STATUSES, "banner": RANDOM_ENCODER_BANNER}

__all__ = ["COMMON", "ORDER_SCORE_NAMES", "RANDOM_ENCODER_BANNER", "environment", "format_number", "index_row",
           "order_note", "ordering_score", "query_context", "readable_output", "retrieval_heading"]
