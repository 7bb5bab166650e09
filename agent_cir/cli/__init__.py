"""The ``agent-cir`` command line. Each command lives in its own module and only calls the Python API."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="agent-cir",
    help="Training-free zero-shot composed image retrieval with inspectable agent stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``; each module owns one command group.
    from agent_cir.cli import commands  # noqa: F401


def main() -> None:
    _register()
    app()
