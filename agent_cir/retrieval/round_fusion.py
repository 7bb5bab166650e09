"""The final order of a retrieve -> verify (-> refine) loop from the verified candidates of every round.

Each round contributes its verified head: (gallery id, verifier confidence, retrieval score), in retrieval
order. The rules (``verify.fusion``):

- ``confidence``: every verified candidate of every round, each with its best confidence over the rounds
  (and the retrieval score of the round that gave it), ordered by confidence, then retrieval score, then
  first appearance. WISER's adaptive fusion (docs/PROTOCOLS.md, "wiser").
- ``last_round``: only the last round's verified head, by confidence, then retrieval score.
- ``rrf``: reciprocal-rank fusion of the rounds' confidence orders: score = sum over rounds of
  1 / (rrf_k + rank), rank 1-based; ties by best confidence, then first appearance.

A confidence of None (an answer that could not be read) sorts below every number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RoundItems = Sequence[tuple[str, float | None, float]]
"""One round's verified head: (gallery id, confidence or None, retrieval score), in retrieval order."""


@dataclass(frozen=True)
class FusedItem:
    id: str
    confidence: float | None
    retrieval: float
    score: float
    """The value the order follows (the confidence, or the RRF score)."""


def _confidence_key(value: float | None) -> float:
    return -1.0 if value is None else float(value)


def _confidence_order(items: RoundItems) -> list[tuple[str, float | None, float]]:
    indexed = list(enumerate(items))
    indexed.sort(key=lambda pair: (-_confidence_key(pair[1][1]), -pair[1][2], pair[0]))
    return [item for _, item in indexed]


def fuse_rounds(rounds: Sequence[RoundItems], rule: str = "confidence", rrf_k: int = 60) -> list[FusedItem]:
    if not rounds:
        return []
    if rule == "last_round":
        return [FusedItem(i, c, r, _confidence_key(c)) for i, c, r in _confidence_order(rounds[-1])]
    first_seen: dict[str, int] = {}
    best: dict[str, tuple[float | None, float]] = {}
    for items in rounds:
        for gallery_id, confidence, retrieval in items:
            first_seen.setdefault(gallery_id, len(first_seen))
            held = best.get(gallery_id)
            if held is None or _confidence_key(confidence) > _confidence_key(held[0]):
                best[gallery_id] = (confidence, retrieval)
    if rule == "confidence":
        ordered = sorted(best, key=lambda i: (-_confidence_key(best[i][0]), -best[i][1], first_seen[i]))
        return [FusedItem(i, best[i][0], best[i][1], _confidence_key(best[i][0])) for i in ordered]
    if rule == "rrf":
        scores = dict.fromkeys(best, 0.0)
        for items in rounds:
            for rank, (gallery_id, _c, _r) in enumerate(_confidence_order(items), start=1):
                scores[gallery_id] += 1.0 / (rrf_k + rank)
        ordered = sorted(best, key=lambda i: (-scores[i], -_confidence_key(best[i][0]), first_seen[i]))
        return [FusedItem(i, best[i][0], best[i][1], scores[i]) for i in ordered]
    raise ValueError(f"unknown fusion rule {rule!r}; expected confidence, last_round or rrf")
