"""The stage engine: runs stages stage-major over a chunk of queries, with failure isolation and rounds.

A chunk goes through one stage at a time: every query of the chunk that is at that stage is served in one
``run_batch`` (one encoder batch, one faiss call) or, for per-query stages, up to the stage's concurrency at
once in a thread pool. Any exception of one query is that query's failure; the others go on.

Rounds: after a stage serves a query, the stage may name the stage the query goes to next
(``stage.next_stage(state) -> str | None``; None: the next one in the list). A jump back to an earlier stage
starts another round of that query (``QueryState.round``); the engine always serves the earliest stage that
has queries waiting, so every round of a chunk is still one batch per stage. Rounds are bounded: a query
that would go back more than ``max_rounds`` times goes on forward instead, with a note.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from itertools import islice

from agent_cir.errors import AgentCirError
from agent_cir.types import Query, QueryState, Stage, StageRecord


@dataclass
class Job:
    """One query on its way through the stages of a chunk."""

    position: int
    query: Query
    state: QueryState
    image_only: bool = False
    """The modification text is empty and a reference image is given: retrieve with the image alone."""
    loops: int = 0
    """How many times this query went back to an earlier stage."""


Outcome = StageRecord | BaseException


def timed_run(stage: Stage, state: QueryState) -> StageRecord:
    started = time.perf_counter()
    record = stage.run(state)
    record.seconds = round(time.perf_counter() - started, 6)
    return record


def reraise_interrupts(outcome: Outcome) -> Outcome:
    """KeyboardInterrupt / SystemExit stop the run; every ordinary exception is one query's failure."""
    if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
        raise outcome
    return outcome


def chunks(queries: Iterable[Query], size: int) -> Iterator[list[Query]]:
    iterator = iter(queries)
    while chunk := list(islice(iterator, size)):
        yield chunk


def stage_concurrency(stage: Stage, requested: int | None, default: int) -> int:
    """How many queries a per-query stage serves at once: what the caller asked for, else the stage model's
    own ``max_concurrency`` (so a server taking 16 requests gets 16), else the recipe's."""
    if requested:
        return max(1, requested)
    config = getattr(getattr(stage, "model", None), "config", None)
    own = getattr(config, "max_concurrency", None)
    return max(1, own if isinstance(own, int) else default)


@dataclass
class Workers:
    """The thread pool of one ``run_batch`` call and how many queries each stage may have in it at once."""

    pool: Executor
    requested: int | None
    default: int

    def limit(self, stage: Stage) -> int:
        return stage_concurrency(stage, self.requested, self.default)


def run_each(stage: Stage, jobs: list[Job], workers: Workers | None) -> Iterator[tuple[Job, Outcome]]:
    """``stage.run`` per query, up to the stage's concurrency at once; yields each query as soon as its call
    is done."""
    if workers is None or len(jobs) == 1:
        for job in jobs:
            try:
                yield job, timed_run(stage, job.state)
            except Exception as err:  # noqa: BLE001 - any error of one query is that query's failure
                yield job, err
        return
    waiting = iter(jobs)
    running: dict[Future[StageRecord], Job] = {}

    def submit_next() -> None:
        job = next(waiting, None)
        if job is not None:
            running[workers.pool.submit(timed_run, stage, job.state)] = job

    for _ in range(workers.limit(stage)):
        submit_next()
    while running:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            job = running.pop(future)
            submit_next()
            error = future.exception()
            yield job, reraise_interrupts(error) if error is not None else future.result()


