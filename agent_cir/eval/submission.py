"""Test-split submission files in the formats the official servers accept.

- CIRCO test (https://circo.micc.unifi.it): one JSON object ``{"<query id>": [50 unique COCO ids as ints]}``
  covering every test query.
- CIRR test1 (https://cirr.cecs.anu.edu.au): two JSON objects keyed by ``pairid`` (as a string), each with the
  two extra entries ``"version": "rc2"`` and ``"metric"``: ``recall`` holds the top 50 of the ranking with the
  reference removed; ``recall_subset`` the top 3 of that ranking restricted to ``img_set.members``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent_cir.errors import AgentCirError
from agent_cir.eval.metrics import Ranking, restrict

CIRCO_TOP = 50
CIRR_TOP = 50
CIRR_SUBSET_TOP = 3


class SubmissionError(AgentCirError):
    """A submission cannot be written in the server's format (too few or duplicate ids, missing queries)."""


def _unique_top(query_id: str, ranking: Ranking, top: int) -> list[str]:
    ids = [str(item) for item in (ranking or [])]
    if len(set(ids)) != len(ids):
        raise SubmissionError(f"query {query_id}: the ranking has duplicate ids; the server rejects them")
    if len(ids) < top:
        raise SubmissionError(
            f"query {query_id}: {len(ids)} ranked ids, the server needs {top}; raise retrieve.k to at least {top}"
        )
    return ids[:top]


def require_every_query(what: str, rankings: Mapping[str, Ranking], query_ids: Sequence[str] | None) -> None:
    """The servers score a file only when every test query is in it: refuse a partial one, listing what is missing."""
    if query_ids is None:
        return
    absent = [str(q) for q in query_ids if q not in rankings or rankings[q] is None]
    if absent:
        shown = ", ".join(absent[:20]) + (f" ... ({len(absent) - 20} more)" if len(absent) > 20 else "")
        raise SubmissionError(
            f"{what} submission: {len(absent)} test queries have no ranking (missing ids: {shown}); the server needs "
            "every query. Rerun into the same --out to finish them (see failures.jsonl for why they failed)"
        )


def circo_submission(rankings: Mapping[str, Ranking], query_ids: Sequence[str] | None = None) -> dict[str, list[int]]:
    """``{query_id: [50 ints]}``; ``query_ids`` (all test queries) must all be present when given."""
    require_every_query("CIRCO", rankings, query_ids)
    return {str(q): [int(i) for i in _unique_top(q, rankings[q], CIRCO_TOP)] for q in rankings}


def cirr_submissions(
    rankings: Mapping[str, Ranking],
    references: Mapping[str, str],
    subsets: Mapping[str, Sequence[str]],
    query_ids: Sequence[str] | None = None,
) -> tuple[dict[str, object], dict[str, object]]:
    """The ``recall`` and ``recall_subset`` submission objects for CIRR test1."""
    require_every_query("CIRR test1", rankings, query_ids)
    recall: dict[str, object] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, object] = {"version": "rc2", "metric": "recall_subset"}
    for query_id, ranking in rankings.items():
        reference = str(references[query_id])
        ranked = [str(item) for item in (ranking or []) if str(item) != reference]
        recall[str(query_id)] = _unique_top(query_id, ranked, CIRR_TOP)
        members = [str(m) for m in subsets[query_id] if str(m) != reference]
        subset[str(query_id)] = _unique_top(query_id, restrict(ranked, members, query_id), CIRR_SUBSET_TOP)
    return recall, subset


def write_json(path: str | Path, payload: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path
