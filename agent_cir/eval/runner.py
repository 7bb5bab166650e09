"""Resumable benchmark runs: ``run_eval(...)`` -> ``out_dir/{run.json, traces.jsonl, metrics.json, submissions}``.

- ``traces.jsonl``: one trace per finished query (``agent_cir.trace`` schema) plus an ``eval`` entry
  ``{ranking, kept_top, ranked, target_rank, dataset, split, category}``. The ranking kept is the top
  ``KEEP_TOP`` ids plus, further down, every image a restricted metric needs (CIRR subset members, the GeneCIS
  query gallery), in rank order, so every metric and submission is exact without storing whole-gallery
  rankings. Stage outputs are trimmed the same way (the retrieve stage output says how many it ranked).
- Resume: rerun with the same ``out_dir``; queries whose trace is in ``traces.jsonl`` are skipped, a torn
  last line (a killed writer) is cut off first. Another recipe (hash of the effective recipe) or another
  dataset/split/gallery into the same folder is refused.
- Dataset conventions are applied as recipe overrides (recorded in ``run.json``): CIRR and GeneCIS rank
  the whole gallery (needed by the subset / per-query-gallery metrics), CIRR removes the reference,
  FashionIQ and GeneCIS do not; every dataset keeps at least the top 50.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.config import Recipe, deep_merge, load_recipe, recipe_from_dict
from agent_cir.errors import AgentCirError
from agent_cir.eval import metrics as M
from agent_cir.eval import submission as S
from agent_cir.eval.datasets import BenchmarkSplit, load_benchmark
from agent_cir.eval.datasets import circo as circo_data
from agent_cir.eval.datasets import cirr as cirr_data
from agent_cir.hashing import content_hash
from agent_cir.trace import TraceWriter, read_traces
from agent_cir.types import Query, Result

KEEP_TOP = 50
"""Ranked ids kept per query: the largest K any metric or submission uses (mAP@50, R@50, 50-id submissions)."""

SURROGATE_NOTE = (
    "CIRR text surrogate: gallery images are represented by their MLLM captions and the reference by its "
    "caption; these numbers measure the text part of the pipeline and are NOT comparable with image-based results"
)
PACKAGES = (
    "agent-cir", "numpy", "torch", "open_clip_torch", "transformers", "sentence-transformers", "faiss-cpu",
    "langchain-core", "langchain-openai", "langchain-ollama", "langchain-huggingface", "pillow", "pydantic",
)


class RunMismatchError(AgentCirError):
    """The output folder holds a run of another recipe or dataset; resuming into it would mix results."""


class EvalInputError(AgentCirError):
    """The evaluation cannot start as asked (no images and no captions, unknown query ids, ...)."""


@dataclasses.dataclass
class EvalOutcome:
    out_dir: Path
    metrics: dict[str, Any]
    run: dict[str, Any]


# ---------- small helpers ----------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_query_ids(path: str | Path) -> list[str]:
    """One query id per line; blank lines and ``#`` comments are ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalInputError(f"query id file {path} not found")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line)
    return ids


