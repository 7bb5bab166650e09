"""agent-cir demo: an interactive page to run one query stage by stage and edit the target description."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import typer

from agent_cir.cli._app import app
from agent_cir.cli._common import check_recipe_name, settle_offline_mode, user_errors

_SEARCH_ONLY_ADVICE = re.compile(r",? or search with the index's encoder \(`--use-index-encoder`[^)]*\)\)?")


def demo_error_text(message: str) -> str:
    """An error message as the demo's user can act on it: ``--use-index-encoder`` is a `search` option only."""
    if "--use-index-encoder" not in message:
        return message
    return _SEARCH_ONLY_ADVICE.sub("; or start the demo with a recipe whose encoder is the index's", message)


class _DropLines:
    """A stdout that drops lines a CLI user cannot act on (Gradio's "set `share=True` in `launch()`")."""

    def __init__(self, stream: TextIO, needles: tuple[str, ...]) -> None:
        self._stream = stream
        self._needles = needles
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not any(needle in line for needle in self._needles):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending and not any(needle in self._pending for needle in self._needles):
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def without_share_hint() -> Iterator[None]:
    original = sys.stdout
    sys.stdout = _DropLines(original, ("share=True",))  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = original


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
    from agent_cir.demo import launch_demo, parse_auth
    from agent_cir.errors import AgentCirError

    with user_errors():
        parse_auth(auth)  # the cheapest checks first: a malformed --auth, then a recipe typo
        check_recipe_name(config)
        settle_offline_mode()
        try:
            with without_share_hint():
                launch_demo(config, index, host=host, port=port, artifacts_dir=artifacts, auth=auth)
        except AgentCirError as err:
            if "--use-index-encoder" not in str(err):
                raise
            raise AgentCirError(demo_error_text(str(err))) from err
