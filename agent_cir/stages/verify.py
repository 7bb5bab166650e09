"""Verify stage: is each of the top-k candidates the reference changed as asked? A yes/no judgement per candidate,
with its confidence P(yes) and a short reason, then the query's decision for the loop.

Decision (``output.decision``): ``accept`` when the best confidence exceeds ``verify.threshold``; ``refine`` when it
does not and the recipe's refine stage has rounds left (the engine sends the query to ``refine``, which starts
the next round); ``stopped`` when no rounds are left; ``unverified`` when there is no refine stage. When a query
leaves the loop, the rounds are fused into the final order (``agent_cir.retrieval.round_fusion``): the verified
candidates first, the rest of the last round's ranking after them.

The verifier sees exactly what it judges: the modification text verbatim, and in ``input: caption`` mode the
candidate's gallery captions verbatim; in ``input: image`` mode the reference image and the candidate image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent_cir.config import RefineConfig, VerifyConfig
from agent_cir.errors import AgentCirError
from agent_cir.retrieval.gallery import captions_of
from agent_cir.prompts import load_prompt
from agent_cir.rerank.yes_no import YesNo, ask_yes_no_many
from agent_cir.retrieval.ranking import Ranking
from agent_cir.retrieval.round_fusion import fuse_rounds
from agent_cir.trace.outputs import VerifyOutput
from agent_cir.types import Candidate, QueryState, StageRecord

CaptionSource = Mapping[str, Any] | Callable[[str], Any]


def verify_prompt_name(config: VerifyConfig) -> str:
    return config.prompt or f"verify_{config.input}"


class VerifyStage:
    """Fills ``state.verification`` and appends the round to ``state.rounds``; reorders the ranking when the
    query leaves the loop."""

    name = "verify"

    def __init__(self, config: VerifyConfig, model: Any, cache: Any = None, *, refine: RefineConfig | None = None,
                 candidate_captions: CaptionSource | None = None,
                 reference_path: Callable[[QueryState], str | None] | None = None) -> None:
        self.config = config
        self.model = model
        self.cache = cache
        self.refine = refine if refine is not None and refine.enabled else None
        self.prompt = load_prompt(verify_prompt_name(config))
        self.candidate_captions = candidate_captions
        self.reference_path = reference_path or (lambda state: state.query.image)
        if config.input == "caption" and candidate_captions is None:
            raise AgentCirError(
                "verify.input is 'caption' but the gallery has no captions; attach the gallery's captions "
                "(retrieve.gallery_captions / --gallery-captions) or use verify.input: image"
            )

    # ---------- one candidate ----------
    def _missing_input(self, candidate: Candidate) -> str | None:
        if self.config.input == "caption":
            if not captions_of(self.candidate_captions, candidate.id, 1):
                return f"candidate {candidate.id} has no gallery caption to verify"
        elif not candidate.path or not Path(candidate.path).is_file():
            return f"candidate {candidate.id} has no image file to verify"
        return None

    def _question(self, state: QueryState, candidate: Candidate, reference: str | None
                  ) -> tuple[list[tuple[str, str]], list[Any]]:
        """The rendered messages and the images of the question about one candidate."""
        query = state.query
        caption = state.captions[0] if state.captions else query.reference_caption
        if self.config.input == "caption":
            captions = captions_of(self.candidate_captions, candidate.id, self.config.max_captions)
            messages = self.prompt.render_messages(modification=query.text, reference_caption=caption,
                                                   candidate_captions=captions)
            return messages, []
        images = ([reference] if reference else []) + [candidate.path]
        messages = self.prompt.render_messages(modification=query.text, reference_caption=caption,
                                               has_reference=bool(reference))
        return messages, images

    def _ask_all(self, state: QueryState, candidates: list[Candidate], reference: str | None) -> list[YesNo]:
        """One verdict per candidate; a local model scores them all in one batched forward."""
        questions = [self._question(state, candidate, reference) for candidate in candidates]
        try:
            return ask_yes_no_many(self.model, [m for m, _ in questions], prompt=self.prompt,
                                   images=[i for _, i in questions], cache=self.cache, scoring=self.config.scoring)
        except AgentCirError as err:
            ids = ", ".join(c.id for c in candidates[:5])
            raise type(err)(f"query {state.query.id}, verify stage, candidates {ids}: {err}") from err

    # ---------- the stage ----------
    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name)
        head = list(state.candidates[: self.config.k])
        reference = self.reference_path(state) if self.config.input == "image" else None
        if reference and not Path(reference).is_file():
            reference = None
        items: list[dict[str, Any]] = []
        askable = [c for c in head if self._missing_input(c) is None]
        verdicts = dict(zip((c.id for c in askable), self._ask_all(state, askable, reference))) if askable else {}
        for candidate in head:
            item: dict[str, Any] = {"id": candidate.id, "retrieval": round(float(candidate.score), 6)}
            verdict = verdicts.get(candidate.id)
            if verdict is None:
                # nothing to show the verifier: no confidence for this candidate, recorded, the query goes on
                item.update({"confidence": None, "source": "unparsed", "answer": None,
                             "reason": self._missing_input(candidate)})
                items.append(item)
                continue
            verdict.call.parse_status = "ok" if verdict.confidence is not None else "fallback"  # type: ignore[assignment]
            record.calls.append(verdict.call)
            item.update({"confidence": None if verdict.confidence is None else round(float(verdict.confidence), 6),
                         "source": verdict.source, "answer": verdict.answer, "reason": verdict.reason})
            items.append(item)
        sources = {item["source"] for item in items}
        record.parse_status = "fallback" if sources == {"unparsed"} else "repaired" if "unparsed" in sources else "ok"
        if "answer" in sources:
            record.notes.append("some confidences are parsed answers (1 = yes, 0 = no): the backend gave no token "
                                "probabilities for them")
        confidences = [item["confidence"] for item in items if item["confidence"] is not None]
        best = max(confidences) if confidences else None
        decision = self._decide(state, best)
        output: dict[str, Any] = {"input": self.config.input, "k": len(head), "threshold": self.config.threshold,
                                  "items": items, "best_confidence": best, "decision": decision}
        state.verification = {"round": state.round, "items": items, "best_confidence": best, "decision": decision}
        state.rounds.append({
            "round": state.round, "description": list(state.target_descriptions), "head": [c.id for c in head],
            "confidences": [item["confidence"] for item in items], "retrieval": [item["retrieval"] for item in items],
            "best_confidence": best, "decision": decision,
        })
        if decision != "refine":
            output.update(self._fuse(state))
        record.output = VerifyOutput.model_validate(output)
        record.seconds = time.perf_counter() - started
        return record

    def _decide(self, state: QueryState, best: float | None) -> str:
        # WISER accepts a query when its best confidence exceeds the threshold (src/utils.py:646-649)
        if best is not None and best > self.config.threshold:
            return "accept"
        if self.refine is None:
            return "unverified"
        if state.description_source == "manual":
            return "stopped"  # a hand-written target description is never rewritten
        if state.round >= self.refine.max_rounds:
            return "stopped"
        return "refine"

    def _fuse(self, state: QueryState) -> dict[str, Any]:
        rounds = [list(zip(r["head"], r["confidences"], r["retrieval"])) for r in state.rounds]
        if state.dual_paths:  # retrieve.dual_fusion wiser: the two paths' confidences summed
            from agent_cir.retrieval.dual import wiser_fusion

            fused = wiser_fusion(rounds, state.dual_paths)
        else:
            fused = fuse_rounds(rounds, self.config.fusion, self.config.rrf_k)
        ranking = state.ranking if state.ranking is not None else Ranking.from_candidates(state.candidates)
        positions = [ranking.lookup(item.id) for item in fused]
        kept = [(item, p) for item, p in zip(fused, positions) if p is not None]
        state.ranking = ranking.lead_with(
            [p for _, p in kept], [item.retrieval for item, _ in kept], "verifier",
            verify=[item.confidence for item, _ in kept], final=[item.score for item, _ in kept],
        )
        state.candidates = state.ranking.head(max(len(state.candidates), len(kept)))
        return {"fusion": "wiser_paths" if state.dual_paths else self.config.fusion, "final_order": [item.id for item, _ in kept]}

    def next_stage(self, state: QueryState) -> str | None:
        """To ``refine`` when the query goes round again; else on past it."""
        verification = state.verification or {}
        return "refine" if verification.get("decision") == "refine" else None
