"""Rank maths: combining passes (Borda, reciprocal rank), agreement (Kendall tau, top-1), score fusion."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from agent_cir.config.names import AGGREGATION_METHODS, check_registry


def borda_points(position: int, n: int, rrf_k: int) -> float:
    """An item at 0-based position p of n earns n - 1 - p points."""
    return float(n - 1 - position)


def rrf_points(position: int, n: int, rrf_k: int) -> float:
    """An item at 1-based rank r earns 1 / (rrf_k + r) (Cormack et al. 2009)."""
    return 1.0 / (rrf_k + position + 1)


AGGREGATIONS: dict[str, Callable[[int, int, int], float]] = {"borda": borda_points, "rrf": rrf_points}
"""Aggregation name (``rerank.aggregation``) -> points for one item at one position of one ranking. The names are
declared in ``agent_cir/config/names.py`` AGGREGATION_METHODS (what the recipe schema accepts), checked equal here."""
check_registry("rerank aggregations", AGGREGATION_METHODS, AGGREGATIONS, "agent_cir/rerank/aggregate.py AGGREGATIONS")


def aggregate_rankings(
    rankings: Sequence[Sequence[int]], method: str = "borda", rrf_k: int = 60
) -> tuple[list[int], dict[int, float]]:
    """Combine full rankings of the items ``0..n-1`` (best first) into one.

    borda: an item at 0-based position p of n earns n - 1 - p points per ranking.
    rrf: an item at 1-based rank r earns 1 / (rrf_k + r) per ranking.
    Ties go to the item with the smaller index (the retrieval order). Returns (order, scores).
    """
    if not rankings:
        raise ValueError("aggregate_rankings needs at least one ranking")
    points = AGGREGATIONS.get(method)
    if points is None:
        raise ValueError(f"unknown aggregation {method!r} ({' or '.join(AGGREGATIONS)})")
    n = len(rankings[0])
    scores = {item: 0.0 for item in range(n)}
    for ranking in rankings:
        if sorted(ranking) != list(range(n)):
            raise ValueError(f"not a full ranking of 0..{n - 1}: {list(ranking)}")
        for position, item in enumerate(ranking):
            scores[item] += points(position, n, rrf_k)
    order = sorted(range(n), key=lambda item: (-scores[item], item))
    return order, scores


def kendall_tau(first: Sequence[int], second: Sequence[int]) -> float:
    """Kendall rank correlation of two full rankings of the same items: 1 same order, -1 reversed."""
    if sorted(first) != sorted(second):
        raise ValueError("kendall_tau needs two rankings of the same items")
    n = len(first)
    if n < 2:
        return 1.0
    position = {item: index for index, item in enumerate(second)}
    concordant = discordant = 0
    for a, b in itertools.combinations(first, 2):  # a before b in ``first``
        if position[a] < position[b]:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / (n * (n - 1) / 2)


def pass_agreement(rankings: Sequence[Sequence[int]], aggregated: Sequence[int]) -> dict[str, float] | None:
    """How much the passes agree: mean pairwise Kendall tau and the share of passes whose top-1 is the
    aggregated top-1. None with a single pass."""
    if len(rankings) < 2:
        return None
    taus = [kendall_tau(a, b) for a, b in itertools.combinations(rankings, 2)]
    top1 = sum(1 for ranking in rankings if ranking[0] == aggregated[0]) / len(rankings)
    return {"kendall_tau_mean": round(sum(taus) / len(taus), 6), "top1_agreement": round(top1, 6)}


def fuse_scores(retrieval: Sequence[float], judge: Sequence[float], weight: float) -> list[float]:
    """w * minmax(retrieval) + (1 - w) * judge, with judge scores already in [0, 1]."""
    low, high = min(retrieval), max(retrieval)
    spread = high - low
    scaled = [(score - low) / spread if spread > 0 else 1.0 for score in retrieval]
    return [weight * r + (1.0 - weight) * j for r, j in zip(scaled, judge)]


def rank_to_unit(n: int) -> list[float]:
    """Judge scores for ranks 1..n: 1 for the best, 0 for the worst (1 for a single item)."""
    if n == 1:
        return [1.0]
    return [1.0 - position / (n - 1) for position in range(n)]
