"""Reading a run for the report and the demo: the run folder, the traces file, and each trace record.

``read_trace`` reads a record through the typed trace model (``agent_cir.trace.model``, schema 2.0 and 1.0)
and turns it into ``TraceData``, the plain dataclasses the rest of the report and the demo use. A record is
data from a file: it is read with ``salvage_trace``, so a field of the wrong type takes its empty value (and
is named in the report's notes) instead of hiding the rest of the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.index.images_root import images_dir_problem
from agent_cir.trace import model as tm


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
    ordered_by: str = "retrieval"
    """The score the final order follows (3.0 traces say; older ones: judge after a rerank, else retrieval)."""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """The verify -> refine loop, one entry per round, each with ``refine`` (the refine record that started it:
    previous description, findings, reasoning) when there was one."""
    record: dict[str, Any] = field(repr=False, default_factory=dict)
    """The record as read (the demo shows it as JSON)."""

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.stage == name), None)

    @property
    def has_results(self) -> bool:
        return "results" in self.record


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def as_id_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [str(value)]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [str(item) for item in value]
    return []


def _rows(rows: list[tm.RankedItem], sort_by_rank: bool = False) -> list[Row]:
    read = [Row(row.rank or position, row.id, row.score, row.path or None)
            for position, row in enumerate(rows, start=1)]
    if sort_by_rank:
        read.sort(key=lambda r: r.rank)
    return read


def _call(call: tm.ModelCallRecord) -> Call:
    return Call(call.backend, call.model, call.prompt_name, call.prompt_hash, call.raw, call.cache, call.seconds,
                call.parse_status or "", call.prompt or "", call.usage)


def _stage(record: tm._StageRecordBase) -> Stage:
    output = getattr(record, "output", None)
    return Stage(
        stage=record.stage or "?",
        skipped=record.skipped or None,
        seconds=record.seconds,
        model_calls=record.model_calls,
        cache_hits=record.cache_hits,
        parse_status=record.parse_status,
        notes=list(record.notes),
        calls=[_call(c) for c in record.calls],
        output=output.model_dump(exclude_unset=True) if isinstance(output, tm.BaseModel) else dict(output or {}),
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


def _grid_cells(cells: Mapping[str, str]) -> list[tuple[str, str]]:
    def order(item: tuple[str, str]) -> int:
        return int(item[0]) if item[0].isdigit() else 0

    return sorted(cells.items(), key=order)


def _retrieval(record: tm.RetrieveRecord | None) -> Retrieval | None:
    if record is None or record.skipped:
        return None
    output = record.output
    rows = _rows(output.candidates, sort_by_rank=True)
    return Retrieval(mode=output.mode or "?", k=output.k, ranked=output.candidates_total or len(rows), rows=rows,
                     query_texts=list(output.query_texts))


def _rerank(record: tm.RerankRecord | None, calls: list[Call]) -> Rerank | None:
    if record is None:
        return None
    output = record.output
    grids = [Grid(g.path or None, _grid_cells(g.cells)) for g in output.grids]
    agreement = output.agreement.model_dump(exclude_unset=True) if output.agreement is not None else None
    return Rerank(skipped=record.skipped or None, parse_status=record.parse_status, grids=grids,
                  repairs=repair_lines(output.repairs), calls=calls, input_order=list(output.input_order),
                  passes=output.passes, agreement=agreement)


def _eval(value: tm.EvalRecord | None) -> EvalRecord | None:
    if value is None:
        return None
    return EvalRecord(value.dataset or "", value.split or "", value.target_rank, value.ranked, value.kept_top)


def encoder_identity(value: Any) -> EncoderIdentity | None:
    """The trace's (or an index's) encoder object: {backend, model, pretrained, preprocess, random_weights}."""
    if isinstance(value, tm.EncoderRecord):
        value = value.model_dump()
    if not isinstance(value, dict):
        return None
    return EncoderIdentity(_text(value.get("backend")), _text(value.get("model") or value.get("architecture")),
                           _text(value.get("pretrained")), value.get("random_weights") is True)


def read_trace(record: Mapping[str, Any], notes: list[str] | None = None) -> TraceData:
    """One trace record (a dict as read from traces.jsonl, or a partial trace of a running query) as
    ``TraceData``. Fields of the wrong type are dropped and named in ``notes`` when a list is given; raises
    ``TraceFormatError`` for a record that is not a trace (see ``agent_cir.trace.model.salvage_trace``)."""
    record = dict(record)
    # A running query's partial trace (the demo) has no query_id yet.
    trace, dropped = tm.salvage_trace(record if "query_id" in record else {**record, "query_id": ""})
    if notes is not None:
        notes.extend(dropped)
    meta = trace.query.meta
    stages = [_stage(s) for s in trace.stages]
    rerank = trace.stage("rerank")
    return TraceData(
        query_id=trace.query_id,
        schema_version=trace.schema_version if "schema_version" in record else "",
        text=trace.query.text,
        image_path=trace.query.image_path or None,
        reference_id=trace.query.reference_id or None,
        target_text=trace.query.target_text or None,
        meta={k: v for k, v in meta.items() if k not in ("ground_truth", "subset")},
        ground_truth=as_id_list(meta.get("ground_truth")),
        subset=as_id_list(meta.get("subset")),
        captions=list(trace.captions),
        reasoning=trace.reasoning or "",
        descriptions=list(trace.target_descriptions),
        description_source=trace.description_source or "",
        stages=stages,
        retrieval=_retrieval(trace.stage("retrieve")),
        rerank=_rerank(rerank, next((s.calls for s in stages if s.stage == "rerank"), [])),
        results=_rows(trace.results),
        totals=trace.totals.model_dump(exclude_unset=True),
        artifacts_dir=trace.artifacts_dir or None,
        error=trace.extra("error"),
        eval=_eval(trace.eval),
        encoder=encoder_identity(trace.encoder),
        ordered_by=trace.ordered_by or ("judge" if rerank is not None and not rerank.skipped else "retrieval"),
        rounds=_rounds(trace),
        record=record,
    )


def _rounds(trace: tm.Trace) -> list[dict[str, Any]]:
    refines = {record.round: record.output.model_dump() for record in trace.stages_named("refine")}
    rounds = []
    for entry in trace.rounds:
        row = entry.model_dump()
        row["head_confidences"] = list(zip(row.get("head") or [], row.get("confidences") or []))
        row["refine"] = refines.get(entry.round)
        rounds.append(row)
    return rounds


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


def _read_records_tolerantly(path: Path, notes: list[str]) -> list[Any]:
    """Every JSON line of ``path``; a line that is not UTF-8 (a torn multi-byte character, a stray byte) or
    not JSON (a torn last line) is skipped with a note naming its line number, instead of refusing the file."""
    records: list[Any] = []
    undecodable: list[int] = []
    broken: list[int] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                undecodable.append(number)
                continue
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                broken.append(number)
    if undecodable:
        notes.append(f"{len(undecodable)} line(s) of {path.name} are not valid UTF-8 and were skipped (line "
                     + ", ".join(map(str, undecodable[:10])) + ("..." if len(undecodable) > 10 else "") + ")")
    if broken:
        notes.append(f"{len(broken)} line(s) of {path.name} are not complete JSON and were skipped (line "
                     + ", ".join(map(str, broken[:10])) + ("..." if len(broken) > 10 else "") + ")")
    return records


def load_traces(path: Path) -> tuple[list[TraceData], list[str]]:
    """Records in file order; a query id seen twice (a resumed run) keeps its last record. Returns notes too."""
    by_id: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    skipped = 0
    repeated: list[str] = []
    unreadable: list[str] = []
    try:
        records = _read_records_tolerantly(path, notes)
    except OSError as err:
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
    if repeated:
        notes.append(f"{len(repeated)} query id(s) appear more than once in {path.name} (e.g. "
                     f"{', '.join(repeated[:5])}); the last record of each is shown")
    traces: list[TraceData] = []
    dropped: list[str] = []
    for record in by_id.values():
        try:
            traces.append(read_trace(record, dropped))
        except tm.TraceFormatError as err:
            unreadable.append(str(err))
    if skipped:
        notes.append(f"{skipped} line(s) of {path.name} are not trace records (no query_id) and were skipped")
    if unreadable:
        notes.append(f"{len(unreadable)} record(s) of {path.name} cannot be read and were skipped: "
                     + "; ".join(unreadable[:3]))
    if dropped:
        notes.append(f"{len(dropped)} field(s) of the wrong type were left out: " + "; ".join(dropped[:5]))
    return traces, notes


def _index_images_dir(folder: Path) -> Path | None:
    """An index folder's images folder (``images_dir`` of its meta.json), or None when it is not an index.

    meta.json sits in the generation ``CURRENT`` names (``gen-<id>/meta.json``), or directly in the folder
    for an index written before generations existed."""
    candidates = []
    try:
        pointer = json.loads((folder / "CURRENT").read_text(encoding="utf-8"))
        generation = pointer.get("generation") if isinstance(pointer, dict) else None
        # the name must be one plain folder name: a forged pointer cannot lead the report elsewhere
        if isinstance(generation, str) and generation.startswith("gen-") and "/" not in generation \
                and "\\" not in generation and ".." not in generation:
            candidates.append(folder / generation / "meta.json")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    candidates.append(folder / "meta.json")
    for path in candidates:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        images_dir = meta.get("images_dir") if isinstance(meta, dict) else None
        if isinstance(images_dir, str) and images_dir and images_dir_problem(images_dir) is None:
            return Path(images_dir)
    return None


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
        if info.get("name") == "quickstart":  # the quickstart keeps run/ and index/ side by side
            beside = run.run_dir.parent / "index"
            if beside.is_dir():
                index_dirs.extend(sorted(p for p in beside.iterdir() if p.is_dir()))
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
