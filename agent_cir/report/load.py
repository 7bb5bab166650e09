"""Reading a run for the report and the demo: the run folder, the traces file, and each trace record.

This is the one module that reads trace dicts (``agent_cir/trace.py`` schema 1.0). ``read_trace`` turns a
record into ``TraceData`` — plain dataclasses the rest of the report and the demo use — so a typed trace
model replaces the dict access here and nowhere else. A record is data from a file: every field is read
defensively (a wrong type becomes the field's empty value), never trusted to have the documented shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.trace import read_traces
from agent_cir.types import TRACE_SCHEMA_VERSION


class ReportError(AgentCirError, ValueError):
    """The report's source or output folder is unusable, or the source holds no readable trace records."""


# ------------------------------------------------------------------------------------------ the record


@dataclass
class Row:
    """One ranked item: a retrieval candidate or a final result."""

    rank: int
    id: str
    score: float | None
    path: str | None


@dataclass
class Call:
    backend: str
    model: str
    prompt_name: str
    prompt_hash: str
    raw: str
    cache: str
    seconds: float
    parse_status: str
    prompt: str
    usage: Any


@dataclass
class Stage:
    stage: str
    skipped: str | None
    seconds: float
    model_calls: int
    cache_hits: int
    parse_status: str
    notes: list[str]
    calls: list[Call]
    output: dict[str, Any]


@dataclass
class Grid:
    path: str | None
    cells: list[tuple[str, str]]
    """(cell number, gallery id) in cell order."""


@dataclass
class Retrieval:
    mode: str
    k: int | None
    """How many items the stage was asked to rank (the whole gallery in benchmark runs)."""
    ranked: int
    """How many it ranked (``candidates_total`` when the trace was trimmed, else the rows kept)."""
    rows: list[Row]
    """The rows the trace kept, best first."""
    query_texts: list[str]


@dataclass
class Rerank:
    skipped: str | None
    parse_status: str
    grids: list[Grid]
    repairs: list[str]
    calls: list[Call]
    input_order: list[str]
    passes: Any
    agreement: Any


@dataclass
class EvalRecord:
    """The benchmark runner's entry: the official rank of the target under the dataset's convention."""

    dataset: str
    split: str
    target_rank: int | None
    ranked: int | None
    kept_top: int | None


@dataclass
class EncoderIdentity:
    backend: str
    model: str
    pretrained: str
    random_weights: bool


@dataclass
class TraceData:
    query_id: str
    schema_version: str
    text: str
    image_path: str | None
    reference_id: str | None
    target_text: str | None
    meta: dict[str, Any]
    """Query meta without ground_truth and subset (those are fields of their own)."""
    ground_truth: list[str]
    subset: list[str]
    captions: list[str]
    reasoning: str
    descriptions: list[str]
    description_source: str
    stages: list[Stage]
    retrieval: Retrieval | None
    rerank: Rerank | None
    results: list[Row]
    totals: dict[str, Any]
    artifacts_dir: str | None
    error: Any
    eval: EvalRecord | None
    encoder: EncoderIdentity | None
    record: dict[str, Any] = field(repr=False, default_factory=dict)
    """The record as read (the demo shows it as JSON)."""

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.stage == name), None)

    @property
    def has_results(self) -> bool:
        return "results" in self.record


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def as_id_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [str(value)]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [str(item) for item in value]
    return []


def _rows(value: Any, sort_by_rank: bool = False) -> list[Row]:
    rows = []
    for position, row in enumerate(_list(value), start=1):
        row = _dict(row)
        if row.get("id") is None:
            continue
        rows.append(Row(_int(row.get("rank")) or position, str(row["id"]), _float(row.get("score")),
                        _optional_text(row.get("path"))))
    if sort_by_rank:
        rows.sort(key=lambda r: r.rank)
    return rows


def _call(value: Any) -> Call:
    call = _dict(value)
    return Call(_text(call.get("backend")), _text(call.get("model")), _text(call.get("prompt_name")),
                _text(call.get("prompt_hash")), _text(call.get("raw")), _text(call.get("cache")),
                _float(call.get("seconds")) or 0.0, _text(call.get("parse_status")), _text(call.get("prompt")),
                call.get("usage"))


