"""The Pipeline: runs the enabled stages of a recipe stage-major over chunks of queries, with the cache and the
trace around them.

A chunk of queries goes through one stage at a time: all captions of the chunk, then all rewrites, then one
retrieval for the chunk (``run_batch`` of a stage that has it), then the reranks. Model stages run their
queries concurrently in a thread pool (server calls are I/O bound; each model's ``max_concurrency`` bounds
its own calls). A query whose last stage finishes is handed to ``on_result`` at once; a query that fails in
any stage, for any reason, fails alone.

The parts come from ``assembly.py`` (recipe -> gallery, encoder, models, cache, stage objects); each query is
checked and made ready by ``query_prep.py``; the rounds are ``engine.py``'s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent_cir.assembly import assemble, build_stages
from agent_cir.config import Recipe
from agent_cir.encoders.recipe_identity import encoder_record
from agent_cir.engine import Job, Outcome, RoundEngine, Workers, chunks, run_stage, stage_concurrency
from agent_cir.errors import AgentCirError
from agent_cir.query_prep import DESCRIPTION_STAGES, hand_over_to_retrieval, needs_modification, prepare_job
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.retrieval.ranking import Ranking
from agent_cir.stages.retrieve import TRACE_HEAD, RetrieveStage
from agent_cir.stages.retrieve_plan import QueryInputError
from agent_cir.trace.build import build_trace
from agent_cir.types import Query, QueryState, Result, Stage, StageRecord


class QueryFailedError(AgentCirError):
    """One query failed inside a stage for a reason other than a user error (a parser's RecursionError, a bug).

    The original exception is the ``__cause__``; the message names the query, the stage and the error."""


class Pipeline:
    """``Query -> caption -> rewrite (or one_stage) -> retrieve -> rerank -> Result``.

    Build it with :meth:`from_config`; the constructor takes ready-made parts (useful in tests).
    """

    def __init__(
        self,
        recipe: Recipe,
        gallery: RetrievalGallery,
        encoder: Any,
        models: Mapping[str, Any] | None = None,
        cache: Any = None,
        artifacts_dir: str | Path | None = None,
    ) -> None:
        self.recipe = recipe
        self.recipe_hash = recipe.hash  # once: hashing the redacted recipe costs ~2 ms, per query it adds up
        self.gallery = gallery
        self.encoder = encoder
        self.encoder_info = encoder_record(encoder)
        self.models = dict(models or {})
        self.cache = cache
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.stages: list[Stage] = build_stages(self)
        self._image_retrieve: Stage | None = None
        self._lock = threading.Lock()
        self._model_calls = 0
        self._cache_hits = 0
        self.failures: list[dict[str, str]] = []

    # ---------- construction ----------
    @classmethod
    def from_config(
        cls,
        recipe: str | Path | Recipe | Mapping[str, Any],
        index: str | Path | Any | None = None,
        gallery: RetrievalGallery | None = None,
        overrides: Mapping[str, Any] | None = None,
        models: Mapping[str, Any] | None = None,
        artifacts_dir: str | Path | None = None,
        encoder: Any = None,
        gallery_captions: str | Path | None = None,
        use_index_encoder: bool = False,
    ) -> Pipeline:
        """Build the pipeline a recipe describes over an index folder (or a ``GalleryIndex``), a ready gallery,
        or gallery captions.

        With an index, the index's encoder embeds the queries (loaded once per index object). A recipe that
        names another encoder is refused with what to do, unless ``use_index_encoder`` is true; a recipe that
        names none lets the index decide. A passed ``encoder`` must be the index's.
        """
        parts = assemble(recipe, index=index, gallery=gallery, overrides=overrides, models=models, encoder=encoder,
                         gallery_captions=gallery_captions, use_index_encoder=use_index_encoder)
        return cls(parts.recipe, parts.gallery, parts.encoder, models=parts.models, cache=parts.cache,
                   artifacts_dir=artifacts_dir)

    @property
    def max_rounds(self) -> int:
        """Extra rounds a query may take through the loop (0 without a refine stage)."""
        return self.recipe.refine.max_rounds if self.recipe.refine.enabled else 0

    def head_size(self) -> int:
        """Entries of a ranking built as objects and kept in the trace: what the later stages read, at least the
        trace's usual head, never more than retrieval returns."""
        recipe = self.recipe
        wanted = max(TRACE_HEAD, recipe.rerank.k if recipe.rerank.enabled else 0,
                     recipe.verify.k if recipe.verify.enabled else 0,
                     recipe.predicates.k if recipe.predicates.enabled else 0)
        return min(recipe.retrieve.k, wanted)

    def reference_path(self, state: QueryState) -> str | None:
        """The reference image file: the query's own, else the gallery's copy of ``reference_id``."""
        if state.query.image:
            return state.query.image
        position = self.gallery.position(state.query.reference_id) if state.query.reference_id else None
        return self.gallery.paths[position] if position is not None and self.gallery.paths else None

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"model_calls": self._model_calls, "cache_hits": self._cache_hits}

    def _image_mode_stage(self) -> Stage:
        if self._image_retrieve is None:
            image_config = self.recipe.retrieve.model_copy(update={"mode": "image"})
            self._image_retrieve = RetrieveStage(image_config, self.encoder, self.gallery, head=self.head_size())
        return self._image_retrieve

    def _route(self, stage: Stage, job: Job) -> Stage | str:
        """The stage object that serves this query at this step, or why the step is skipped."""
        if stage.name in DESCRIPTION_STAGES:
            if job.query.target_text:
                return "target description set by hand (intervention)"
            if job.image_only:
                return "no modification text: the reference image alone is the query (image mode)"
        if stage.name == "imagine" and job.image_only:
            return "no modification text: nothing to edit (the reference image alone is the query)"
        if stage.name == "retrieve" and job.image_only and self.recipe.retrieve.mode != "image":
            try:
                return self._image_mode_stage()
            except AgentCirError as err:
                raise QueryInputError(
                    f"query {job.query.id}: the modification text is empty and this gallery cannot be searched "
                    f"with the reference image alone ({err}); give a modification text"
                ) from err
        return stage

    # ---------- running ----------
    def _failure(self, query: Query, stage_name: str, err: BaseException) -> AgentCirError:
        if isinstance(err, AgentCirError):
            return err
        detail = " ".join(str(err).split())[:300] or "(no message)"
        wrapped = QueryFailedError(f"query {query.id}, {stage_name} stage: {type(err).__name__}: {detail}")
        wrapped.__cause__ = err
        return wrapped

    def _step(self, stage: Stage, jobs: list[Job], workers: Workers | None) -> Iterator[tuple[Job, Outcome]]:
        """One pipeline step over a chunk: skipped queries get their record at once, the others are grouped by
        the stage object that serves them (the image-mode retrieval for queries without text)."""
        groups: dict[int, tuple[Stage, list[Job]]] = {}
        for job in jobs:
            try:
                route = self._route(stage, job)
            except Exception as err:  # noqa: BLE001
                yield job, err
                continue
            if isinstance(route, str):
                yield job, StageRecord(stage=stage.name, skipped=route)
            else:
                groups.setdefault(id(route), (route, []))[1].append(job)
        for serving, members in groups.values():
            yield from run_stage(serving, members, workers)

    def _run_chunk(
        self,
        queries: list[tuple[int, Query]],
        workers: Workers | None,
        on_done: Callable[[int, Result | AgentCirError], None],
        on_stage: Callable[[StageRecord, QueryState], None] | None = None,
    ) -> None:
        """Every stage over the (position, query) pairs of one chunk, round after round where the recipe loops;
        ``on_done(position, result or error)`` as each query finishes or fails."""
        jobs: list[Job] = []
        modification_needed = needs_modification([stage.name for stage in self.stages], self.recipe.retrieve)
        for position, query in queries:
            try:
                jobs.append(prepare_job(query, position, modification_needed=modification_needed,
                                        artifacts_dir=self.artifacts_dir))
            except Exception as err:  # noqa: BLE001 - a bad query fails alone
                on_done(position, self._failure(query, "input", err))

        def before(stage: Stage, batch: list[Job]) -> None:
            if stage.name == "retrieve":
                for job in batch:
                    hand_over_to_retrieval(job, self.recipe.retrieve)

        engine = RoundEngine(self.stages, lambda stage, batch: self._step(stage, batch, workers),
                             max_rounds=self.max_rounds, before=before)
        engine.run(
            jobs,
            finished=lambda job: on_done(job.position, self._result(job)),
            failed=lambda job, name, err: on_done(job.position, self._failure(job.query, name, err)),
            on_stage=on_stage,
        )

    def _result(self, job: Job) -> Result:
        state = job.state
        ranking = final_ranking(state)
        seconds = sum(record.seconds for record in state.records)
        head = max(self.head_size(), len(state.candidates))
        # The stages keep state.candidates = the head of state.ranking: reuse those objects for the results.
        shown = state.candidates[:head] if ranking is state.ranking and len(state.candidates) >= min(head, len(ranking)) else None
        trace = build_trace(state, self.recipe.name, self.recipe_hash, seconds, encoder=self.encoder_info,
                            ranking=ranking, head=head, shown=shown)
        with self._lock:
            self._model_calls += trace.totals.model_calls
            self._cache_hits += trace.totals.cache_hits
        return Result(query_id=job.query.id, trace=trace, ranking=ranking)

    def run(
        self, query: Query, on_stage: Callable[[StageRecord, QueryState], None] | None = None
    ) -> Result:
        """Run one query (a batch of one). ``on_stage`` is called after each stage with its record and the
        state so far (the demo uses it to show stages as they complete). Errors are raised, not recorded."""
        outcome: list[Result | AgentCirError] = []
        self._run_chunk([(0, query)], None, lambda _position, done: outcome.append(done), on_stage=on_stage)
        (done,) = outcome
        if isinstance(done, BaseException):
            raise done
        return done

    def session(self, reference: str | Path | None = None, text: str | None = None, *,
                reference_id: str | None = None, reference_caption: str | None = None) -> Any:
        """A multi-turn search (``agent_cir.session.Session``) from a reference image (or gallery item); with
        ``text`` its first turn runs at once. Then ``refine``, ``pick``, ``undo``, ``answer``, ``save``."""
        from agent_cir.session import Session

        session = Session(self, reference, reference_id=reference_id, reference_caption=reference_caption)
        if text is not None:
            session.refine(text)
        return session

    def run_batch(
        self,
        queries: Iterable[Query],
        max_concurrency: int | None = None,
        progress: bool = True,
        on_result: Callable[[Result], None] | None = None,
        on_error: Callable[[Query, Exception], None] | None = None,
        chunk_size: int | None = None,
        keep_results: bool = True,
    ) -> list[Result]:
        """Run many queries stage-major, ``chunk_size`` (default: the recipe's) at a time.

        Within a chunk each stage serves every query before the next stage starts; a stage with ``run_batch``
        gets the whole chunk in one call, the others run ``max_concurrency`` queries at once (default: the
        stage model's own ``max_concurrency``, else the recipe's). ``on_result`` is called (in this thread) as
        soon as a query's last stage is done, so callers persist each result at once. Any exception of one
        query (bad input, a model error, a parser's RecursionError) is that query's failure: it goes to
        ``on_error`` and ``self.failures`` and the others go on; KeyboardInterrupt stops the run. Returns the
        successful results in input order (an empty list with ``keep_results=False``, for long runs whose
        results are persisted through ``on_result``).
        """
        from tqdm.auto import tqdm

        size = max(1, chunk_size or self.recipe.chunk_size)
        total = len(queries) if isinstance(queries, Sized) else None
        results: dict[int, Result] = {}
        self.failures = []
        bar = tqdm(total=total, desc=f"{self.recipe.name}", unit="query", disable=not progress)

        originals: dict[int, Query] = {}

        def done(position: int, outcome: Result | AgentCirError) -> None:
            query = originals.pop(position)
            if isinstance(outcome, Result):
                if keep_results:
                    results[position] = outcome
                if on_result is not None:
                    on_result(outcome)
            else:
                self.failures.append({"query_id": query.id, "error": str(outcome)})
                if on_error is not None:
                    on_error(query, outcome)
            bar.update(1)
            if progress:
                stats = self.stats
                bar.set_postfix(calls=stats["model_calls"], hits=stats["cache_hits"], failed=len(self.failures))

        default = self.recipe.max_concurrency
        threads = max(stage_concurrency(stage, max_concurrency, default) for stage in self.stages)
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="agent-cir-stage")
        workers = Workers(pool, max_concurrency, default)
        try:
            start = 0
            for chunk in chunks(queries, size):
                numbered = list(enumerate(chunk, start))
                start += len(chunk)
                originals.update(numbered)
                self._run_chunk(numbered, workers, done)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)
        return [results[position] for position in sorted(results)]


def final_ranking(state: QueryState) -> Ranking:
    """The query's final ranking: the stages' ranking, unless a stage set ``state.candidates`` by hand (a user's
    own stage, a test): then exactly those candidates."""
    ranking = state.ranking
    if ranking is None or ranking.head_ids(len(state.candidates)) != [c.id for c in state.candidates]:
        return Ranking.from_candidates(state.candidates)
    return ranking
