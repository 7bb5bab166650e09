"""Resumable benchmark runs: ``run_eval(...)`` -> ``out_dir/{run.json, traces.jsonl, metrics.json, submissions}``.

- The protocol is the benchmark's (``agent_cir.eval.benchmarks``): gallery, reference rule, candidate restriction,
  metrics and submission; it overrides the recipe and is recorded in run.json (``protocol``). A recipe's
  ``by_dataset`` block for the dataset is merged first (``by_dataset_applied``), user ``--set`` overrides next.
- ``traces.jsonl``: one trace per finished query (``agent_cir.trace`` schema) plus an ``eval`` entry
  ``{ranking, kept_top, ranked, target_rank, dataset, split, category, identity}``. The ranking kept is the top
  ``KEEP_TOP`` ids plus, further down, every image a restricted metric needs (CIRR subset members, the GeneCIS
  query list), in rank order, so every metric and submission is exact without storing whole-gallery rankings.
- Resume: rerun with the same ``out_dir``; queries whose trace is in ``traces.jsonl`` are skipped, a torn last
  line is cut off first. Another run identity (``agent_cir.eval.resume``) into the same folder is refused.
- Provenance (``agent_cir.eval.provenance``): packages, git state, prompt hashes, models; secrets never written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.atomic import write_text_atomic
from agent_cir.config import Recipe, deep_merge, load_recipe, recipe_from_dict, redact_secrets, redacted_recipe_dump
from agent_cir.errors import AgentCirError
from agent_cir.eval.benchmarks import Benchmark, get_benchmark
from agent_cir.eval.datasets import BenchmarkSplit
from agent_cir.eval.datasets import cirr as cirr_data
from agent_cir.eval.prebuilt_index import open_prebuilt_index
from agent_cir.eval.provenance import environment, models_used, prompt_hashes
from agent_cir.eval.submission import SubmissionError
from agent_cir.eval.resume import RunMismatchError, check_resume, repair_torn_tail, run_identity, write_failures
from agent_cir.eval.answers import RunAnswers
from agent_cir.eval.run_lock import RunFolderLock
from agent_cir.hashing import content_hash
from agent_cir.trace.io import TraceWriter, read_typed_traces
from agent_cir.trace.model import EvalRecord, Trace
from agent_cir.types import Query, Result

__all__ = ["EvalInputError", "EvalOutcome", "RunMismatchError", "read_query_ids", "repair_torn_tail", "run_eval"]

SURROGATE_NOTE = (
    "CIRR text surrogate: gallery images are represented by their MLLM captions and the reference by its "
    "caption; these numbers measure the text part of the pipeline and are NOT comparable with image-based results"
)


class EvalInputError(AgentCirError):
    """The evaluation cannot start as asked (no images and no captions, unknown query ids, ...)."""


@dataclasses.dataclass
class EvalOutcome:
    out_dir: Path
    metrics: dict[str, Any]
    run: dict[str, Any]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")


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


# ---------- galleries ----------
def _caption_gallery(split: BenchmarkSplit, table: Mapping[str, list[str]], encoder: Any):
    from agent_cir.retrieval.gallery import RetrievalGallery

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


def _image_gallery(split: BenchmarkSplit, index_root: Path, encoder: Any, prebuilt: Path | None = None):
    """Build (or reuse) the index of the split's gallery images (or open ``prebuilt``, checked to hold exactly
    them), then name its items by benchmark id."""
    from agent_cir.retrieval.gallery import RetrievalGallery
    from agent_cir.index import GalleryIndex

    relative = split.gallery_relative_paths()
    index_dir = prebuilt or index_root / split.name
    index = (open_prebuilt_index(prebuilt, split.name, relative) if prebuilt is not None
             else GalleryIndex.build(split.images_dir, index_dir, encoder, files=relative))
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
        image_embeddings=np.asarray(gallery.image_embeddings[np.asarray(rows, dtype=np.int64)], dtype=np.float32),
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


def effective_recipe(
    benchmark: Benchmark, recipe: str | Path | Recipe, overrides: Mapping[str, Any] | None,
    splits: Sequence[BenchmarkSplit],
) -> tuple[Recipe, dict[str, Any], dict[str, Any], list[str]]:
    """The recipe as run: recipe -> its ``by_dataset`` block -> user overrides -> the benchmark's protocol.
    Returns (recipe, by_dataset block applied, protocol overrides applied, notes)."""
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    by_dataset = dict(base.by_dataset.get(benchmark.name) or {})  # type: ignore[call-overload]
    merged = base.for_dataset(benchmark.name)
    if overrides:
        merged = recipe_from_dict(deep_merge(merged.model_dump(mode="json"), dict(overrides)), source=f"recipe {base.name}")
    protocol = benchmark.retrieve_overrides(merged, splits)
    notes = []
    if "exclude_reference" in protocol.get("retrieve", {}):
        notes.append(
            f"{benchmark.name} protocol: reference {'removed' if benchmark.exclude_reference else 'kept in the gallery'} "
            f"(the recipe said exclude_reference: {str(merged.retrieve.exclude_reference).lower()})"
        )
    effective = recipe_from_dict(deep_merge(merged.model_dump(mode="json"), protocol), source=f"recipe {base.name}")
    return effective, by_dataset, protocol, notes


def run_eval(dataset: str, split: str, images_root: str | Path | None, recipe: str | Path | Recipe,
             out_dir: str | Path, **options: Any) -> EvalOutcome:
    """``_run_eval`` (below) holding the run folder: refused unless new, empty or an agent_cir run; one eval at a time."""
    with RunFolderLock(out_dir):
        return _run_eval(dataset, split, images_root, recipe, out_dir, **options)


def _run_eval(
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
    prebuilt_index: str | Path | None = None,
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
    benchmark = get_benchmark(dataset)
    if isinstance(annotations, (str, Path)) or annotations is None:
        candidates = annotation_candidates(annotations, images_root, gallery_captions)
    else:
        candidates = [Path(a) for a in annotations]
    if limit is not None and limit < 1:
        raise EvalInputError(f"--limit must be at least 1, got {limit}")
    index_root = Path(index_dir).expanduser() if index_dir else out / "index"

    # 1. data, before any model is loaded
    surrogate = images_root is None
    if surrogate and gallery_captions is None:
        raise EvalInputError(
            f"{dataset}: give the images (--images ROOT) or, for the text surrogate, gallery captions (--gallery-captions FILE)"
        )
    if surrogate and not benchmark.surrogate_ok:
        raise EvalInputError(f"{dataset}: the gallery is an image folder the annotations do not list: the text surrogate needs --images ROOT")
    root = Path(images_root).expanduser() if images_root is not None else None
    splits = benchmark.load(split, candidates, root, categories)
    captions_table = None
    if gallery_captions is not None:
        from agent_cir.retrieval.gallery import load_gallery_captions

        captions_table = load_gallery_captions(gallery_captions)
    if not surrogate:
        for part in splits:
            part.check_images()
            benchmark.prepare(part, index_root)
    selected = _select(splits, query_ids, limit)
    if surrogate:
        for part in splits:
            uncaptioned = cirr_data.attach_reference_captions(part, captions_table or {})
            if uncaptioned:
                part.notes.append(
                    f"{len(uncaptioned)} references have no caption in the captions file (queries "
                    f"{', '.join(uncaptioned[:5])}{'...' if len(uncaptioned) > 5 else ''})"
                )

    # 2. the effective recipe and the run's identity
    effective, by_dataset, protocol, protocol_notes = effective_recipe(benchmark, recipe, overrides, splits)
    protocol_notes += benchmark.apply_query_options(effective, splits)  # CIRCO: circo.query_text
    prompts = prompt_hashes(effective)
    dataset_files = {str(p): content_hash(p) for part in splits for p in part.annotation_files}
    captions_hash = content_hash(gallery_captions) if gallery_captions is not None and Path(gallery_captions).is_file() else None
    identity = run_identity(
        effective, prompts, dataset=dataset, split=splits[0].split, surrogate=surrogate,
        gallery_captions_sha256=captions_hash, annotations=dataset_files,
        protocol=f"{benchmark.name}/{benchmark.version}",
    )
    out.mkdir(parents=True, exist_ok=True)
    previous = check_resume(out, identity)
    traces_path = out / "traces.jsonl"
    torn = repair_torn_tail(traces_path)
    finished: dict[str, dict[str, Any]] = {}
    if traces_path.is_file():
        for trace in read_typed_traces(traces_path):
            if trace.eval is None:
                continue
            recorded = trace.eval.identity
            if recorded is not None and recorded != identity["hash"]:
                raise RunMismatchError(
                    f"{traces_path}: query {trace.query_id} was run under run identity {recorded}, not "
                    f"{identity['hash']}; use another --out"
                )
            finished[trace.query_id] = _slim(trace)

    session: dict[str, Any] = {"started": _now(), "queries_run": 0, "failed": 0, "model_calls": 0, "cache_hits": 0,
                               "recipe_hash": effective.hash}
    manifest: dict[str, Any] = previous or {
        "identity": identity,
        "created": session["started"],
        "dataset": dataset,
        "split": splits[0].split,
        "recipe_source": str(recipe if not isinstance(recipe, Recipe) else f"<Recipe {recipe.name}>"),
        "recipe": redacted_recipe_dump(effective),
        "recipe_hash": effective.hash,
        "by_dataset_applied": redact_secrets(by_dataset),
        "protocol": {**benchmark.protocol_record(), "applied": protocol, "notes": protocol_notes},
        "protocol_overrides": protocol,
        "user_overrides": redact_secrets(dict(overrides or {})),
        "models": models_used(effective),
        "prompts": prompts,
        **environment(),
        "dataset_files": dataset_files,
        "gallery_captions": {"path": str(gallery_captions), "sha256": captions_hash} if gallery_captions else None,
        "sessions": [],
    }
    manifest.update(status="running", images_root=str(images_root) if images_root is not None else None)
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
                benchmark, splits, pending, effective, identity["hash"], out, index_root, encoder, captions_table,
                surrogate, models, max_concurrency, progress, on_query, finished, failures, session,
                Path(prebuilt_index).expanduser() if prebuilt_index is not None else None,
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
    metrics_payload = _metrics_payload(benchmark, splits, selected, finished, failures, effective, surrogate, manifest)
    write_failures(out / "failures.jsonl", failures, finished)
    if splits[0].split == "test":
        part = splits[0]
        rankings = {q.id: finished[q.id]["eval"]["ranking"] for q in part.queries if q.id in finished}
        try:
            metrics_payload["submission"] = benchmark.write_submission(out, part, selected[part.name], rankings)
        except SubmissionError as err:
            # Refused, not written: a partial file would be scored as if the missing queries were misses.
            metrics_payload["submission"] = {"files": [], "complete": False, "refused": str(err)}
            metrics_payload["notes"].append(f"submission refused: {err}")
    _write_json(out / "metrics.json", metrics_payload)
    return EvalOutcome(out_dir=out, metrics=metrics_payload, run=manifest)


def _run_pending(
    benchmark, splits, pending, recipe, identity_hash, out, index_root, encoder, captions_table, surrogate, models,
    max_concurrency, progress, on_query, finished, failures, session, prebuilt=None,
) -> None:
    from agent_cir.pipeline import Pipeline

    # The cache off: the run's own store (answers.py) keeps every model answer the moment it arrives.
    answers = RunAnswers(out) if not recipe.cache.enabled and recipe.model_stages() else None
    with TraceWriter(out / "traces.jsonl") as writer:
        for part in splits:
            queries = pending.get(part.name, [])
            if not queries:
                continue
            if surrogate:
                gallery = _caption_gallery(part, captions_table or {}, encoder)
            else:
                gallery = _image_gallery(part, index_root, encoder, prebuilt)
                if captions_table is not None:
                    gallery.with_captions(dict(captions_table), encoder)
            pipe = Pipeline.from_config(
                recipe, gallery=gallery, encoder=encoder, models=models, artifacts_dir=out / "artifacts"
            )
            if answers is not None and pipe.models:
                pipe = Pipeline(pipe.recipe, pipe.gallery, pipe.encoder, models=pipe.models, cache=answers,
                                artifacts_dir=pipe.artifacts_dir)
            by_id = {q.id: q for q in queries}

            def record(result: Result, part: BenchmarkSplit = part) -> None:
                query = by_id[result.query_id]
                trace = result.trace  # already holds only the head of each ranking
                # built here from the ranking's arrays: constructed, not validated again (the file's readers do)
                trace.eval = EvalRecord.model_construct(**benchmark.eval_record(part, query, result.ranking),
                                                        identity=identity_hash)
                writer.write(trace)
                finished[query.id] = _slim(trace)
                failures.pop(query.id, None)
                session["queries_run"] += 1
                session["model_calls"] += trace.totals.model_calls
                session["cache_hits"] += trace.totals.cache_hits
                if on_query is not None:
                    on_query(result)

            def failed(query: Query, error: Exception) -> None:
                failures[query.id] = str(error)

            # each result is persisted (and slimmed) by on_result: the run keeps no Result, so a long run's memory
            # (and the garbage collector's work) stays flat
            try:
                pipe.run_batch(
                    queries, max_concurrency=max_concurrency, progress=progress, on_result=record, on_error=failed,
                    chunk_size=persist_chunk(recipe, max_concurrency), keep_results=False,
                )
            finally:
                if answers is not None:
                    answers.close()
    if answers is not None and not failures and all(q.id in finished for qs in pending.values() for q in qs):
        answers.discard()  # every answer it kept is in a trace now


UNCACHED_CHUNK = 8
"""Queries per chunk when model answers are not cached: a query's trace is written once it has passed every
stage, and stage-major runs take a whole chunk through each stage, so a kill loses the answers of at most one
chunk. With the cache on, every answer is already on disk and the recipe's chunk size stays."""