def _stage(value: Any) -> Stage:
    record = _dict(value)
    skipped = record.get("skipped")
    return Stage(
        stage=_text(record.get("stage")) or "?",
        skipped=str(skipped) if skipped else None,
        seconds=_float(record.get("seconds")) or 0.0,
        model_calls=_int(record.get("model_calls")) or 0,
        cache_hits=_int(record.get("cache_hits")) or 0,
        parse_status=_text(record.get("parse_status")),
        notes=[str(n) for n in _list(record.get("notes"))],
        calls=[_call(c) for c in _list(record.get("calls"))],
        output=_dict(record.get("output")),
    )


def repair_lines(repairs: Any) -> list[str]:
    """The rerank stage's repairs as readable lines; entries that repaired nothing are left out.

    Entries are dicts per judge call (``{"window", "pass" or "item", "repairs": [...], details}``) or plain
    strings; both are accepted so that older traces still render.
    """
    lines: list[str] = []
    for entry in _list(repairs):
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        done = _list(entry.get("repairs"))
        if not done:
            continue
        where = ", ".join(f"{key} {entry[key]}" for key in ("window", "pass", "item") if key in entry)
        details = "; ".join(f"{key}: {entry[key]}" for key in ("out_of_range", "duplicates", "not_numbers", "appended")
                            if entry.get(key))
        lines.append(f"{where}: {', '.join(map(str, done))}" + (f" ({details})" if details else ""))
    return lines


def _grid_cells(cells: Any) -> list[tuple[str, str]]:
    def order(item: tuple[Any, Any]) -> int:
        return int(item[0]) if str(item[0]).isdigit() else 0

    return [(str(cell), str(item)) for cell, item in sorted(_dict(cells).items(), key=order)]


def _retrieval(stage: Stage | None) -> Retrieval | None:
    if stage is None:
        return None
    output = stage.output
    rows = _rows(output.get("candidates"), sort_by_rank=True)
    return Retrieval(mode=_text(output.get("mode")) or "?", k=_int(output.get("k")),
                     ranked=_int(output.get("candidates_total")) or len(rows), rows=rows,
                     query_texts=[str(t) for t in _list(output.get("query_texts"))])


def _rerank(stage: Stage | None) -> Rerank | None:
    if stage is None:
        return None
    output = stage.output
    grids = [Grid(_optional_text(_dict(g).get("path")), _grid_cells(_dict(g).get("cells")))
             for g in _list(output.get("grids"))]
    return Rerank(skipped=stage.skipped, parse_status=stage.parse_status, grids=grids,
                  repairs=repair_lines(output.get("repairs")), calls=stage.calls,
                  input_order=[str(i) for i in _list(output.get("input_order"))],
                  passes=output.get("passes"), agreement=output.get("agreement"))


def _eval(value: Any) -> EvalRecord | None:
    if not isinstance(value, dict):
        return None
    return EvalRecord(_text(value.get("dataset")), _text(value.get("split")), _int(value.get("target_rank")),
                      _int(value.get("ranked")), _int(value.get("kept_top")))


def encoder_identity(value: Any) -> EncoderIdentity | None:
    """The trace's (or an index's) encoder object: {backend, model, pretrained, preprocess, random_weights}."""
    if not isinstance(value, dict):
        return None
    return EncoderIdentity(_text(value.get("backend")), _text(value.get("model")), _text(value.get("pretrained")),
                           value.get("random_weights") is True)


def read_trace(record: Mapping[str, Any]) -> TraceData:
    """One trace record (a dict as read from traces.jsonl) as ``TraceData``."""
    record = dict(record)
    query = _dict(record.get("query"))
    meta = _dict(query.get("meta"))
    stages = [_stage(s) for s in _list(record.get("stages"))]

    def find(name: str) -> Stage | None:
        return next((s for s in stages if s.stage == name), None)

    retrieve = find("retrieve")
    return TraceData(
        query_id=str(record.get("query_id")),
        schema_version=_text(record.get("schema_version")),
        text=_text(query.get("text")),
        image_path=_optional_text(query.get("image_path")),
        reference_id=_optional_text(query.get("reference_id")),
        target_text=_optional_text(query.get("target_text")),
        meta={k: v for k, v in meta.items() if k not in ("ground_truth", "subset")},
        ground_truth=as_id_list(meta.get("ground_truth")),
        subset=as_id_list(meta.get("subset")),
        captions=[str(c) for c in _list(record.get("captions"))],
        reasoning=_text(record.get("reasoning")),
        descriptions=[str(d) for d in _list(record.get("target_descriptions"))],
        description_source=_text(record.get("description_source")),
        stages=stages,
        retrieval=_retrieval(retrieve) if retrieve is not None and not retrieve.skipped else None,
        rerank=_rerank(find("rerank")),
        results=_rows(record.get("results")),
        totals=_dict(record.get("totals")),
        artifacts_dir=_optional_text(record.get("artifacts_dir")),
        error=record.get("error"),
        eval=_eval(record.get("eval")),
        encoder=encoder_identity(record.get("encoder")),
        record=record,
    )