def run_stage(stage: Stage, jobs: list[Job], workers: Workers | None) -> Iterator[tuple[Job, Outcome]]:
    """One stage over a chunk: its ``run_batch`` when it has one (one encoder batch, one search), else ``run``
    per query in the pool."""
    batch_run = getattr(stage, "run_batch", None)
    if batch_run is None or not jobs:
        yield from run_each(stage, jobs, workers)
        return
    started = time.perf_counter()
    try:
        outcomes = list(batch_run([job.state for job in jobs]))
        if len(outcomes) != len(jobs):
            raise AgentCirError(f"{stage.name}.run_batch returned {len(outcomes)} results for {len(jobs)} queries")
    except Exception as err:  # noqa: BLE001 - the batch as a whole failed: one by one, only the bad queries fail
        note = (f"the batched {stage.name} failed for the chunk ({type(err).__name__}: {str(err)[:200]}); "
                "this query ran on its own")
        for job, outcome in run_each(stage, jobs, workers):
            if isinstance(outcome, StageRecord):
                outcome.notes.append(note)
            yield job, outcome
        return
    share = round((time.perf_counter() - started) / len(jobs), 6)
    for job, outcome in zip(jobs, outcomes):
        reraise_interrupts(outcome)
        if isinstance(outcome, StageRecord):
            outcome.seconds = share
            outcome.notes.append(
                f"seconds amortised: this query's share of one batched {stage.name} over {len(jobs)} queries"
            )
        elif not isinstance(outcome, BaseException):
            outcome = AgentCirError(f"{stage.name}.run_batch returned {type(outcome).__name__}, not a StageRecord")
        yield job, outcome


StepFunction = Callable[[Stage, list[Job]], Iterator[tuple[Job, Outcome]]]


class RoundEngine:
    """Moves the jobs of one chunk through ``stages``, round after round, earliest waiting stage first.

    ``step(stage, jobs)`` serves one stage for some jobs (the pipeline's routing and skips around
    ``run_stage``); ``before(stage, jobs)`` runs just before a stage serves them (the hand-over into
    retrieval); ``finished(job)`` / ``failed(job, stage_name, error)`` are called as each query leaves.
    """

    def __init__(self, stages: Sequence[Stage], step: StepFunction, *, max_rounds: int = 0,
                 before: Callable[[Stage, list[Job]], None] | None = None) -> None:
        self.stages = list(stages)
        self.step = step
        self.max_rounds = max_rounds
        self.before = before
        self._index = {stage.name: index for index, stage in enumerate(self.stages)}

    def _forward(self, index: int) -> int | None:
        """The next stage after ``index`` that runs in the normal flow (stages marked ``only_when_sent``, such
        as refine, run only for the queries another stage sends to them)."""
        for following in range(index + 1, len(self.stages)):
            if not getattr(self.stages[following], "only_when_sent", False):
                return following
        return None

    def _next_index(self, index: int, job: Job, record: StageRecord) -> int | None:
        """Where the job goes after stage ``index``: None when it is done."""
        chooser = getattr(self.stages[index], "next_stage", None)
        name = chooser(job.state) if chooser is not None else None
        if name is None:
            return self._forward(index)
        target = self._index.get(name)
        if target is None:
            # a stage naming a stage this recipe did not enable: the query goes on forward
            record.notes.append(f"next stage {name!r} is not enabled; went on to the next stage")
            return self._forward(index)
        backward = target <= index
        if (backward or getattr(self.stages[target], "only_when_sent", False)) and job.loops >= self.max_rounds:
            # the way into another round (a loop-only stage, or back to an earlier one) is closed
            record.notes.append(f"stopped: the recipe allows at most {self.max_rounds} extra round(s)")
            return self._forward(index)
        if backward:
            job.loops += 1
        return target

    def run(self, jobs: list[Job], finished: Callable[[Job], None],
            failed: Callable[[Job, str, BaseException], None],
            on_stage: Callable[[StageRecord, QueryState], None] | None = None) -> None:
        start = self._forward(-1)
        waiting: dict[int, list[Job]] = {start: list(jobs)} if jobs and start is not None else {}
        if start is None:
            for job in jobs:
                finished(job)
        while waiting:
            index = min(waiting)
            batch = sorted(waiting.pop(index), key=lambda job: job.position)
            stage = self.stages[index]
            if self.before is not None:
                self.before(stage, batch)
            for job, outcome in self.step(stage, batch):
                if isinstance(outcome, BaseException):
                    failed(job, stage.name, outcome)
                    continue
                outcome.round = job.state.round
                job.state.records.append(outcome)
                if on_stage is not None:
                    on_stage(outcome, job.state)
                target = self._next_index(index, job, outcome)
                if target is None:
                    finished(job)
                else:
                    waiting.setdefault(target, []).append(job)
