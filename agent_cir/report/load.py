"""Reading a run for the report: the run folder (traces file, metrics, run.json), the folders whose images it may
show, and its traces as ``agent_cir.trace.model.Trace`` models. A record is data from a file: it is read with
the trace reader's salvage mode, so a field of the wrong type takes its empty value (and is named in the
report's notes) instead of hiding the rest of the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.index.images_root import images_dir_problem
from agent_cir.trace.io import read_typed_traces
from agent_cir.trace.model import Trace


class ReportError(AgentCirError, ValueError):
    """The report's source or output folder is unusable, or the source holds no readable trace records."""


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


def load_traces(path: Path) -> tuple[list[Trace], list[str]]:
    """The file's traces, read for display (``read_typed_traces(salvage=True)``: what cannot be read is left out
    and said in the notes), in file order; a query id seen twice (a resumed run) keeps its last record."""
    by_id: dict[str, Trace] = {}
    notes: list[str] = []
    repeated: list[str] = []
    try:
        for trace in read_typed_traces(path, salvage=True, notes=notes):
            if trace.query_id in by_id:
                repeated.append(trace.query_id)
                del by_id[trace.query_id]  # re-insert so the order follows the kept record
            by_id[trace.query_id] = trace
    except OSError as err:
        raise ReportError(f"{path}: cannot be read ({err}); give a readable traces.jsonl") from err
    if repeated:
        notes.append(f"{len(repeated)} query id(s) appear more than once in {path.name} (e.g. "
                     f"{', '.join(repeated[:5])}); the last record of each is shown")
    return list(by_id.values()), notes


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


__all__ = ["ReportError", "RunSource", "gallery_captions_path", "gallery_roots", "load_traces", "resolve_source"]