# --------------------------------------------------------------------------------------- the run folder


@dataclass
class RunSource:
    traces_path: Path
    run_dir: Path | None
    metrics: dict[str, Any] | None
    run_info: dict[str, Any] | None

    @property
    def label(self) -> str:
        """What the report calls the run: its name, else the folder's or file's name (never a full path)."""
        name = (self.run_info or {}).get("name")
        return str(name) if name else (self.run_dir.name if self.run_dir else self.traces_path.name)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not readable JSON ({err}); fix or remove the file and re-run the report") from err
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


def load_traces(path: Path) -> tuple[list[TraceData], list[str]]:
    """Records in file order; a query id seen twice (a resumed run) keeps its last record. Returns notes too."""
    by_id: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    skipped = 0
    repeated: list[str] = []
    other_schema: dict[str, list[str]] = {}
    try:
        records = list(read_traces(path))
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot be read ({err}); give a readable traces.jsonl") from err
    for record in records:
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
    return [read_trace(record) for record in by_id.values()], notes


def _index_images_dir(folder: Path) -> Path | None:
    """An index folder's images folder (its meta.json ``images_dir``), or None when it is not an index."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    images_dir = meta.get("images_dir") if isinstance(meta, dict) else None
    return Path(images_dir) if isinstance(images_dir, str) and images_dir else None


def gallery_roots(run: RunSource, extra: Iterable[str | Path] = ()) -> list[Path]:
    """Folders whose images the report may show, as recorded by the run itself or named by the user.

    Recorded by an eval run: run.json's ``images_root`` (and ``images_dir``), the images folder of every
    index it used (``index_dir`` in run.json, ``run/index/*``) and its ``artifacts`` folder (grids). Beside
    a traces file: ``<stem>_artifacts`` (where ``agent-cir search --trace`` writes grids). ``extra`` (the
    CLI's ``--gallery``) adds folders; an index folder stands for its images folder. Paths that traces
    name are never roots by themselves: a trace is data and may point anywhere.
    """
    roots: list[Path] = []
    info = run.run_info or {}
    for key in ("images_root", "images_dir"):
        if isinstance(info.get(key), str) and info[key]:
            roots.append(Path(info[key]))
    index_dirs: list[Path] = []
    if isinstance(info.get("index_dir"), str) and info["index_dir"]:
        index_dirs.append(Path(info["index_dir"]))
    if run.run_dir is not None:
        roots.append(run.run_dir / "artifacts")
        index_root = run.run_dir / "index"
        if index_root.is_dir():
            index_dirs.extend(sorted(p for p in index_root.iterdir() if p.is_dir()))
    roots.append(run.traces_path.parent / f"{run.traces_path.stem}_artifacts")
    for folder in extra:
        folder = Path(folder).expanduser()
        images_dir = _index_images_dir(folder)
        roots.append(images_dir if images_dir is not None else folder)
    for index_dir in index_dirs:
        images_dir = _index_images_dir(index_dir)
        if images_dir is not None:
            roots.append(images_dir)
    unique: list[Path] = []
    for root in roots:
        try:
            resolved = root.expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if resolved not in unique:
            unique.append(resolved)
    return unique


def gallery_captions_path(run: RunSource) -> str | None:
    """The gallery captions file a caption-only (surrogate) eval run names in its run.json."""
    entry = (run.run_info or {}).get("gallery_captions")
    path = entry.get("path") if isinstance(entry, dict) else None
    return str(path) if path else None


__all__ = [
    "Call", "EncoderIdentity", "EvalRecord", "Grid", "ReportError", "Rerank", "Retrieval", "Row", "RunSource",
    "Stage", "TraceData", "as_id_list", "encoder_identity", "gallery_captions_path", "gallery_roots",
    "load_traces", "read_trace", "repair_lines", "resolve_source",
]
