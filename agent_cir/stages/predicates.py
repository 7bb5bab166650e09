"""Predicates stage: ImageScope's stage 2 (predicate verification) on our engine.

For each query, one call to a text model splits the modification into atomic propositions, each a yes/no
question with the answer the wanted image must give (True / False); then an MLLM answers every question for
each of the top ``k`` candidates (default 20), looking at the candidate image alone. A candidate's score is the
number of its answers that equal the expected ones; the top ``k`` are reordered by that score (a stable sort:
ties keep their retrieval order) and the rest of the ranking stays below them.

Official (pengfei-luo/ImageScope @ 7e33f14): propositions from ``prompts/<dataset>/prompt2_stage2_reasoner.txt``
(imagescope.py:393-462), questions asked as "Answer the question with Yes or No. <q>" with the candidate
image alone (imagescope.py:480-483, utils/inference_entrypoint_ray.py:108-139), an answer counts as yes when
"yes" occurs in it (imagescope.py:558), score = matches (imagescope.py:559-562), stable sort of the top k by
-score (imagescope.py:589-597). Differences are listed in docs/PROTOCOLS.md.

With ``scoring: auto`` and a local model, the yes/no comes from P(yes) >= 0.5 (one batched forward per
``batch_size`` questions) instead of generated text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_cir.config import PredicatesConfig
from agent_cir.errors import AgentCirError
from agent_cir.parsing import extract_json
from agent_cir.prompts import load_prompt
from agent_cir.rerank.yes_no import ask_yes_no_many
from agent_cir.retrieval.ranking import Ranking
from agent_cir.trace.outputs import PredicateCandidate, PredicatesOutput, Proposition
from agent_cir.types import QueryState, StageRecord

MAX_PROPOSITIONS = 8
"""More questions than this are dropped: each costs k MLLM calls (ImageScope's examples have 1-3)."""
MAX_QUESTION_CHARS = 300
_TRUE = frozenset({"true", "yes", "1", "t", "y"})
_FALSE = frozenset({"false", "no", "0", "f", "n"})


@dataclass(frozen=True)
class ParsedPropositions:
    propositions: list[Proposition]
    dropped: int
    """Entries that were not a (question, True/False) pair."""


def _expected(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().strip(".()\"'*").strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def _proposition(entry: Any) -> Proposition | None:
    if isinstance(entry, (list, tuple)) and len(entry) == 2:  # ImageScope keeps only two-element entries
        question, answer = entry
    elif isinstance(entry, dict):
        question = entry.get("question", entry.get("q"))
        answer = entry.get("answer", entry.get("a", entry.get("expected")))
    else:
        return None
    expected = _expected(answer)
    if not isinstance(question, str) or expected is None:
        return None
    text = " ".join(question.split())[:MAX_QUESTION_CHARS]
    return Proposition(question=text, expected=expected) if text else None


def parse_propositions(raw: str | None) -> ParsedPropositions:
    """The (question, expected answer) pairs of a proposition answer; never raises (hostile text: none)."""
    data = extract_json(raw or "", prefer=dict)
    entries: Any = None
    if isinstance(data, dict):
        entries = data.get("questions", data.get("step2", data.get("propositions")))
    elif isinstance(data, list):
        entries = data
    if not isinstance(entries, list):
        return ParsedPropositions([], 0)
    found: list[Proposition] = []
    dropped = 0
    for entry in entries:
        proposition = _proposition(entry)
        if proposition is None:
            dropped += 1
        elif proposition.question not in {p.question for p in found}:
            found.append(proposition)
    return ParsedPropositions(found[:MAX_PROPOSITIONS], dropped + max(0, len(found) - MAX_PROPOSITIONS))


def answered_yes(raw: str | None) -> bool:
    """ImageScope's reading of a generated answer: yes when "yes" occurs in it (imagescope.py:558)."""
    return "yes" in (raw or "").strip().lower()


class PredicatesStage:
    """Reorders the top ``config.k`` candidates by how many propositions each one satisfies."""

    name = "predicates"

    def __init__(self, config: PredicatesConfig, model: Any, reasoner: Any, cache: Any = None) -> None:
        self.config = config
        self.model = model
        self.reasoner = reasoner
        self.cache = cache
        self.prompt = load_prompt(config.prompt)
        self.question_prompt = load_prompt(config.question_prompt)

    def _propositions(self, state: QueryState, record: StageRecord) -> ParsedPropositions:
        from agent_cir.backends import invoke

        caption = state.captions[0] if state.captions else state.query.reference_caption
        messages = self.prompt.render_messages(
            modification=state.query.text, reference_caption=caption,
            target_description=state.target_descriptions[0] if state.target_descriptions else None)
        try:
            call = invoke(self.reasoner, messages, prompt=self.prompt, cache=self.cache)
        except AgentCirError as err:
            raise type(err)(f"query {state.query.id}, predicates stage, proposition call: {err}") from err
        parsed = parse_propositions(call.raw)
        call.parse_status = ("ok" if parsed.propositions and not parsed.dropped  # type: ignore[assignment]
                             else "repaired" if parsed.propositions else "fallback")
        record.calls.append(call)
        return parsed

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name)
        head = list(state.candidates[: self.config.k])
        if not head:
            record.skipped = "no candidates to verify (retrieval returned none)"
            return record
        parsed = self._propositions(state, record)
        if not parsed.propositions:
            # ImageScope leaves such a query in its retrieval order (imagescope.py:469-472)
            record.parse_status = "fallback"
            record.skipped = "no usable proposition in the model's answer; retrieval order kept"
            record.output = PredicatesOutput(k=len(head), dropped=parsed.dropped)
            return record
        shown = [c for c in head if c.path and Path(c.path).is_file()]
        questions, images = [], []
        for candidate in shown:
            for proposition in parsed.propositions:
                questions.append(self.question_prompt.render_messages(question=proposition.question))
                images.append([candidate.path])
        try:
            verdicts = ask_yes_no_many(self.model, questions, prompt=self.question_prompt, images=images,
                                       cache=self.cache, scoring=self.config.scoring)
        except AgentCirError as err:
            raise type(err)(f"query {state.query.id}, predicates stage: {err}") from err
        per_candidate = len(parsed.propositions)
        answers_of: dict[str, list[bool]] = {}
        for index, candidate in enumerate(shown):
            answers = []
            for verdict in verdicts[index * per_candidate:(index + 1) * per_candidate]:
                verdict.call.parse_status = "ok"  # type: ignore[assignment]
                record.calls.append(verdict.call)
                said_yes = (verdict.confidence >= 0.5 if verdict.source in ("logits", "logprobs")
                            and verdict.confidence is not None else answered_yes(verdict.call.raw))
                answers.append(said_yes)
            answers_of[candidate.id] = answers
        expected = [p.expected for p in parsed.propositions]
        scored: list[PredicateCandidate] = []
        for candidate in head:
            answers = answers_of.get(candidate.id)
            satisfied = sum(a == e for a, e in zip(answers, expected)) if answers is not None else 0
            scored.append(PredicateCandidate(id=candidate.id, retrieval=round(float(candidate.score), 6),
                                             answers=answers, satisfied=satisfied))
        order = sorted(range(len(head)), key=lambda i: -scored[i].satisfied)  # stable: ties keep retrieval order
        ranking = state.ranking if state.ranking is not None else Ranking.from_candidates(state.candidates)
        state.ranking = ranking.with_head(order, "verifier",
                                          verify=[scored[i].satisfied / per_candidate for i in order])
        state.candidates = state.ranking.head(len(state.candidates))
        missing = len(head) - len(shown)
        if missing:
            record.notes.append(f"{missing} candidate(s) without an image file scored 0 (nothing to show)")
        record.parse_status = "repaired" if parsed.dropped or missing else "ok"
        record.output = PredicatesOutput(
            k=len(head), propositions=parsed.propositions, dropped=parsed.dropped, scoring=self.config.scoring,
            candidates=[scored[i] for i in order], final_order=[head[i].id for i in order],
        )
        record.seconds = time.perf_counter() - started
        return record
