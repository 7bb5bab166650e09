"""Benchmark metrics, computed exactly as the official evaluation code does. Values are percentages.

Conventions (each function names its source):
- CIRCO mAP@K: at every hit in the top K, precision at that position; summed and divided by
  min(K, number of ground truths). Recall@K: the annotated ``target_img_id`` alone is in the top K.
  (miccunifi/CIRCO src/evaluation.py.)
- CIRR Recall@K: the reference image is removed from the ranking; hit = ``target_hard`` in the top K.
  Recall_subset@K: the same ranking restricted to ``img_set.members`` minus the reference.
  (CIRR / CLIP4Cir validation code.)
- FashionIQ Recall@K: per category, the reference is NOT removed; report each category and the mean.
- GeneCIS Recall@K: rank of the target among its own official list of 15 (target first + 14 distractors, copies
  kept; genecis eval/eval_functions.py:83-124); the published Average is the mean over the four tasks.

A ranking is a list of gallery ids, best first. Duplicate ids in a ranking are an error (a duplicate would
count a hit twice in mAP). A query whose ranking is ``None`` (it failed) counts as a miss everywhere, so
a partial failure never inflates a score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from agent_cir.errors import AgentCirError

CIRCO_KS = (5, 10, 25, 50)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)
GENECIS_KS = (1, 2, 3)

Ranking = Sequence[str] | None


class MetricError(AgentCirError, ValueError):
    """A ranking cannot be scored as given (duplicates, missing subset members, unknown query)."""


def _ids(ranking: Ranking, query_id: str) -> list[str]:
    if ranking is None:
        return []
    ids = [str(item) for item in ranking]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(item for item in ids if item in seen or seen.add(item))  # type: ignore[func-returns-value]
        raise MetricError(f"query {query_id}: the ranking lists {duplicate} more than once; ids must be unique")
    return ids


def _percent(values: list[float]) -> float:
    return float(np.mean(values) * 100.0) if values else 0.0


def restrict(ranking: Sequence[str], members: Sequence[str], query_id: str) -> list[str]:
    """``ranking`` filtered to ``members`` (order kept). All members must appear: a truncated ranking that
    misses some would give a wrong subset order."""
    wanted = set(members)
    restricted = [item for item in ranking if item in wanted]
    if len(restricted) != len(wanted):
        absent = sorted(wanted - set(restricted))
        raise MetricError(
            f"query {query_id}: the ranking lacks {len(absent)} of the {len(wanted)} images the restricted metric "
            f"needs (e.g. {absent[0]}); rank the whole gallery (retrieve.k >= gallery size)"
        )
    return restricted


def recall_hits(ranked: Sequence[str], target: str, ks: Sequence[int]) -> dict[int, float]:
    return {k: float(target in ranked[:k]) for k in ks}


# ---------- CIRCO ----------
def circo_metrics(
    rankings: Mapping[str, Ranking],
    ground_truth: Mapping[str, Sequence[str]],
    targets: Mapping[str, str],
    ks: Sequence[int] = CIRCO_KS,
) -> dict[str, float]:
    """mAP@K and Recall@K over the queries in ``rankings`` (keys ``mAP@5`` ..., ``recall@5`` ...)."""
    aps: dict[int, list[float]] = {k: [] for k in ks}
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    for query_id, ranking in rankings.items():
        if query_id not in ground_truth:
            raise MetricError(f"query {query_id}: no ground truth for it in the annotations")
        predictions = _ids(ranking, query_id)
        gt = [str(g) for g in ground_truth[query_id]]
        labels = np.isin(np.asarray(predictions, dtype=object), np.asarray(gt, dtype=object)) if predictions else np.zeros(0, bool)
        precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1) if len(labels) else np.zeros(0)
        target = str(targets[query_id])
        for k in ks:
            aps[k].append(float(np.sum(precisions[:k]) / min(len(gt), k)))
            recalls[k].append(float(target in predictions[:k]))
    metrics = {f"mAP@{k}": _percent(aps[k]) for k in ks}
    metrics.update({f"recall@{k}": _percent(recalls[k]) for k in ks})
    return metrics


CIRCO_SEMANTIC_ASPECTS = (
    "cardinality", "addition", "negation", "direct_addressing", "compare_change", "comparative_statement",
    "statement_with_conjunction", "spatial_relations_background", "viewpoint",
)
"""The nine semantic aspects the official evaluator reports (CIRCO src/evaluation.py:30-32)."""


def circo_semantic_map10(
    rankings: Mapping[str, Ranking],
    ground_truth: Mapping[str, Sequence[str]],
    aspects: Mapping[str, Sequence[str]],
) -> dict[str, float]:
    """mAP@10 per semantic aspect, as the official evaluator computes it (CIRCO src/evaluation.py:66-68,
    78-80): a query's AP@10 counts once for each aspect it is annotated with, and each aspect averages
    over its queries. Keys ``semantic_mAP@10/<aspect>``, percent. An aspect none of the ranked queries
    carries is left out (the official code reports NaN for it)."""
    per_aspect: dict[str, list[float]] = {}
    for query_id, ranking in rankings.items():
        if query_id not in ground_truth:
            raise MetricError(f"query {query_id}: no ground truth for it in the annotations")
        predictions = _ids(ranking, query_id)[:10]
        gt = {str(g) for g in ground_truth[query_id]}
        hits = 0
        precision_sum = 0.0
        for position, image_id in enumerate(predictions, start=1):
            if image_id in gt:
                hits += 1
                precision_sum += hits / position
        ap10 = precision_sum / min(len(gt), 10)
        for aspect in dict.fromkeys(str(a) for a in aspects.get(query_id, ())):
            per_aspect.setdefault(aspect, []).append(ap10)
    ordered = [a for a in CIRCO_SEMANTIC_ASPECTS if a in per_aspect] + sorted(set(per_aspect) - set(CIRCO_SEMANTIC_ASPECTS))
    return {f"semantic_mAP@10/{aspect}": _percent(per_aspect[aspect]) for aspect in ordered}


# ---------- CIRR ----------
def cirr_metrics(
    rankings: Mapping[str, Ranking],
    references: Mapping[str, str],
    targets: Mapping[str, str],
    subsets: Mapping[str, Sequence[str]],
    ks: Sequence[int] = CIRR_KS,
    subset_ks: Sequence[int] = CIRR_SUBSET_KS,
) -> dict[str, float]:
    """``recall@K`` (reference removed) and ``recall_subset@K`` (img_set members minus the reference)."""
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    subset_recalls: dict[int, list[float]] = {k: [] for k in subset_ks}
    for query_id, ranking in rankings.items():
        reference, target = str(references[query_id]), str(targets[query_id])
        ranked = [item for item in _ids(ranking, query_id) if item != reference]
        for k, hit in recall_hits(ranked, target, ks).items():
            recalls[k].append(hit)
        members = [str(m) for m in subsets[query_id] if str(m) != reference]
        subset_ranked = restrict(ranked, members, query_id) if ranking is not None else []
        for k, hit in recall_hits(subset_ranked, target, subset_ks).items():
            subset_recalls[k].append(hit)
    metrics = {f"recall@{k}": _percent(recalls[k]) for k in ks}
    metrics.update({f"recall_subset@{k}": _percent(subset_recalls[k]) for k in subset_ks})
    return metrics


# ---------- FashionIQ ----------
def fashioniq_metrics(
    rankings: Mapping[str, Ranking], targets: Mapping[str, str], ks: Sequence[int] = FASHIONIQ_KS
) -> dict[str, float]:
    """``recall@K`` for one category; the reference is not removed (FashionIQ convention)."""
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    for query_id, ranking in rankings.items():
        for k, hit in recall_hits(_ids(ranking, query_id), str(targets[query_id]), ks).items():
            recalls[k].append(hit)
    return {f"recall@{k}": _percent(recalls[k]) for k in ks}


def fashioniq_mean(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over categories of each recall (the papers' "Avg." columns), plus ``average`` = mean of them all."""
    if not per_category:
        return {}
    keys = list(next(iter(per_category.values())))
    mean = {key: float(np.mean([values[key] for values in per_category.values()])) for key in keys}
    mean["average"] = float(np.mean(list(mean.values())))
    return mean


