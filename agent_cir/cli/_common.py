"""Shared CLI plumbing: one spelling per concept, errors without tracebacks, status lines.

Every command uses these so that the same idea is spelled the same way everywhere:

    out: Path = out_option("Folder to write into.")      # -o / --out
    as_json: bool = json_option()                        # --json (errors become {"error": ...} too)
    quiet: bool = quiet_option()                         # -q / --quiet (no progress bars, no status lines)

    with user_errors(as_json):                           # AgentCirError / missing extra -> one line, exit 2
        status("loading models ...", quiet)              # on stderr, so --json output stays clean
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import typer

from agent_cir.errors import AgentCirError

EXIT_USER_ERROR = 2

# A bad option value (typer.BadParameter) derives from click's UsageError; newer typer vendors click, so
# take the class from typer itself rather than importing click.
_USAGE_ERROR: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError"
)

EXTRA_OF_MODULE = {
    "accelerate": "hf",
    "gguf": "hf",
    "sentencepiece": "hf",
    "sentence_transformers": "hf",
    "langchain_huggingface": "hf",
    "langchain_ollama": "ollama",
    "ollama": "ollama",
    "bitsandbytes": "quant",
    "gradio": "demo",
    "ray": "ray",
    "pytest": "dev",
    "hypothesis": "dev",
    "nbclient": "dev",
    "playwright": "dev",
}
"""Top-level module -> the optional extra of pyproject.toml that installs it."""


def out_option(help: str = "Folder to write into.", default: Any = ...) -> Any:  # noqa: A002
    """``-o/--out``: where a command writes (required unless a default is given)."""
    return typer.Option(default, "--out", "-o", help=help)


def json_option(help: str = "Print one JSON object on stdout (errors too: {\"error\": ...}).") -> Any:  # noqa: A002
    return typer.Option(False, "--json", help=help)


def quiet_option(help: str = "No progress bars or status lines.") -> Any:  # noqa: A002
    return typer.Option(False, "--quiet", "-q", help=help)


def missing_extra_message(err: ImportError) -> str | None:
    """The one line to print for an optional dependency that is not installed, or None if ``err`` is not that."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    return (
        f"this needs the optional package {name!r} (extra `{extra}`): pip install 'agent-cir[{extra}]' "
        f"(from a clone: pip install -c requirements/constraints.txt -e '.[{extra}]')"
    )


def _fail(message: str, as_json: bool, cause: BaseException | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"error": message}, ensure_ascii=False) + "\n")
    else:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=EXIT_USER_ERROR) from cause


@contextlib.contextmanager
def user_errors(as_json: bool = False) -> Iterator[None]:
    """Errors a user can fix become one line (or ``{"error": ...}`` under --json) and exit code 2."""
    try:
        yield
    except AgentCirError as err:
        _fail(str(err), as_json, err)
    except _USAGE_ERROR as err:
        if not as_json:
            raise
        _fail(err.format_message(), as_json, err)
    except ImportError as err:
        message = missing_extra_message(err)
        if message is None:
            raise
        _fail(message, as_json, err)
    except KeyboardInterrupt as err:
        typer.secho("interrupted; finished work was kept", err=True)
        raise typer.Exit(code=130) from err


def echo_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")


def status(message: str, quiet: bool = False) -> None:
    """A progress line on stderr (model loading, indexing), so that stdout keeps only the answer."""
    if not quiet:
        typer.secho(message, err=True, fg=typer.colors.BRIGHT_BLACK)
