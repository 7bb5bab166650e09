"""The final ranking as the CLI shows it: each row with the score that produced its position."""

from __future__ import annotations

from typing import Any


def _flag(row: dict[str, Any], mark: str | None) -> str:
    return "  <- target" if mark is not None and row["id"] == mark else ""


def ranking_rows(result: Any, recipe: Any = None) -> tuple[str, list[dict[str, Any]]]:
    """The final ranking with the score that produced each position.

    Returns (ordered_by, rows): ``ordered_by`` is the result's own (``retrieval`` (cosine), ``judge``, ``fused``
    or ``verifier``); each row has the retrieval ``score`` and, for candidates a later stage scored, the score
    that ordered them (``rerank_score``: the judge's or fused score, or the verifier's confidence).
    """
    ordered_by = getattr(result, "ordered_by", "retrieval") or "retrieval"
    rows = []
    for candidate in result.candidates:
        row = {"rank": candidate.rank, "path": candidate.path or candidate.id, "id": candidate.id,
               "score": round(float(candidate.score), 6)}
        if ordered_by != "retrieval":
            value = candidate.final_score if candidate.final_score is not None else (
                candidate.verify_score if ordered_by == "verifier" else candidate.judge_score)
            row["rerank_score"] = None if value is None else round(float(value), 6)
        rows.append(row)
    return ordered_by, rows


def format_ranking(ordered_by: str, rows: list[dict[str, Any]], mark: str | None = None) -> list[str]:
    """Text table whose first score column is the one that produced the order; ``mark`` flags one id."""
    if ordered_by == "retrieval":
        lines = [f"{'rank':>4}  {'cosine':>8}  path"]
        lines += [f"{row['rank']:>4}  {row['score']:>8.4f}  {row['path']}{_flag(row, mark)}" for row in rows]
        return lines
    lines = [f"{'rank':>4}  {ordered_by:>8}  {'cosine':>8}  path"]
    for row in rows:
        first = "-" if row.get("rerank_score") is None else f"{row['rerank_score']:.4f}"
        lines.append(f"{row['rank']:>4}  {first:>8}  {row['score']:>8.4f}  {row['path']}{_flag(row, mark)}")
    if any(row.get("rerank_score") is None for row in rows):
        judged = "verifier" if ordered_by == "verifier" else "judge"
        lines.append(f"(rows with '-' were not shown to the {judged}; they follow in retrieval order)")
    return lines
