"""``agent-cir search``: one composed query against an index, with or without a recipe."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Optional

import typer

from agent_cir.cli import app
from agent_cir.cli._common import echo_json, json_option, quiet_option, status, user_errors
from agent_cir.cli._ranking import format_ranking, ranking_rows

MODES = ("text", "image", "fusion", "pdv")


def build_search_overrides(
    mode: str | None,
    alpha: float | None,
    k: int | None,
    with_recipe: bool,
    has_image: bool = True,
    has_text: bool = True,
) -> dict[str, Any]:
    """Command-line options become recipe overrides; without a recipe the retrieval is CLIP only, and the
    text side is the modification itself (no LLM): fusion with a reference image and a text, image with an
    image alone, text without an image."""
    retrieve: dict[str, Any] = {}
    if mode is not None:
        retrieve["mode"] = mode
    if alpha is not None:
        retrieve["alpha"] = alpha
    if k is not None:
        retrieve["k"] = k
    if not with_recipe:
        default_mode = ("fusion" if has_text else "image") if has_image else "text"
        retrieve.setdefault("mode", default_mode)
        retrieve.setdefault("k", 50)
        retrieve["text_source"] = "modification"
    return {"retrieve": retrieve} if retrieve else {}


def validate_search_inputs(
    index: Path | None, image: Path | None, text: str, target_text: str | None, mode: str | None,
    config: str | None, gallery_captions: Path | None,
) -> None:
    """Everything that can be checked before a model loads: a typo must cost nothing."""
    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"--mode must be text, image, fusion or pdv (got {mode!r})", param_hint="--mode")
    if index is None and gallery_captions is None and config is None:
        raise typer.BadParameter("give --index INDEX_DIR (made by `agent-cir index`)", param_hint="--index")
    if index is not None and not index.is_dir():
        raise typer.BadParameter(f"index folder {index} does not exist (make one with `agent-cir index`)",
                                 param_hint="--index")
    if image is not None and not image.is_file():
        raise typer.BadParameter(f"reference image {image} does not exist", param_hint="--image")
    if gallery_captions is not None and not gallery_captions.is_file():
        raise typer.BadParameter(f"gallery captions file {gallery_captions} does not exist",
                                 param_hint="--gallery-captions")
    has_text = bool(text.strip()) or bool(target_text)
    if not has_text and image is None:
        raise typer.BadParameter("give --text, --image or both", param_hint="--text")
    if config is None and not has_text and mode in ("text", "fusion", "pdv"):
        raise typer.BadParameter(f"--mode {mode} needs a --text (without one, use --mode image)", param_hint="--mode")


def pipeline_options(use_index_encoder: bool) -> dict[str, Any]:
    """Keyword arguments for Pipeline.from_config that this version of it accepts (use_index_encoder is new)."""
    from agent_cir.pipeline import Pipeline

    accepted = inspect.signature(Pipeline.from_config).parameters
    return {"use_index_encoder": use_index_encoder} if "use_index_encoder" in accepted else {}


@app.command("search")
def search(
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder made by `agent-cir index`."),
    image: Optional[Path] = typer.Option(None, "--image", help="Reference image."),
    text: str = typer.Option("", "--text", help="Modification text, e.g. 'the same dress but red'."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="How many results (default 50, or the recipe's)."),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="text | image | fusion | pdv (default: fusion with --image and --text, image with "
        "--image alone, text with --text alone; or the recipe's)."
    ),
    alpha: Optional[float] = typer.Option(
        None, "--alpha", min=0.0, max=1.0, help="Fusion weight of the text: q = norm((1-a) img + a txt)."
    ),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Recipe: a YAML file or a packaged name (see `agent-cir recipes`)."
    ),
    target_text: Optional[str] = typer.Option(
        None, "--target-text", help="Intervention: use this target description; skips caption and rewrite."
    ),
    gallery_captions: Optional[Path] = typer.Option(
        None, "--gallery-captions", help="JSON of gallery id -> captions to mix into scores."
    ),
    use_index_encoder: bool = typer.Option(
        False, "--use-index-encoder",
        help="Run the index's encoder even when the recipe names another one (instead of stopping with an error).",
    ),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Append the query's trace record to this JSONL."),
    artifacts: Optional[Path] = typer.Option(
        None, "--artifacts", help="Folder for files stages write (grid images). Default: next to --trace; "
        "without --trace none are written."
    ),
    as_json: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Answer one composed query: reference image + modification text -> ranked gallery images."""
    with user_errors(as_json):
        validate_search_inputs(index, image, text, target_text, mode, config, gallery_captions)
        from agent_cir.pipeline import Pipeline
        from agent_cir.provenance import encoder_provenance, random_weights_warning
        from agent_cir.trace import TraceWriter
        from agent_cir.types import Query

        has_text = bool(text.strip())
        overrides = build_search_overrides(
            mode, alpha, k, with_recipe=config is not None, has_image=image is not None, has_text=has_text
        )
        recipe: Any = config if config is not None else {"name": "clip-only"}
        if artifacts is None and trace is not None:
            artifacts = trace.parent / f"{trace.stem}_artifacts"
        status(f"loading models ({'recipe ' + config if config else 'CLIP only'}) ...", quiet)
        started = time.perf_counter()
        pipeline = Pipeline.from_config(
            recipe, index=index, overrides=overrides, artifacts_dir=artifacts, gallery_captions=gallery_captions,
            **pipeline_options(use_index_encoder),
        )
        status(f"models ready in {time.perf_counter() - started:.1f} s; searching ...", quiet)
        query = Query(
            id=image.stem if image else None,
            text=text,
            image=str(image) if image else None,
            target_text=target_text,
        )
        result = pipeline.run(query)
        encoder = encoder_provenance(pipeline.encoder.info)
        result.trace.setdefault("encoder", encoder)
        if trace is not None:
            with TraceWriter(trace) as writer:
                writer.write(result.trace)
        typed = result.typed_trace()
        grids = _grid_paths(typed)
        retrieve = typed.stage("retrieve")
        stats = pipeline.stats
        ordered_by, rows = ranking_rows(result, pipeline.recipe)
        if as_json:
            echo_json(
                {
                    "query": {"id": query.id, "image": query.image, "text": query.text, "target_text": target_text},
                    "recipe": pipeline.recipe.name,
                    "encoder": encoder,
                    "mode": retrieve.output.mode if retrieve is not None else None,
                    "target_descriptions": typed.target_descriptions,
                    "query_texts": retrieve.output.query_texts if retrieve is not None else [],
                    "description_source": typed.description_source,
                    "ordered_by": ordered_by,
                    "results": rows,
                    "grids": grids,
                    "trace": str(trace) if trace else None,
                    "model_calls": stats["model_calls"],
                    "cache_hits": stats["cache_hits"],
                }
            )
            return
        warning = random_weights_warning(pipeline.encoder.info)
        if warning:
            typer.secho(warning, fg=typer.colors.YELLOW)
        descriptions = typed.target_descriptions
        if descriptions:
            typer.echo(f"target description ({typed.description_source}): {descriptions[0]}")
        for line in format_ranking(ordered_by, rows):
            typer.echo(line)
        for grid in grids:
            typer.echo(f"judge grid: {grid}")
        if trace is not None:
            typer.echo(f"trace: {trace}")
        status(f"model calls: {stats['model_calls']} (cache hits: {stats['cache_hits']})", quiet)


def _grid_paths(trace: Any) -> list[str]:
    """Grid images the rerank stage saved (``trace`` is an ``agent_cir.trace_model.Trace``)."""
    rerank = trace.stage("rerank")
    return [grid.path for grid in rerank.output.grids if grid.path] if rerank is not None else []
