"""``agent-cir eval`` (benchmark runs), ``agent-cir compare`` (two runs) and ``agent-cir recipes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
import yaml

from agent_cir.cli._app import app
from agent_cir.cli._common import (
    check_recipe_name,
    echo,
    echo_block,
    echo_json,
    json_option,
    out_option,
    quiet_library_logs,
    quiet_option,
    settle_offline_mode,
    user_errors,
)
from agent_cir.errors import AgentCirError


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["retrieve.alpha=0.7", "encoder.model=/m"]`` -> nested overrides; values are read as YAML scalars."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise AgentCirError(f"--set {assignment!r}: expected KEY=VALUE, e.g. retrieve.alpha=0.7")
        node = overrides
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise AgentCirError(f"--set {assignment!r}: {part} is set twice")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return overrides


def _print_metrics(payload: dict[str, Any]) -> None:
    from agent_cir.eval.compare import flatten_metrics

    flat = flatten_metrics(payload.get("metrics", {}))
    queries = payload.get("queries", {})
    echo(
        f"{payload.get('dataset')} {payload.get('split')}: {queries.get('evaluated')} of {queries.get('selected')} "
        f"queries evaluated; {payload.get('model_calls')} model calls; "
        f"{payload.get('wall_seconds_per_query')} s/query wall ({payload.get('seconds_per_query')} s latency each)"
    )
    for name, value in flat.items():
        echo(f"  {name:<28}{value:8.2f}")
    if payload.get("surrogate"):
        echo("  (text surrogate: not comparable with image-based results)")
    for note in payload.get("notes", []):
        echo(f"  note: {note}")
    for path in (payload.get("submission") or {}).get("files", []):
        echo(f"  submission: {path}")
    if (payload.get("submission") or {}).get("refused"):
        echo("  submission not written (see the note above)", fg=typer.colors.YELLOW)


@app.command("eval")
def eval_command(
    dataset: str = typer.Option(..., "--dataset", help="circo | cirr | fashioniq | genecis"),
    split: str = typer.Option("val", "--split", help="val | test (CIRR test = test1; GeneCIS: val only)."),
    images: Optional[Path] = typer.Option(
        None, "--images",
        help="Image root. CIRCO: ROOT/unlabeled2017/*.jpg; CIRR: ROOT/dev, ROOT/test1; FashionIQ: ROOT/images/*.png; "
        "GeneCIS: ROOT/val2017/*.jpg. Leave out for the caption-only text surrogate (with --gallery-captions).",
    ),
    config: str = typer.Option(..., "--config", help="Recipe: packaged name (see `agent-cir recipes`) or YAML path."),
    out: Path = out_option("Run folder; rerun with the same folder to resume."),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations",
        help="Folder with the official annotation files (the dataset's folder or a parent of cirr/, circo/, ...). "
        "Default: $AGENT_CIR_BENCHMARKS, then --images, then the folders around --gallery-captions.",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N queries (per category/task)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="File of query ids to run, one per line."),
    gallery_captions: Optional[Path] = typer.Option(
        None, "--gallery-captions",
        help="JSON of gallery image captions. Without --images: the text surrogate (gallery = captions).",
    ),
    category: Optional[List[str]] = typer.Option(
        None, "--category", help="FashionIQ: dress | shirt | toptee; GeneCIS: change_object | focus_object | change_attribute | "
        "focus_attribute. Repeatable; default all (GeneCIS: every task whose file is present).",
    ),
    index_dir: Optional[Path] = typer.Option(
        None, "--index-dir", help="Where gallery indexes are built and reused (default OUT/index)."
    ),
    prebuilt_index: Optional[Path] = typer.Option(
        None, "--index", help="A prebuilt index folder (plain or sharded, `agent-cir index IMAGES`) whose items are "
        "exactly the split's gallery images; eval then builds none (refused if its ids differ)."
    ),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", min=1, help="Queries in flight."),
    assignments: Optional[List[str]] = typer.Option(
        None, "--set", help="Recipe override KEY=VALUE, repeatable (e.g. --set retrieve.alpha=0.7)."
    ),
    as_json: bool = json_option("Print metrics.json on stdout (errors too: {\"error\": ...})."),
    quiet: bool = quiet_option(),
) -> None:
    """Run a recipe on a benchmark split: metrics.json, traces.jsonl, run.json (+ submission files for test)."""
    with user_errors(as_json):
        check_recipe_name(config)
        if prebuilt_index is not None and (images is None or index_dir is not None):
            raise AgentCirError("--index is a prebuilt index of the split's images: give --images too (the queries' "
                                "references are read there), and no --index-dir (nothing is built)")
        settle_offline_mode(quiet or as_json)
        from agent_cir.eval.run_inputs import read_query_ids
        from agent_cir.eval.runner import run_eval

        with quiet_library_logs(quiet or as_json):
            outcome = run_eval(
                dataset=dataset,
                split=split,
                images_root=images,
                recipe=config,
                out_dir=out,
                limit=limit,
                query_ids=read_query_ids(queries) if queries else None,
                gallery_captions=gallery_captions,
                annotations=annotations,
                categories=category or None,
                index_dir=index_dir,
                prebuilt_index=prebuilt_index,
                overrides=parse_assignments(assignments or []),
                max_concurrency=max_concurrency,
                progress=not quiet,
            )
        if as_json:
            echo_json(outcome.metrics)
        else:
            _print_metrics(outcome.metrics)
            if any(p.get("dataset") == dataset for p in outcome.run.get("recipe", {}).get("published") or []):
                from agent_cir.eval.compare import compare_published, format_published

                echo_block(format_published(compare_published(outcome.out_dir)))
            echo(f"wrote {outcome.out_dir}/metrics.json, traces.jsonl, run.json")


@app.command("compare")
def compare_command(
    run_a: Path = typer.Argument(..., help="Run folder (agent-cir eval --out)."),
    run_b: Optional[Path] = typer.Argument(None, help="Second run folder (metrics side by side)."),
    published: bool = typer.Option(False, "--published", help="Ours beside the paper's numbers (the recipe's `published`)."),
    published_from: Optional[str] = typer.Option(
        None, "--published-from", help="Take the paper's numbers from this recipe instead of the run's own."
    ),
    top: int = typer.Option(10, "--top", min=0, help="How many most-changed queries to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Two runs side by side (metrics and the queries whose target rank changed most), and/or one run against the
    numbers its paper published."""
    with user_errors(as_json):
        from agent_cir.eval.compare import compare_published, compare_runs, format_comparison, format_published

        if run_b is None and not (published or published_from):
            raise AgentCirError("give a second run folder, or --published to compare with the paper's numbers")
        payload: dict[str, Any] = {}
        if run_b is not None:
            payload["runs"] = compare_runs(run_a, run_b, top=top)
        if published or published_from:
            entries = None
            if published_from:
                from agent_cir.config import load_recipe

                entries = [p.model_dump(mode="json") for p in load_recipe(published_from).published]
            payload["published"] = compare_published(run_a, entries)
        if as_json:
            echo_json(payload)
            return
        if "runs" in payload:
            echo_block(format_comparison(payload["runs"]))
        if "published" in payload:
            echo_block(format_published(payload["published"]))


