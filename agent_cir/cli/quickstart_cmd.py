"""``agent-cir quickstart``: the first command to run; needs no data and no server."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agent_cir.cli._app import app
from agent_cir.cli._common import echo, echo_json, quiet_library_logs, json_option, out_option, quiet_option, status, user_errors
from agent_cir.cli._ranking import format_ranking, ranking_rows

SHOWN = 10


def offline_line(reason: str) -> str:
    return f"OFFLINE: random-init CLIP + scripted models; this ranking is not meaningful ({reason})."


@app.command("quickstart")
def quickstart(
    out: Path = out_option(
        "Folder for the example index, trace and report (made if missing; a folder the quickstart did not make "
        "is never written to).", default=Path("agent_cir_quickstart"),
    ),
    offline: bool = typer.Option(
        False, "--offline", help="Do not try real weights: random-init CLIP and scripted models (no network)."
    ),
    query: Optional[str] = typer.Option(None, "--query", help="Which example query (example-1 ... example-6)."),
    as_json: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Index a small example gallery, run one composed query through all four stages, write the HTML report."""

    def announce(reason: Optional[str]) -> None:
        # The first line of the output says which kind of run this is, before anything loads.
        if as_json:
            return
        if reason is not None:
            echo(offline_line(reason), fg=typer.colors.YELLOW, bold=True)
        else:
            echo("real weights: recipe local (in-process models; the first run downloads about 1.9 GB)")

    with user_errors(as_json):
        from agent_cir.quickstart import run_quickstart

        with quiet_library_logs(quiet or as_json):
            outcome = run_quickstart(
                out, offline=offline, query_id=query, progress=not (quiet or as_json),
                status=lambda line: status(line, quiet or as_json), on_mode=announce,
            )
        result = outcome.result
        typed = result.trace
        final_rank, retrieve_rank = outcome.target_rank(), outcome.target_rank("retrieve")
        ordered_by, rows = ranking_rows(result, outcome.recipe)
        q = outcome.query
        if as_json:
            echo_json({
                "offline": outcome.offline,
                "offline_reason": outcome.offline_reason,
                "recipe": outcome.recipe.name,
                "encoder": outcome.encoder,
                "query": {"id": q.id, "reference": q.reference, "text": q.text, "target": q.target},
                "captions": typed.captions,
                "target_descriptions": typed.target_descriptions,
                "target_rank": {"retrieve": retrieve_rank, "final": final_rank},
                "ordered_by": ordered_by,
                "results": rows,
                "trace": str(outcome.trace_path),
                "report": str(outcome.report),
            })
            return
        echo(f"query {q.id}: {q.reference} + {q.text!r}  (known target: {q.target})")
        for caption in typed.captions:
            echo(f"  caption:            {caption}")
        for description in typed.target_descriptions[:1]:
            echo(f"  target description: {description}")
        rows_shown = [dict(row, path=row["id"]) for row in rows[:SHOWN]]
        for line in format_ranking(ordered_by, rows_shown, mark=q.target):
            echo(line)
        if len(rows) > SHOWN:
            echo(f"      ... {len(rows) - SHOWN} more in the report")
        echo(f"target rank: {final_rank or 'not in the list'} after rerank "
                   f"(after retrieval: {retrieve_rank or 'not in the top-k'})")
        echo(f"report: {outcome.report}")
        echo(f"trace:  {outcome.trace_path}")
        echo("next: agent-cir index YOUR_IMAGES -o my_index && "
                   "agent-cir search -i my_index --image REF.jpg --text 'make it red' --config local")
