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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_cir.config import Recipe, redact_secrets, redacted_recipe_dump
from agent_cir.eval.benchmarks import get_benchmark
from agent_cir.eval.datasets import cirr as cirr_data
from agent_cir.eval.provenance import environment, models_used, prompt_hashes
from agent_cir.eval.resume import run_identity
from agent_cir.eval.run_folder import end_session, open_run, read_finished, start_session
from agent_cir.eval.run_inputs import EvalInputError, annotation_candidates, effective_recipe, select_queries
from agent_cir.eval.run_lock import RunFolderLock
from agent_cir.eval.run_results import write_results
from agent_cir.eval.split_loop import run_pending
from agent_cir.hashing import content_hash
from agent_cir.types import Result

__all__ = ["EvalOutcome", "run_eval"]


@dataclasses.dataclass
class EvalOutcome:
    out_dir: Path
    metrics: dict[str, Any]
    run: dict[str, Any]


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
    selected = select_queries(splits, query_ids, limit)
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
    previous = open_run(out, identity)
    finished, torn = read_finished(out, identity["hash"])
    fields = {
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
    }
    manifest, session = start_session(out, previous, identity, fields, recipe_hash=effective.hash,
                                      images_root=images_root, torn=torn)

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
            run_pending(
                benchmark, splits, pending, effective, identity["hash"], out, index_root, encoder, captions_table,
                surrogate, models, max_concurrency, progress, on_query, finished, failures, session,
                Path(prebuilt_index).expanduser() if prebuilt_index is not None else None,
            )
        status = "complete"
    finally:
        end_session(out, manifest, session, status=status, seconds=time.perf_counter() - started_wall,
                    failed=len(failures))

    # 4. metrics and submissions over the selected queries
    metrics = write_results(out, benchmark, splits, selected, finished, failures, effective, surrogate, manifest)
    return EvalOutcome(out_dir=out, metrics=metrics, run=manifest)
