"""The ``agent-cir`` command line. Each command lives in its own module and only calls the Python API."""

from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperGroup

COMMAND_ORDER = ("quickstart", "index", "search", "eval", "compare", "report", "demo", "recipes")
"""``--help`` lists commands in the order a new user needs them; unlisted commands follow, as registered."""


class _OrderedGroup(TyperGroup):
    def list_commands(self, ctx) -> list[str]:  # type: ignore[no-untyped-def]
        names = list(self.commands)
        ranked = [name for name in COMMAND_ORDER if name in self.commands]
        return ranked + [name for name in names if name not in ranked]


app = typer.Typer(
    name="agent-cir",
    cls=_OrderedGroup,
    help="Training-free zero-shot composed image retrieval with inspectable agent stages. "
    "New here? Run `agent-cir quickstart`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from agent_cir import __version__

        typer.echo(f"agent-cir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Training-free zero-shot composed image retrieval with inspectable agent stages.

    New here? Run `agent-cir quickstart`.
    """


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``; each module owns one command group.
    from agent_cir.cli import commands  # noqa: F401


def main() -> None:
    _register()
    app()
