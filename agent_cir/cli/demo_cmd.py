"""agent-cir demo: an interactive page to run one query stage by stage and edit the target description."""

from __future__ import annotations

from pathlib import Path

import typer

from agent_cir.cli import app
from agent_cir.cli._common import check_recipe_name, settle_offline_mode, user_errors


@app.command("demo")
def demo(
    config: str = typer.Option(..., "--config", "-c", help="Recipe: packaged name or YAML path."),
    index: Path = typer.Option(..., "--index", "-i", help="Gallery index folder (made by `agent-cir index`)."),
    host: str = typer.Option(
        "127.0.0.1", "--host",
        help="Interface to bind; the default keeps it on this machine. Any other (e.g. 0.0.0.0) makes the gallery "
             "visible to the network: a warning is printed; consider --auth.",
    ),
    port: int | None = typer.Option(None, "--port", "-p", help="Port (default: the first free one from 7860)."),
    artifacts: Path | None = typer.Option(None, "--artifacts", help="Where grid images are written (default: a temporary folder)."),
    auth: str | None = typer.Option(
        None, "--auth", envvar="AGENT_CIR_DEMO_AUTH", show_envvar=True,
        help="USER:PASSWORD: Gradio's login page in front of the demo (the variable keeps it out of the process list).",
    ),
) -> None:
    """Run the interactive demo (needs the `demo` extra: pip install 'agent-cir\\[demo]')."""
    from agent_cir.demo import launch_demo

    with user_errors():
        check_recipe_name(config)
        settle_offline_mode()
        launch_demo(config, index, host=host, port=port, artifacts_dir=artifacts, auth=auth)
