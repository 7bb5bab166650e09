"""agent-cir report: a static HTML report of a traces file or an eval run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from agent_cir.cli._app import app
from agent_cir.cli._common import echo, user_errors


@app.command("report")
def report(
    source: Path = typer.Argument(..., help="traces.jsonl, or an eval run folder (run.json, metrics.json, traces.jsonl)."),
    out: Path = typer.Option(
        ..., "--out", "-o",
        help="Folder to write the report into (index.html, queries/, thumbs/): a new or empty folder, or one an "
             "earlier report wrote (it holds a .agent_cir_report marker). Other folders are refused: the report "
             "never overwrites or deletes files it did not write.",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N queries (after --filter)."),
    filter_: str = typer.Option(
        "all", "--filter",
        help="Keep queries of one status: all, lost (target not in the retrieval top-k), improved or hurt "
             "(rerank moved the target up or down), hit, unknown (no ground truth).",
    ),
    page_size: int = typer.Option(100, "--page-size", min=1, help="Queries per index page."),
    gallery: list[Path] = typer.Option(
        [], "--gallery",
        help="A folder whose images the report may show (repeatable): an images folder or an index folder. An eval "
             "run folder records its own; images elsewhere are shown as 'outside the gallery'.",
    ),
) -> None:
    """Write a static HTML report: run metrics, per-stage cost, and one page per query (opens from disk)."""
    from agent_cir.report import build_report

    with user_errors():
        index = build_report(source, out, limit=limit, filter=filter_, page_size=page_size, gallery=gallery)
        echo(f"report written: {index}")
