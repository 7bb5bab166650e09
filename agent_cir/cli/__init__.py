"""The ``agent-cir`` command line. Each command lives in its own module and only calls the Python API; the app
and its error boundary are in ``cli/_app.py``."""

from __future__ import annotations

from agent_cir.cli._app import COMMAND_ORDER, app

__all__ = ["COMMAND_ORDER", "app", "main"]


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``; each module owns one command group.
    from agent_cir.cli import commands  # noqa: F401


def main() -> None:
    _register()
    app()
