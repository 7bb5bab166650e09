"""Static HTML report of a run: an index of queries with their status and one page per query.

The report reads trace records (``agent_cir/trace.py`` schema) from a ``traces.jsonl`` file or an eval
run folder (``run.json``, ``metrics.json``, ``traces.jsonl``). It needs no server: pages link to
thumbnails written under ``out/thumbs`` and ``out/grids``; CSS and the few lines of filter script are
inline. Where an image is not available (caption-only runs, a moved file) a placeholder shows its id.

Query status, decided from the ground truth in ``trace["query"]["meta"]["ground_truth"]``:

- ``lost``: no ground-truth item is in the retrieval top-k;
- ``improved``: rerank moved the best-placed ground-truth item up;
- ``hurt``: rerank moved it down;
- ``hit``: it is in the retrieval top-k and rerank (if any) kept its rank;
- ``unknown``: the query has no ground truth.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from agent_cir.errors import AgentCirError
from agent_cir.report.thumbs import ThumbnailCache
from agent_cir.trace import read_traces
from agent_cir.types import TRACE_SCHEMA_VERSION

STATUSES = ("lost", "improved", "hurt", "hit", "unknown")
STATUS_LABELS = {
    "lost": "target lost at retrieval",
    "improved": "improved by rerank",
    "hurt": "hurt by rerank",
    "hit": "target in top-k, rank kept",
    "unknown": "no ground truth",
}
FILTERS = ("all",) + STATUSES
PAGE_SIZE = 100
THUMB_SIDE = 192
GRID_SIDE = 1024


class ReportError(AgentCirError, ValueError):
    """The report's source is missing or holds no readable trace records."""


@dataclass
class StagePoint:
    stage: str
    rank: int | None
    """1-based rank of the best-placed ground-truth item after this stage; None when it is not in the list."""
    depth: int
    """How many items the stage's ranking holds (its k)."""


@dataclass
class QueryView:
    """One trace plus what the report derives from it."""

    trace: dict[str, Any]
    number: int
    query_id: str
    page: str
    ground_truth: list[str]
    subset: list[str]
    status: str
    retrieve_rank: int | None
    final_rank: int | None
    reranked: bool
    points: list[StagePoint] = field(default_factory=list)

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]


@dataclass
class RunSource:
    traces_path: Path
    run_dir: Path | None
    metrics: dict[str, Any] | None
    run_info: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not readable JSON ({err}); fix or remove the file and re-run the report") from None
    return data if isinstance(data, dict) else {"value": data}


def resolve_source(source: str | Path) -> RunSource:
    """A traces.jsonl file, or an eval run folder holding traces.jsonl (+ metrics.json, run.json)."""
    path = Path(source).expanduser()
    if path.is_dir():
        traces = path / "traces.jsonl"
        if not traces.is_file():
            raise ReportError(
                f"{path} is a folder without traces.jsonl; give an eval run folder or the path of a traces file"
            )
        return RunSource(traces, path, _read_json(path / "metrics.json"), _read_json(path / "run.json"))
    if path.is_file():
        return RunSource(path, None, None, None)
    raise ReportError(f"{path}: no such file or folder; give a traces.jsonl file or an eval run folder")