# ---------- GeneCIS ----------
def genecis_list_rank(ranking: Sequence[str], gallery: Sequence[str], query_id: str) -> int:
    """1-based rank of the target in the OFFICIAL 15-entry list ``gallery`` (target first, then the distractors,
    copies kept), given a ranking of distinct gallery ids.

    The official code sorts the 15 similarities (``similarities.sort(descending=True)``, genecis
    eval/eval_functions.py:118) and counts a hit at K when entry 0 (the target) is in the first K. A copy of an image
    has the same embedding, hence the same similarity, so: a distractor counts once per copy when its image ranks
    above the target, and a copy of the target itself ties with entry 0 and does not push it down (the order a
    stable sort keeps: the lower index first). rank = 1 + number of entries 1..14 whose image ranks above the target.
    """
    members = list(dict.fromkeys(str(g) for g in gallery))
    order = {item: position for position, item in enumerate(restrict(ranking, members, query_id))}
    target = order[str(gallery[0])]
    return 1 + sum(1 for entry in gallery[1:] if order[str(entry)] < target)


def genecis_metrics(
    rankings: Mapping[str, Ranking],
    targets: Mapping[str, str],
    galleries: Mapping[str, Sequence[str]],
    ks: Sequence[int] = GENECIS_KS,
) -> dict[str, float]:
    """``recall@K`` of the target among the query's official list (``galleries[q]``: target first + distractors)."""
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    for query_id, ranking in rankings.items():
        gallery = [str(g) for g in galleries[query_id]]
        if not gallery or gallery[0] != str(targets[query_id]):
            gallery = [str(targets[query_id]), *(g for g in gallery if g != str(targets[query_id]))]
        rank = genecis_list_rank(_ids(ranking, query_id), gallery, query_id) if ranking is not None else None
        for k in ks:
            recalls[k].append(float(rank is not None and rank <= k))
    return {f"recall@{k}": _percent(recalls[k]) for k in ks}


def genecis_average(per_task: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> dict[str, float] | None:
    """Mean over the four tasks of each recall (the papers' "Average" column); None unless every task is present."""
    if any(task not in per_task for task in tasks):
        return None
    keys = list(per_task[tasks[0]])
    return {key: float(np.mean([per_task[task][key] for task in tasks])) for key in keys}