def format_needs(needs: dict[str, Any]) -> list[str]:
    """What a recipe needs, as text: ``needs: servers ...; keys ...; weights ...`` (nothing else: 'needs: nothing')."""
    labels = {"servers": "servers", "keys": "API keys", "weights": "weights", "data": "data"}
    parts = [f"{labels[key]}: {', '.join(map(str, needs[key]))}" for key in labels if needs.get(key)]
    return [f"needs {part}" for part in parts] or ["needs: nothing beyond the package"]


@app.command("recipes")
def recipes_command(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the packaged recipes: what each does, the paper it follows, its published numbers and what it needs."""
    with user_errors(as_json):
        from agent_cir.config import available_recipes, load_recipe, recipe_needs, redact_secrets

        rows = []
        for name, path in available_recipes().items():
            recipe = load_recipe(path)
            rows.append({
                "name": name, "description": recipe.description, "mirrors": recipe.mirrors,
                "differences": recipe.differences, "published": [p.model_dump(mode="json") for p in recipe.published],
                "by_dataset": redact_secrets(dict(recipe.by_dataset)), "needs": recipe_needs(recipe), "path": str(path),
            })
        if as_json:
            echo_json(rows)
            return
        width = max((len(row["name"]) for row in rows), default=10) + 2
        for row in rows:
            echo(f"{row['name']:<{width}}{row['description']}")
            if row["mirrors"]:
                echo(f"{'':<{width}}mirrors: {row['mirrors']}")
            if row["published"]:
                echo(f"{'':<{width}}published: {len(row['published'])} numbers (agent-cir compare RUN --published)")
            for line in format_needs(row["needs"]):
                echo(f"{'':<{width}}{line}")
