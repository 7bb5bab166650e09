"""The loop over a run's splits: per split its gallery and pipeline, each finished query's trace (with its
``eval`` entry) written at once, failures kept for failures.jsonl.

Chunks are the recipe's (``chunk_size``): with the cache on, every model answer is in the cache; with it off,
in the run's answers journal (``eval/answers.py``) the moment it arrives. A kill therefore loses no model
answer, only the retrieval work of the queries whose traces were not yet written, which a resume redoes.
"""

from __future__ import annotations

from agent_cir.eval.answers import RunAnswers
from agent_cir.eval.datasets import BenchmarkSplit
from agent_cir.eval.run_folder import slim
from agent_cir.eval.split_gallery import caption_gallery, image_gallery
from agent_cir.trace.io import TraceWriter
from agent_cir.trace.model import EvalRecord
from agent_cir.types import Query, Result


def run_pending(
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
                gallery = caption_gallery(part, captions_table or {}, encoder)
            else:
                gallery = image_gallery(part, index_root, encoder, prebuilt)
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
                finished[query.id] = slim(trace)
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
                    keep_results=False,
                )
            finally:
                if answers is not None:
                    answers.close()
    if answers is not None and not failures and all(q.id in finished for qs in pending.values() for q in qs):
        answers.discard()  # every answer it kept is in a trace now