def repair_torn_tail(path: Path) -> bool:
    """Cut a last line that lacks its newline (a writer killed mid-line), so appends start on a clean line.
    Returns True when something was cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        data_end = handle.seek(0, os.SEEK_END)
        chunk = 1 << 16
        position = data_end
        cut = 0
        while position > 0:
            start = max(0, position - chunk)
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            position = start
        handle.truncate(cut)
    return True


def annotation_candidates(
    annotations: str | Path | None, images_root: str | Path | None, gallery_captions: str | Path | None
) -> list[Path]:
    """Where to look for the official annotation files, in order: --annotations, $AGENT_CIR_BENCHMARKS,
    the image root, and the folders around the gallery captions file (benchmarks are often kept together)."""
    found: list[Path] = []
    for value in (annotations, os.environ.get("AGENT_CIR_BENCHMARKS"), images_root):
        if value:
            found.append(Path(value).expanduser())
    if gallery_captions:
        captions_dir = Path(gallery_captions).expanduser().resolve().parent
        found.extend([captions_dir, captions_dir.parent])
    return found


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state() -> dict[str, Any] | None:
    """Commit of the source checkout agent_cir runs from (None for an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def prompt_hashes(recipe: Recipe) -> dict[str, dict[str, str]]:
    from agent_cir.prompts import load_prompt

    hashes = {}
    for stage in ("caption", "rewrite", "one_stage", "rerank"):
        config = getattr(recipe, stage)
        if config.enabled:
            template = load_prompt(config.prompt)
            hashes[stage] = {"name": template.name, "hash": template.hash}
    return hashes


def _models_used(recipe: Recipe) -> dict[str, dict[str, Any]]:
    used = {}
    for stage in ("caption", "rewrite", "one_stage", "rerank"):
        config = getattr(recipe, stage)
        if config.enabled:
            model = recipe.models[config.model]
            used[config.model] = {
                "spec": model.spec, "base_url": model.base_url, "gguf_file": model.gguf_file,
                "quantization": model.quantization, "temperature": model.temperature, "seed": model.seed,
            }
    return used


# ---------- dataset conventions ----------
def dataset_overrides(dataset: str, recipe: Recipe, splits: Sequence[BenchmarkSplit]) -> dict[str, Any]:
    """Recipe changes a dataset's official protocol needs (recorded in run.json)."""
    k = max(recipe.retrieve.k, KEEP_TOP)
    retrieve: dict[str, Any] = {}
    if dataset == "cirr":
        # Recall_subset ranks a handful of images inside the full ranking: rank the whole gallery.
        # (GeneCIS needs nothing here: each query is restricted to its own gallery by Query.candidate_ids.)
        k = max(k, *(len(split.gallery_ids or []) for split in splits))
    if dataset == "cirr":
        retrieve["exclude_reference"] = True
    elif dataset in ("fashioniq", "genecis"):
        retrieve["exclude_reference"] = False
    if k != recipe.retrieve.k:
        retrieve["k"] = k
    return {"retrieve": retrieve} if retrieve else {}


def _restricted_members(dataset: str, query: Query) -> set[str]:
    if dataset == "cirr":
        return {str(m) for m in query.meta.get("subset", [])}
    if dataset == "genecis":
        return {str(m) for m in query.meta.get("gallery", [])}
    return set()


def eval_record(split: BenchmarkSplit, query: Query, ranked_ids: Sequence[str]) -> dict[str, Any]:
    """The part of a trace the metrics read: a ranking exact for every metric of the dataset."""
    full = [str(i) for i in ranked_ids]
    if split.dataset == "cirr":
        full = [i for i in full if i != query.reference_id]  # the convention removes it; keep 50 real ones
    members = _restricted_members(split.dataset, query)
    ranking = [item for position, item in enumerate(full) if position < KEEP_TOP or item in members]
    return {
        "dataset": split.dataset,
        "split": split.split,
        "category": split.category,
        "ranking": ranking,
        "kept_top": KEEP_TOP,
        "ranked": len(full),
        "target_rank": M.target_rank(split.dataset, full, query.meta, query.reference_id),
    }


def trim_trace(trace: dict[str, Any], keep: int) -> dict[str, Any]:
    """Whole-gallery rankings would make traces huge: keep the top ``keep`` in results and stage outputs."""
    if len(trace.get("results", [])) > keep:
        trace["results"] = trace["results"][:keep]
    for stage in trace.get("stages", []):
        output = stage.get("output") or {}
        candidates = output.get("candidates")
        if isinstance(candidates, list) and len(candidates) > keep:
            output["candidates_total"] = len(candidates)
            output["candidates"] = candidates[:keep]
    return trace


# ---------- galleries ----------
def _caption_gallery(split: BenchmarkSplit, table: Mapping[str, list[str]], encoder: Any):
    from agent_cir.gallery import RetrievalGallery

    ids = list(split.gallery_ids or [])
    covered = sum(1 for i in ids if i in table)
    if covered < max(1, len(ids) // 2):
        raise EvalInputError(
            f"{split.name}: the gallery captions cover {covered} of {len(ids)} gallery images (e.g. "
            f"{ids[0] if ids else '-'} has none); is it the captions file of this dataset and split?"
        )
    if covered < len(ids):
        split.notes.append(f"{len(ids) - covered} of {len(ids)} gallery images have no caption (scored 0)")
    return RetrievalGallery.from_captions(dict(table), encoder, ids=ids)


def _image_gallery(split: BenchmarkSplit, index_root: Path, encoder: Any):
    """Build (or reuse) the index of the split's gallery images, then name its items by benchmark id."""
    from agent_cir.gallery import RetrievalGallery
    from agent_cir.index import GalleryIndex

    relative = split.gallery_relative_paths()
    index_dir = index_root / split.name
    index = GalleryIndex.build(split.images_dir, index_dir, encoder, files=relative)
    gallery = RetrievalGallery.from_index(index)
    position = {gallery_id: i for i, gallery_id in enumerate(gallery.ids)}
    absent = [rel for rel in relative if rel not in position]
    if absent:
        raise EvalInputError(
            f"{split.name}: the index at {index_dir} lacks {len(absent)} gallery images (e.g. {absent[0]}); "
            "they could not be read; see the index's report of skipped files"
        )
    rows = [position[rel] for rel in relative]
    return RetrievalGallery(
        ids=list(split.gallery_ids or []),
        paths=[gallery.paths[i] for i in rows],
        hashes=[gallery.hashes[i] for i in rows],
        image_embeddings=np.asarray(gallery.image_embeddings, dtype=np.float32)[rows],
        encoder_info=dict(gallery.encoder_info),
        source=str(index_dir),
        index=gallery.index,
    )


# ---------- the run ----------
def _select(splits: list[BenchmarkSplit], query_ids: Sequence[str] | None, limit: int | None) -> dict[str, list[Query]]:
    selected: dict[str, list[Query]] = {}
    wanted = [str(q) for q in query_ids] if query_ids is not None else None
    if wanted is not None:
        known = {q.id for split in splits for q in split.queries}
        unknown = [q for q in wanted if q not in known]
        if unknown:
            raise EvalInputError(
                f"{len(unknown)} query ids are not in this dataset/split (e.g. {', '.join(unknown[:3])})"
            )
    wanted_set = set(wanted) if wanted is not None else None
    for split in splits:
        queries = [q for q in split.queries if wanted_set is None or q.id in wanted_set]
        selected[split.name] = queries[:limit] if limit is not None else queries
    return selected


def _has_traces(path: Path) -> bool:
    return path.is_file() and any(True for _ in read_traces(path))


def _check_resume(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The previous manifest when resuming; None for a fresh run. A previous run that finished no query
    (e.g. stopped by a missing model) does not lock the folder: it is replaced."""
    manifest_path = out_dir / "run.json"
    traces_exist = _has_traces(out_dir / "traces.jsonl")
    if not manifest_path.is_file():
        if traces_exist:
            raise RunMismatchError(
                f"{out_dir} has traces.jsonl but no run.json: it was not written by `agent-cir eval`; use another --out"
            )
        return None
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise RunMismatchError(f"{manifest_path} is not valid JSON; use another --out or repair it") from None
    for key, value in identity.items():
        if previous.get("identity", {}).get(key) != value:
            if not traces_exist:
                return None
            raise RunMismatchError(
                f"{out_dir} holds a run with another {key} ({previous.get('identity', {}).get(key)!r}, this run "
                f"{value!r}); resuming would mix results. Use another --out, or the same recipe and data"
            )
    return previous


def run_eval(
    dataset: str,
    split: str,
    images_root: str | Path | None,
    recipe: str | Path | Recipe,
    out_dir: str | Path,
    limit: int | None = None,
    query_ids: Sequence[str] | None = None,
    gallery_captions: str | Path | None = None,
    annotations: str | Path | Sequence[str | Path] | None = None,
    categories: Sequence[str] | None = None,
    index_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    max_concurrency: int | None = None,
    models: Mapping[str, Any] | None = None,
    encoder: Any = None,
    progress: bool = True,
    on_query: Callable[[Result], None] | None = None,
) -> EvalOutcome:
    """Run ``recipe`` on a benchmark split and write the run folder (see the module docstring).

    ``images_root=None`` with ``gallery_captions`` is the text surrogate (gallery = captions of the split's
    images, reference = its first caption). ``on_query`` is called after each query's trace is on disk.
    """
    started_wall = time.perf_counter()
    out = Path(out_dir).expanduser()
    if isinstance(annotations, (str, Path)) or annotations is None:
        candidates = annotation_candidates(annotations, images_root, gallery_captions)
    else:
        candidates = [Path(a) for a in annotations]
    if limit is not None and limit < 1:
        raise EvalInputError(f"--limit must be at least 1, got {limit}")

    # 1. data, before any model is loaded
    surrogate = images_root is None
    if surrogate and gallery_captions is None:
        raise EvalInputError(
            f"{dataset}: give the images (--images ROOT) or, for the text surrogate, gallery captions (--gallery-captions FILE)"
        )
    splits = load_benchmark(dataset, split, candidates, images_root=images_root, categories=categories)
    captions_table = None
    if gallery_captions is not None:
        from agent_cir.gallery import load_gallery_captions

        captions_table = load_gallery_captions(gallery_captions)
    if not surrogate:
        for benchmark in splits:
            benchmark.check_images()
            if benchmark.dataset == "circo":
                circo_data.scan_gallery(benchmark)
    elif dataset == "circo":
        raise EvalInputError("CIRCO's gallery is the COCO unlabeled2017 folder: the text surrogate needs --images ROOT")
    selected = _select(splits, query_ids, limit)
    if surrogate:
        for benchmark in splits:
            uncaptioned = cirr_data.attach_reference_captions(benchmark, captions_table or {})
            if uncaptioned:
                benchmark.notes.append(
                    f"{len(uncaptioned)} references have no caption in the captions file (queries "
                    f"{', '.join(uncaptioned[:5])}{'...' if len(uncaptioned) > 5 else ''})"
                )

    # 2. the effective recipe: the user's recipe + overrides + the dataset's protocol
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if overrides:
        base = recipe_from_dict(deep_merge(base.model_dump(mode="json"), dict(overrides)), source=f"recipe {base.name}")
    protocol = dataset_overrides(dataset, base, splits)
    effective = recipe_from_dict(deep_merge(base.model_dump(mode="json"), protocol), source=f"recipe {base.name}")

    dataset_files = {str(p): content_hash(p) for benchmark in splits for p in benchmark.annotation_files}
    captions_hash = content_hash(gallery_captions) if gallery_captions is not None and Path(gallery_captions).is_file() else None
    identity = {
        "dataset": dataset,
        "split": splits[0].split,
        "surrogate": surrogate,
        "recipe_hash": effective.hash,
        "gallery_captions_sha256": captions_hash,
    }
    out.mkdir(parents=True, exist_ok=True)
    previous = _check_resume(out, identity)
    traces_path = out / "traces.jsonl"
    torn = repair_torn_tail(traces_path)
    finished: dict[str, dict[str, Any]] = {}
    if traces_path.is_file():
        for record in read_traces(traces_path):
            if "eval" not in record:
                continue
            if record.get("recipe", {}).get("hash") != effective.hash:
                raise RunMismatchError(
                    f"{traces_path}: query {record.get('query_id')} was run with recipe hash "
                    f"{record.get('recipe', {}).get('hash')}, not {effective.hash}; use another --out"
                )
            finished[str(record["query_id"])] = _slim(record)

    session: dict[str, Any] = {"started": _now(), "queries_run": 0, "failed": 0, "model_calls": 0, "cache_hits": 0}
    manifest: dict[str, Any] = previous or {
        "identity": identity,
        "created": session["started"],
        "dataset": dataset,
        "split": splits[0].split,
        "recipe_source": str(recipe if not isinstance(recipe, Recipe) else f"<Recipe {recipe.name}>"),
        "recipe": effective.model_dump(mode="json"),
        "recipe_hash": effective.hash,
        "protocol_overrides": protocol,
        "user_overrides": dict(overrides or {}),
        "models": _models_used(effective),
        "prompts": prompt_hashes(effective),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": git_state(),
        "dataset_files": dataset_files,
        "gallery_captions": {"path": str(gallery_captions), "sha256": captions_hash} if gallery_captions else None,
        "sessions": [],
    }
    manifest.update(
        status="running",
        images_root=str(images_root) if images_root is not None else None,
    )
    manifest["sessions"].append(session)
    if torn:
        session["note"] = "cut a torn last line of traces.jsonl left by an interrupted run"
    _write_json(out / "run.json", manifest)

    # 3. run what is not finished yet
    pending = {name: [q for q in queries if q.id not in finished] for name, queries in selected.items()}
    failures: dict[str, str] = {}
    status = "interrupted"
    try:
        if any(pending.values()):
            if encoder is None:
                from agent_cir.encoders import create_encoder

                encoder = create_encoder(effective.encoder)
            manifest["encoder"] = dict(getattr(encoder, "info", {}) or {})
            _run_pending(
                splits, pending, effective, out, index_dir, encoder, captions_table, surrogate, models,
                max_concurrency, progress, on_query, finished, failures, session,
            )
        status = "complete"
    finally:
        session["ended"] = _now()
        session["seconds"] = round(time.perf_counter() - started_wall, 3)
        session["failed"] = len(failures)
        manifest["status"] = status
        manifest["updated"] = session["ended"]
        _write_json(out / "run.json", manifest)

    # 4. metrics and submissions over the selected queries
    metrics_payload = _metrics_payload(splits, selected, finished, failures, effective, surrogate, manifest)
    if splits[0].split == "test":
        metrics_payload["submission"] = _write_submissions(out, splits, selected, finished)
    _write_json(out / "metrics.json", metrics_payload)
    if failures:
        lines = "".join(json.dumps({"query_id": q, "error": e}) + "\n" for q, e in failures.items())
        (out / "failures.jsonl").write_text(lines, encoding="utf-8")
    return EvalOutcome(out_dir=out, metrics=metrics_payload, run=manifest)


def _run_pending(
    splits, pending, recipe, out, index_dir, encoder, captions_table, surrogate, models, max_concurrency,
    progress, on_query, finished, failures, session,
) -> None:
    from agent_cir.pipeline import Pipeline

    index_root = Path(index_dir).expanduser() if index_dir else out / "index"
    with TraceWriter(out / "traces.jsonl") as writer:
        for benchmark in splits:
            queries = pending.get(benchmark.name, [])
            if not queries:
                continue
            if surrogate:
                gallery = _caption_gallery(benchmark, captions_table or {}, encoder)
            else:
                gallery = _image_gallery(benchmark, index_root, encoder)
                if captions_table is not None:
                    gallery.with_captions(dict(captions_table), encoder)
            pipe = Pipeline.from_config(
                recipe, gallery=gallery, encoder=encoder, models=models, artifacts_dir=out / "artifacts"
            )
            by_id = {q.id: q for q in queries}

            def record(result: Result, benchmark: BenchmarkSplit = benchmark) -> None:
                query = by_id[result.query_id]
                trace = trim_trace(result.trace, KEEP_TOP)
                trace["eval"] = eval_record(benchmark, query, [c.id for c in result.candidates])
                writer.write(trace)
                finished[query.id] = _slim(trace)
                failures.pop(query.id, None)
                session["queries_run"] += 1
                session["model_calls"] += trace.get("totals", {}).get("model_calls", 0)
                session["cache_hits"] += trace.get("totals", {}).get("cache_hits", 0)
                if on_query is not None:
                    on_query(result)

            def failed(query: Query, error: Exception) -> None:
                failures[query.id] = str(error)

            pipe.run_batch(
                queries, max_concurrency=max_concurrency, progress=progress, on_result=record, on_error=failed
            )


def _slim(trace: dict[str, Any]) -> dict[str, Any]:
    """What metrics and summaries need from a finished trace (keeps memory flat on long runs)."""
    return {key: trace.get(key) for key in ("query_id", "eval", "totals", "recipe")}


def _rankings(queries: Sequence[Query], finished: Mapping[str, dict[str, Any]]) -> dict[str, list[str] | None]:
    return {q.id: (finished[q.id]["eval"]["ranking"] if q.id in finished else None) for q in queries}


def split_metrics(benchmark: BenchmarkSplit, queries: Sequence[Query], rankings: Mapping[str, Any]) -> dict[str, float]:
    targets = {q.id: q.meta["target"] for q in queries}
    if benchmark.dataset == "circo":
        return M.circo_metrics(rankings, {q.id: q.meta["ground_truth"] for q in queries}, targets)
    if benchmark.dataset == "cirr":
        return M.cirr_metrics(
            rankings, {q.id: q.reference_id for q in queries}, targets, {q.id: q.meta["subset"] for q in queries}
        )
    if benchmark.dataset == "fashioniq":
        return M.fashioniq_metrics(rankings, targets)
    return M.genecis_metrics(rankings, targets, {q.id: q.meta["gallery"] for q in queries})


def _metrics_payload(splits, selected, finished, failures, recipe, surrogate, manifest) -> dict[str, Any]:
    all_queries = [q for name in selected for q in selected[name]]
    done = [finished[q.id] for q in all_queries if q.id in finished]
    missing = [q.id for q in all_queries if q.id not in finished]
    payload: dict[str, Any] = {
        "dataset": splits[0].dataset,
        "split": splits[0].split,
        "categories": [s.category for s in splits if s.category] or None,
        "surrogate": surrogate,
        "recipe": {"name": recipe.name, "hash": recipe.hash},
        "queries": {"selected": len(all_queries), "evaluated": len(done), "not_evaluated": len(missing)},
        "metrics": {},
        "model_calls": sum(t.get("totals", {}).get("model_calls", 0) for t in done),
        "cache_hits": sum(t.get("totals", {}).get("cache_hits", 0) for t in done),
        "seconds_per_query": round(float(np.mean([t.get("totals", {}).get("seconds", 0.0) for t in done])), 4)
        if done else None,
        "wall_seconds": round(sum(s.get("seconds", 0.0) for s in manifest.get("sessions", [])), 3),
        "notes": [note for s in splits for note in s.notes],
        "created": _now(),
    }
    # seconds_per_query is each query's own latency (with concurrency, queries wait for one another);
    # wall_seconds_per_query is throughput: the run's wall time (model loading included) per query.
    payload["wall_seconds_per_query"] = round(payload["wall_seconds"] / len(done), 4) if done else None
    if surrogate:
        payload["surrogate_note"] = SURROGATE_NOTE
    if missing:
        payload["queries"]["not_evaluated_ids"] = missing[:50]
        payload["notes"].append(
            f"{len(missing)} selected queries have no result (failed: see failures.jsonl); they count as misses"
        )
    if failures:
        payload["failures"] = dict(list(failures.items())[:20])
    if not splits[0].has_ground_truth:
        return payload
    per_split = {}
    for benchmark in splits:
        queries = selected[benchmark.name]
        if queries:
            per_split[benchmark.category or benchmark.name] = split_metrics(benchmark, queries, _rankings(queries, finished))
    if splits[0].dataset in ("circo", "cirr"):
        payload["metrics"] = next(iter(per_split.values()), {})
    elif splits[0].dataset == "fashioniq":
        payload["metrics"] = dict(per_split)
        if len(per_split) > 1:
            payload["metrics"]["mean"] = M.fashioniq_mean(per_split)
    else:
        payload["metrics"] = dict(per_split)
    return payload


def _write_submissions(out: Path, splits, selected, finished) -> dict[str, Any]:
    benchmark = splits[0]
    queries = selected[benchmark.name]
    rankings = {q.id: finished[q.id]["eval"]["ranking"] for q in queries if q.id in finished}
    complete = len(rankings) == len(benchmark.queries)
    if benchmark.dataset == "circo":
        path = S.write_json(out / "submission_circo_test.json", S.circo_submission(rankings))
        files = [str(path)]
    elif benchmark.dataset == "cirr":
        recall, subset = S.cirr_submissions(
            rankings, {q.id: q.reference_id for q in queries}, {q.id: q.meta["subset"] for q in queries}
        )
        files = [
            str(S.write_json(out / "submission_cirr_test1_recall.json", recall)),
            str(S.write_json(out / "submission_cirr_test1_recall_subset.json", subset)),
        ]
    else:
        return {"files": [], "note": f"{benchmark.dataset} test has no submission server format here"}
    result: dict[str, Any] = {"files": files, "queries": len(rankings), "complete": complete}
    if not complete:
        result["note"] = (
            f"{len(rankings)} of {len(benchmark.queries)} test queries: the server needs all of them"
        )
    return result