def persist_chunk(recipe: Recipe, max_concurrency: int | None) -> int | None:
    if recipe.cache.enabled or not recipe.model_stages():
        return None
    return min(recipe.chunk_size, max(UNCACHED_CHUNK, 2 * (max_concurrency or recipe.max_concurrency)))


def _slim(trace: Trace) -> dict[str, Any]:
    """What metrics and summaries need from a finished trace, as plain data (keeps memory flat on long runs)."""
    return {"query_id": trace.query_id, "eval": dict(trace.eval) if trace.eval is not None else None,
            "totals": dict(trace.totals), "recipe": dict(trace.recipe)}


def _rankings(queries: Sequence[Query], finished: Mapping[str, dict[str, Any]]) -> dict[str, list[str] | None]:
    return {q.id: (finished[q.id]["eval"]["ranking"] if q.id in finished else None) for q in queries}


def _metrics_payload(benchmark, splits, selected, finished, failures, recipe, surrogate, manifest) -> dict[str, Any]:
    all_queries = [q for name in selected for q in selected[name]]
    done = [finished[q.id] for q in all_queries if q.id in finished]
    missing = [q.id for q in all_queries if q.id not in finished]
    payload: dict[str, Any] = {
        "dataset": splits[0].dataset,
        "split": splits[0].split,
        "categories": [s.category for s in splits if s.category] or None,
        "surrogate": surrogate,
        "recipe": {"name": recipe.name, "hash": recipe.hash},
        "protocol": manifest.get("protocol"),
        "queries": {"selected": len(all_queries), "evaluated": len(done), "not_evaluated": len(missing)},
        "metrics": {},
        "model_calls": sum(t.get("totals", {}).get("model_calls", 0) for t in done),
        "cache_hits": sum(t.get("totals", {}).get("cache_hits", 0) for t in done),
        "seconds_per_query": round(float(np.mean([t.get("totals", {}).get("seconds", 0.0) for t in done])), 4)
        if done else None,
        "wall_seconds": round(sum(s.get("seconds", 0.0) for s in manifest.get("sessions", [])), 3),
        "notes": [note for s in splits for note in s.notes] + list((manifest.get("protocol") or {}).get("notes", [])),
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
    for part in splits:
        queries = selected[part.name]
        if queries:
            per_split[part.category or part.name] = benchmark.split_metrics(part, queries, _rankings(queries, finished))
    payload["metrics"] = benchmark.aggregate(per_split, payload["notes"])
    return payload