def load_traces(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records in file order; a query id seen twice (a resumed run) keeps its last record. Returns notes too."""
    by_id: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    skipped = 0
    repeated: list[str] = []
    other_schema: dict[str, list[str]] = {}
    for record in read_traces(path):
        if not isinstance(record, dict) or "query_id" not in record:
            skipped += 1
            continue
        query_id = str(record["query_id"])
        if query_id in by_id:
            repeated.append(query_id)
            del by_id[query_id]  # re-insert so the order follows the kept record
        by_id[query_id] = record
        version = str(record.get("schema_version", ""))
        if version.split(".")[0] != TRACE_SCHEMA_VERSION.split(".")[0]:
            other_schema.setdefault(version, []).append(query_id)
    if repeated:
        notes.append(f"{len(repeated)} query id(s) appear more than once in {path.name} (e.g. "
                     f"{', '.join(repeated[:5])}); the last record of each is shown")
    for version, ids in other_schema.items():
        notes.append(f"{len(ids)} record(s) use trace schema {version!r} (e.g. {', '.join(ids[:5])}); this report "
                     f"reads {TRACE_SCHEMA_VERSION}, so some fields may be missing")
    if skipped:
        notes.append(f"{skipped} line(s) of {path.name} are not trace records (no query_id) and were skipped")
    return list(by_id.values()), notes


# --------------------------------------------------------------------------------------------- analysis


def _as_id_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [str(value)]
    if isinstance(value, Iterable):
        return [str(item) for item in value]
    return []


def stage_record(trace: dict[str, Any], name: str) -> dict[str, Any] | None:
    for record in trace.get("stages") or []:
        if record.get("stage") == name:
            return record
    return None


def _stage_ranking(trace: dict[str, Any], name: str) -> list[str] | None:
    """Ids in the order a stage left them; None when the stage did not run or made no ranking."""
    record = stage_record(trace, name)
    if record is None or record.get("skipped"):
        return None
    output = record.get("output") or {}
    if name == "retrieve":
        candidates = output.get("candidates")
        if candidates is None:
            return None
        ordered = sorted(candidates, key=lambda c: c.get("rank") or 0) if all("rank" in c for c in candidates) else candidates
        return [str(c.get("id")) for c in ordered]
    if name == "rerank":
        final = [str(r.get("id")) for r in trace.get("results") or []]
        return final or [str(i) for i in output.get("final_order") or []] or None
    return None


def _best_rank(ranking: list[str] | None, targets: set[str]) -> int | None:
    if not ranking or not targets:
        return None
    for position, item in enumerate(ranking, start=1):
        if item in targets:
            return position
    return None


def repair_lines(repairs: Any) -> list[str]:
    """The rerank stage's repairs as readable lines; entries that repaired nothing are left out.

    Entries are dicts per judge call (``{"window", "pass" or "item", "repairs": [...], details}``) or plain
    strings; both are accepted so that older traces still render.
    """
    lines: list[str] = []
    for entry in repairs or []:
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        done = entry.get("repairs") or []
        if not done:
            continue
        where = ", ".join(f"{key} {entry[key]}" for key in ("window", "pass", "item") if key in entry)
        details = "; ".join(f"{key}: {entry[key]}" for key in ("out_of_range", "duplicates", "not_numbers", "appended")
                            if entry.get(key))
        lines.append(f"{where}: {', '.join(map(str, done))}" + (f" ({details})" if details else ""))
    return lines


def page_name(query_id: str) -> str:
    """A file name safe on every file system, unique per id even when two ids slugify alike."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", query_id).strip("._")[:60] or "query"
    digest = hashlib.sha1(query_id.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}.html"


def analyse(trace: dict[str, Any], number: int = 0) -> QueryView:
    """Status and rank by stage of one trace (see the module docstring for the statuses)."""
    query_id = str(trace.get("query_id"))
    meta = (trace.get("query") or {}).get("meta") or {}
    ground_truth = _as_id_list(meta.get("ground_truth"))
    subset = _as_id_list(meta.get("subset"))
    targets = set(ground_truth)
    retrieve_list = _stage_ranking(trace, "retrieve")
    rerank_list = _stage_ranking(trace, "rerank")
    final_list = [str(r.get("id")) for r in trace.get("results") or []]
    if retrieve_list is None:
        retrieve_list = final_list
    retrieve_rank = _best_rank(retrieve_list, targets)
    final_rank = _best_rank(final_list, targets)
    reranked = rerank_list is not None
    points = [StagePoint("retrieve", retrieve_rank, len(retrieve_list))]
    if reranked:
        points.append(StagePoint("rerank", _best_rank(rerank_list, targets), len(rerank_list or [])))
    if not targets:
        status = "unknown"
    elif retrieve_rank is None:
        status = "lost"
    elif reranked and final_rank is not None and final_rank < retrieve_rank:
        status = "improved"
    elif reranked and (final_rank is None or final_rank > retrieve_rank):
        status = "hurt"
    else:
        status = "hit"
    return QueryView(trace, number, query_id, page_name(query_id), ground_truth, subset, status,
                     retrieve_rank, final_rank, reranked, points)


