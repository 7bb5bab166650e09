"""What the dialogue prompts receive: the turns of a session turned into template variables (the user's words stay
values inside the user message), the question read from a model's answer, and the uncertainty rule that decides
when the agent asks."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_cir.session.turns import ShownResult, TurnRecord, Uncertainty

MAX_TEXT_CHARS = 500
"""One request as the prompt shows it: longer ones are cut (a prompt is not a place for pasted documents)."""
MAX_QUESTION_CHARS = 200
MAX_REJECTED = 6

_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(text: str | None, limit: int = MAX_TEXT_CHARS) -> str:
    """A user's text as one prompt line: control characters dropped, whitespace runs (newlines too) made one space,
    so a request cannot fake further lines of the dialogue list."""
    cleaned = _WHITESPACE.sub(" ", _CONTROL.sub(" ", text or "")).strip()
    return cleaned[:limit]


@dataclass
class DialogueView:
    """The session seen from its current reference: what the next rewrite or question is built from."""

    reference_caption: str | None
    earlier: list[str] = field(default_factory=list)
    """Requests made before the current reference was picked (the picked image already shows them)."""
    dialogue: list[dict[str, str | None]] = field(default_factory=list)
    """Requests since the current reference, in order: ``{"text": ..., "question": ... or None}``."""
    rejected: list[str] = field(default_factory=list)

    def requests(self) -> list[str]:
        return [str(turn["text"]) for turn in self.dialogue]

    def rewrite_variables(self) -> dict[str, Any]:
        return {"reference_caption": self.reference_caption, "earlier": list(self.earlier),
                "dialogue": [dict(turn) for turn in self.dialogue], "rejected": list(self.rejected)}

    def question_variables(self, candidates: Sequence[str]) -> dict[str, Any]:
        return {"reference_caption": self.reference_caption, "dialogue": [dict(turn) for turn in self.dialogue],
                "candidates": [one_line(text) for text in candidates]}


def dialogue_view(turns: Sequence[TurnRecord], reference_caption: str | None, rejected_per_turn: int,
                  describe: Callable[[str], str]) -> DialogueView:
    """The view of ``turns`` (oldest first) from the latest reference. ``describe(gallery_id)`` names a result for
    the rejected list (its caption, else its id): a search turn the user moved on from without picking gives its
    first ``rejected_per_turn`` results."""
    view = DialogueView(reference_caption=reference_caption)
    last_search: TurnRecord | None = None
    for turn in turns:
        if turn.kind == "pick":
            view.earlier += view.requests()
            view.dialogue = []
            view.rejected = []
            last_search = None
            continue
        if last_search is not None and rejected_per_turn:
            for shown in last_search.results[:rejected_per_turn]:
                text = one_line(describe(shown.id))
                if text and text not in view.rejected:
                    view.rejected.append(text)
        view.dialogue.append({"text": one_line(turn.text), "question": one_line(turn.question, MAX_QUESTION_CHARS) or None})
        if turn.results:
            last_search = turn
    view.rejected = view.rejected[-MAX_REJECTED:]
    return view


def read_question(raw: str) -> str | None:
    """The question in a model's answer: its first non-empty line, without a label or quotes, at most
    :data:`MAX_QUESTION_CHARS`; None when there is none."""
    for line in (raw or "").splitlines():
        text = one_line(line, MAX_QUESTION_CHARS * 2)
        text = re.sub(r"^(question|q)\s*[:\-]\s*", "", text, flags=re.IGNORECASE).strip().strip("\"'`").strip()
        if text:
            return text[:MAX_QUESTION_CHARS]
    return None


def uncertainty_of(results: Sequence[ShownResult], confidence: float, margin: float) -> Uncertainty:
    """Verifier confidence in the first result when the verifier scored it (below ``confidence``: uncertain),
    else the retrieval score margin between the first two results (below ``margin``: uncertain)."""
    if not results:
        return Uncertainty(signal="none", uncertain=True)
    first = results[0]
    if first.verify_score is not None:
        return Uncertainty(signal="verifier", value=first.verify_score, threshold=confidence,
                           uncertain=first.verify_score < confidence)
    if len(results) < 2:
        return Uncertainty(signal="none")
    scores = sorted((float(shown.score) for shown in results), reverse=True)  # a reranked head is out of score order
    gap = scores[0] - scores[1]
    return Uncertainty(signal="margin", value=gap, threshold=margin, uncertain=gap < margin)
