"""Shared CLI plumbing: user errors become one clear message on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from agent_cir.errors import AgentCirError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except AgentCirError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work was kept", err=True)
        raise typer.Exit(code=130) from None


def echo_json(payload: object) -> None:
    import json

    sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