def stage_summary(traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage, in pipeline order: runs, skips, seconds, model calls, cache hits, parse statuses."""
    rows: dict[str, dict[str, Any]] = {}
    for trace in traces:
        for record in trace.get("stages") or []:
            name = str(record.get("stage"))
            row = rows.setdefault(name, {"stage": name, "ran": 0, "skipped": 0, "seconds": 0.0,
                                         "model_calls": 0, "cache_hits": 0, "parse": {}})
            if record.get("skipped"):
                row["skipped"] += 1
            else:
                row["ran"] += 1
            row["seconds"] += float(record.get("seconds") or 0.0)
            row["model_calls"] += int(record.get("model_calls") or 0)
            row["cache_hits"] += int(record.get("cache_hits") or 0)
            status = record.get("parse_status")
            if status and status != "not_applicable":
                row["parse"][status] = row["parse"].get(status, 0) + 1
    for row in rows.values():
        row["mean_seconds"] = row["seconds"] / row["ran"] if row["ran"] else 0.0
    return list(rows.values())


# ------------------------------------------------------------------------------------------------ chart


def rank_chart(points: list[StagePoint], width: int = 300, height: int = 150) -> dict[str, Any] | None:
    """Coordinates for the inline SVG: rank on a log scale (1 at the top), 'not in list' below the axis."""
    if not points:
        return None
    depth = max([p.depth for p in points] + [p.rank or 1 for p in points] + [2])
    left, right, top, plot_bottom = 70, 40, 18, height - 42
    missing_y = height - 16
    span = plot_bottom - top

    def y_of(rank: int | None) -> float:
        if rank is None:
            return missing_y
        return top + span * math.log(rank) / math.log(depth)

    step = (width - left - right) / max(1, len(points) - 1)
    drawn = []
    for index, point in enumerate(points):
        x = left + step * index if len(points) > 1 else (left + width - right) / 2
        drawn.append({"x": round(x, 1), "y": round(y_of(point.rank), 1), "stage": point.stage,
                      "label": f"#{point.rank}" if point.rank else f"> {point.depth}"})
    ticks = sorted({1, depth} | ({10} if depth > 20 else set()))
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top,
        "plot_bottom": plot_bottom, "missing_y": missing_y,
        "ticks": [{"y": round(y_of(t), 1), "label": str(t)} for t in ticks],
        "points": drawn,
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in drawn),
    }


# ---------------------------------------------------------------------------------------------- writing


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("agent_cir.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _format_number
    env.filters["pretty_json"] = lambda value: json.dumps(value, ensure_ascii=False, indent=2, default=str)
    env.tests["mapping"] = lambda value: isinstance(value, dict)
    return env


def _format_number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


class _Images:
    """Turns image paths from traces into report-relative thumbnail links (None: draw a placeholder)."""

    def __init__(self, out_dir: Path, source_dir: Path) -> None:
        self.thumbs = ThumbnailCache(out_dir, "thumbs", THUMB_SIDE)
        self.grids = ThumbnailCache(out_dir, "grids", GRID_SIDE)
        self.source_dir = source_dir
        self.id_paths: dict[str, str] = {}
        self.roots: list[Path] = []
        """Gallery folders seen in the run: an id is a path relative to one, so unseen ids can be found there."""

    def learn(self, traces: list[dict[str, Any]]) -> None:
        """Gallery id -> image path from every ranking in the run (retrieve outputs carry ids only)."""
        for trace in traces:
            for row in trace.get("results") or []:
                if row.get("path") and row.get("id") is not None:
                    self._remember(str(row["id"]), str(row["path"]))
            retrieve = stage_record(trace, "retrieve")
            for row in ((retrieve or {}).get("output") or {}).get("candidates") or []:
                if row.get("path") and row.get("id") is not None:
                    self._remember(str(row["id"]), str(row["path"]))

    def _remember(self, item_id: str, path: str) -> None:
        self.id_paths.setdefault(item_id, path)
        cut = len(path) - len(item_id)
        if path.endswith(item_id) and cut > 0 and path[cut - 1] in "/\\" and len(self.roots) < 8:
            root = Path(path[: len(path) - len(item_id)])
            if root not in self.roots:
                self.roots.append(root)

    def path_of_id(self, item_id: str) -> str | None:
        if item_id in self.id_paths:
            return self.id_paths[item_id]
        for root in self.roots:
            if (root / item_id).is_file():
                return str(root / item_id)
        return None

    def _locate(self, path: str | None, base: str | None = None) -> Path | None:
        if not path:
            return None
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            options = [candidate]
        else:  # relative paths: to the query's artifacts folder, then the traces file's folder, then here
            options = ([Path(base) / candidate] if base else []) + [self.source_dir / candidate, candidate]
        for option in options:
            if option.is_file():
                return option
        return None

    def thumb(self, path: str | None, base: str | None = None) -> str | None:
        return self.thumbs.get(self._locate(path, base))

    def thumb_of_id(self, item_id: str, path: str | None = None) -> str | None:
        return self.thumb(path or self.path_of_id(item_id))

    def grid(self, path: str | None, base: str | None = None) -> str | None:
        return self.grids.get(self._locate(path, base))


def _gallery_captions(run_info: dict[str, Any] | None, notes: list[str]) -> dict[str, list[str]]:
    """Gallery captions of a caption-only (surrogate) eval run, named in its run.json: shown in place of images."""
    entry = (run_info or {}).get("gallery_captions")
    path = entry.get("path") if isinstance(entry, dict) else None
    if not path:
        return {}
    from agent_cir.gallery import load_gallery_captions

    try:
        return load_gallery_captions(path)
    except (AgentCirError, OSError) as err:
        notes.append(f"gallery captions {path} could not be read ({err}); items show their ids only")
        return {}


def _candidate_rows(rows: list[dict[str, Any]], images: _Images, targets: set[str], subset: set[str],
                    captions: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    shown = []
    captions = captions or {}
    for position, row in enumerate(rows, start=1):
        item_id = str(row.get("id"))
        shown.append({
            "rank": row.get("rank") or position,
            "id": item_id,
            "score": row.get("score"),
            "thumb": images.thumb_of_id(item_id, row.get("path")),
            "is_target": item_id in targets,
            "in_subset": item_id in subset,
            "caption": (captions.get(item_id) or [None])[0],
        })
    return shown


def _query_context(view: QueryView, images: _Images, captions: dict[str, list[str]]) -> dict[str, Any]:
    trace = view.trace
    query = trace.get("query") or {}
    targets, subset = set(view.ground_truth), set(view.subset)
    artifacts = trace.get("artifacts_dir")
    retrieve = stage_record(trace, "retrieve")
    retrieve_out = (retrieve or {}).get("output") or {}
    retrieve_rows = sorted(retrieve_out.get("candidates") or [], key=lambda c: c.get("rank") or 0)
    rerank = stage_record(trace, "rerank")
    rerank_out = (rerank or {}).get("output") or {}
    grids = []
    for index, grid in enumerate(rerank_out.get("grids") or [], start=1):
        cells = grid.get("cells") or {}
        grids.append({
            "number": index,
            "image": images.grid(grid.get("path"), artifacts),
            "path": grid.get("path"),
            "cells": [{"cell": str(cell), "id": str(item), "is_target": str(item) in targets}
                      for cell, item in sorted(cells.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)],
        })
    meta = {k: v for k, v in (query.get("meta") or {}).items() if k not in ("ground_truth", "subset")}
    return {
        "view": view,
        "query": query,
        "meta": meta,
        "reference_thumb": images.thumb(query.get("image_path")) or (
            images.thumb_of_id(str(query["reference_id"])) if query.get("reference_id") else None),
        "reference_label": query.get("reference_id") or query.get("image_path") or "no reference image",
        "captions": trace.get("captions") or [],
        "caption_stage": stage_record(trace, "caption"),
        "reasoning": trace.get("reasoning"),
        "descriptions": trace.get("target_descriptions") or [],
        "description_source": trace.get("description_source"),
        "retrieve": retrieve,
        "retrieve_out": retrieve_out,
        "retrieve_rows": _candidate_rows(retrieve_rows, images, targets, subset, captions),
        "rerank": rerank,
        "rerank_out": rerank_out,
        "grids": grids,
        "repairs": repair_lines(rerank_out.get("repairs")),
        "final_rows": _candidate_rows(trace.get("results") or [], images, targets, subset, captions),
        "ground_truth": [{"id": gt, "thumb": images.thumb_of_id(gt), "caption": (captions.get(gt) or [None])[0]}
                         for gt in view.ground_truth],
        "reference_caption": (captions.get(str(query.get("reference_id"))) or [None])[0],
        "rank_chart": rank_chart(view.points) if view.ground_truth else None,
        "stages": trace.get("stages") or [],
        "totals": trace.get("totals") or {},
        "error": trace.get("error"),
        "eval": trace.get("eval") if isinstance(trace.get("eval"), dict) else None,
    }


def split_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """metrics.json -> the metric values (its ``metrics`` block when it has one), other facts, notes."""
    if not metrics:
        return {"scores": None, "facts": {}, "notes": []}
    values = metrics.get("metrics") if isinstance(metrics.get("metrics"), dict) else None
    facts: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in metrics.items():
        if key == "metrics" and values is not None:
            continue
        if isinstance(value, list):
            notes.extend(str(item) for item in value if key == "notes")
            if key != "notes" and value:
                facts[key] = ", ".join(map(str, value))
        elif isinstance(value, str) and key.endswith("note"):
            notes.append(value)
        elif value is not None:
            facts[key] = value
    if values is None:  # a flat metrics file: numbers are the metrics
        values = {k: v for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        facts = {k: v for k, v in facts.items() if k not in values}
    return {"scores": values, "facts": facts, "notes": notes}


def _index_row(view: QueryView, images: _Images) -> dict[str, Any]:
    query = view.trace.get("query") or {}
    totals = view.trace.get("totals") or {}
    descriptions = view.trace.get("target_descriptions") or [""]
    return {
        "view": view,
        "thumb": images.thumb(query.get("image_path")),
        "reference_label": query.get("reference_id") or view.query_id,
        "text": query.get("text") or "",
        "description": descriptions[0] or "",
        "manual": view.trace.get("description_source") == "manual",
        "seconds": totals.get("seconds", 0.0),
        "model_calls": totals.get("model_calls", 0),
    }


def build_report(
    source: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    filter: str = "all",  # noqa: A002 - the CLI option's name
    page_size: int = PAGE_SIZE,
) -> Path:
    """Write the HTML report of ``source`` (traces.jsonl or eval run folder) into ``out_dir``; return index.html.

    ``filter`` keeps only queries of one status (lost, improved, hurt, hit, unknown; ``all`` keeps every
    query); ``limit`` keeps the first N of those. The index paginates ``page_size`` queries per page.
    Besides the HTML, ``summary.json`` lists each query's status and ranks for scripts.
    """
    if filter not in FILTERS:
        raise ReportError(f"unknown filter {filter!r}; choose one of: {', '.join(FILTERS)}")
    if limit is not None and limit < 1:
        raise ReportError(f"--limit must be at least 1, got {limit}")
    if page_size < 1:
        raise ReportError(f"page_size must be at least 1, got {page_size}")
    run = resolve_source(source)
    traces, notes = load_traces(run.traces_path)
    if not traces:
        raise ReportError(f"{run.traces_path} holds no trace records; run a search or an eval first")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(exist_ok=True)

    all_views = [analyse(trace, number) for number, trace in enumerate(traces, start=1)]
    counts = {status: sum(1 for v in all_views if v.status == status) for status in STATUSES}
    views = [v for v in all_views if filter == "all" or v.status == filter]
    if limit is not None:
        views = views[:limit]

    images = _Images(out, run.traces_path.parent)
    images.learn(traces)
    captions = _gallery_captions(run.run_info, notes)
    env = _environment()
    pages = max(1, math.ceil(len(views) / page_size))
    index_names = ["index.html"] + [f"index-{n}.html" for n in range(2, pages + 1)]
    common = {"status_labels": STATUS_LABELS, "statuses": STATUSES}

    query_template = env.get_template("query.html.j2")
    for position, view in enumerate(views):
        context = _query_context(view, images, captions)
        context.update(common)
        context["index_page"] = index_names[position // page_size]
        context["previous"] = views[position - 1].page if position > 0 else None
        context["next"] = views[position + 1].page if position + 1 < len(views) else None
        (out / "queries" / view.page).write_text(query_template.render(**context), encoding="utf-8")

    index_template = env.get_template("index.html.j2")
    rows = [_index_row(v, images) for v in views]
    for page_number, name in enumerate(index_names, start=1):
        chunk = rows[(page_number - 1) * page_size: page_number * page_size]
        (out / name).write_text(index_template.render(
            **common,
            title=(run.run_info or {}).get("name") or (run.run_dir.name if run.run_dir else run.traces_path.name),
            source=str(run.run_dir or run.traces_path),
            run_info={k: v for k, v in (run.run_info or {}).items() if not isinstance(v, (dict, list))},
            metrics=split_metrics(run.metrics),
            stages=stage_summary(traces),
            total_queries=len(all_views),
            shown_queries=len(views),
            counts=counts,
            filter=filter,
            rows=chunk,
            page_number=page_number,
            index_names=index_names,
            notes=notes + [f"{path}: {why}" for path, why in images.thumbs.failed.items()],
        ), encoding="utf-8")

    summary = {
        "source": str(run.run_dir or run.traces_path),
        "filter": filter,
        "counts": counts,
        "index_pages": index_names,
        "thumbnails": {"generated": images.thumbs.generated + images.grids.generated,
                       "reused": images.thumbs.reused + images.grids.reused},
        "queries": [{"id": v.query_id, "status": v.status, "retrieve_rank": v.retrieve_rank,
                     "final_rank": v.final_rank, "page": f"queries/{v.page}",
                     "index_page": index_names[i // page_size]} for i, v in enumerate(views)],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    _remove_stale_pages(out, set(index_names), {v.page for v in views})
    return out / "index.html"


def _remove_stale_pages(out: Path, index_pages: set[str], query_pages: set[str]) -> None:
    """A re-run with fewer queries must not leave old pages behind (thumbnails are kept: they are a cache)."""
    for page in out.glob("index-*.html"):
        if page.name not in index_pages and re.fullmatch(r"index-\d+\.html", page.name):
            page.unlink()
    for page in (out / "queries").glob("*.html"):
        if page.name not in query_pages:
            page.unlink()


__all__ = ["FILTERS", "STATUSES", "QueryView", "ReportError", "analyse", "build_report", "rank_chart"]
