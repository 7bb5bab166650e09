"""``agent-cir search``: one composed query against an index, with or without a recipe."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import typer

from agent_cir.cli import app
from agent_cir.cli._common import echo_json, user_errors


def build_search_overrides(
    mode: str | None, alpha: float | None, k: int | None, with_recipe: bool, has_image: bool = True
) -> dict[str, Any]:
    """Command-line options become recipe overrides; without a recipe the retrieval is CLIP only, and the
    text side is the modification itself (no LLM): fusion with a reference image, text without one."""
    retrieve: dict[str, Any] = {}
    if mode is not None:
        retrieve["mode"] = mode
    if alpha is not None:
        retrieve["alpha"] = alpha
    if k is not None:
        retrieve["k"] = k
    if not with_recipe:
        retrieve.setdefault("mode", "fusion" if has_image else "text")
        retrieve.setdefault("k", 50)
        retrieve["text_source"] = "modification"
    return {"retrieve": retrieve} if retrieve else {}


@app.command("search")
def search(
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder made by `agent-cir index`."),
    image: Optional[Path] = typer.Option(None, "--image", help="Reference image."),
    text: str = typer.Option("", "--text", help="Modification text, e.g. 'the same dress but red'."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="How many results (default 50, or the recipe's)."),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="text | image | fusion | pdv (default fusion, or the recipe's)."
    ),
    alpha: Optional[float] = typer.Option(
        None, "--alpha", min=0.0, max=1.0, help="Fusion weight of the text: q = norm((1-a) img + a txt)."
    ),
    config: Optional[str] = typer.Option(
        None, "--config", help="Recipe: a YAML file or a packaged name (see `agent-cir recipes`)."
    ),
    target_text: Optional[str] = typer.Option(
        None, "--target-text", help="Intervention: use this target description; skips caption and rewrite."
    ),
    gallery_captions: Optional[Path] = typer.Option(
        None, "--gallery-captions", help="JSON of gallery id -> captions to mix into scores."
    ),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Append the query's trace record to this JSONL."),
    artifacts: Optional[Path] = typer.Option(
        None, "--artifacts", help="Folder for files stages write (grid images). Default: next to --trace."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Answer one composed query: reference image + modification text -> ranked gallery images."""
    from agent_cir.pipeline import Pipeline
    from agent_cir.trace import TraceWriter
    from agent_cir.types import Query

    with user_errors():
        if mode is not None and mode not in ("text", "image", "fusion", "pdv"):
            raise typer.BadParameter(f"--mode must be text, image, fusion or pdv (got {mode!r})")
        if index is None and gallery_captions is None and config is None:
            raise typer.BadParameter("give --index INDEX_DIR (made by `agent-cir index`)")
        if image is not None and not image.is_file():
            # Checked before any model loads: a typo should cost nothing.
            raise typer.BadParameter(f"reference image {image} does not exist", param_hint="--image")
        overrides = build_search_overrides(mode, alpha, k, with_recipe=config is not None, has_image=image is not None)
        recipe: Any = config if config is not None else {"name": "clip-only"}
        if artifacts is None:
            artifacts = (
                trace.parent / f"{trace.stem}_artifacts" if trace else Path(tempfile.mkdtemp(prefix="agent_cir_"))
            )
        pipeline = Pipeline.from_config(
            recipe, index=index, overrides=overrides, artifacts_dir=artifacts, gallery_captions=gallery_captions
        )
        query = Query(
            id=image.stem if image else "query",
            text=text,
            image=str(image) if image else None,
            target_text=target_text,
        )
        result = pipeline.run(query)
        if trace is not None:
            with TraceWriter(trace) as writer:
                writer.write(result.trace)
        grids = _grid_paths(result.trace)
        stats = pipeline.stats
        if as_json:
            echo_json(
                {
                    "query": {"image": query.image, "text": query.text, "target_text": target_text},
                    "recipe": pipeline.recipe.name,
                    "target_descriptions": result.trace["target_descriptions"],
                    "query_texts": _retrieve_output(result.trace).get("query_texts", []),
                    "description_source": result.trace["description_source"],
                    "results": [
                        {"rank": c.rank, "path": c.path or c.id, "id": c.id, "score": round(float(c.score), 6)}
                        for c in result.candidates
                    ],
                    "grids": grids,
                    "trace": str(trace) if trace else None,
                    "model_calls": stats["model_calls"],
                    "cache_hits": stats["cache_hits"],
                }
            )
            return
        descriptions = result.trace["target_descriptions"]
        if descriptions:
            typer.echo(f"target description ({result.trace['description_source']}): {descriptions[0]}")
        typer.echo(f"{'rank':>4}  {'score':>8}  path")
        for candidate in result.candidates:
            typer.echo(f"{candidate.rank:>4}  {candidate.score:>8.4f}  {candidate.path or candidate.id}")
        for grid in grids:
            typer.echo(f"judge grid: {grid}")
        if trace is not None:
            typer.echo(f"trace: {trace}")
        typer.echo(f"model calls: {stats['model_calls']} (cache hits: {stats['cache_hits']})", err=True)


def _retrieve_output(trace: dict[str, Any]) -> dict[str, Any]:
    for stage in trace["stages"]:
        if stage["stage"] == "retrieve":
            return stage.get("output", {})
    return {}


def _grid_paths(trace: dict[str, Any]) -> list[str]:
    paths: list[str] = []
    for stage in trace["stages"]:
        for grid in stage.get("output", {}).get("grids", []) or []:
            if isinstance(grid, dict) and grid.get("path"):
                paths.append(str(grid["path"]))
    return paths
