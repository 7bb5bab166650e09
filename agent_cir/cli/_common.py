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
import errno
import json
import re
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
    "diffusers": "edit",
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


# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI) and the bidi overrides that reorder a line on screen.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_VISIBLE = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def terminal_safe(text: object) -> str:
    """``text`` with every control character in a visible form (``\\x1b``, ``\\n``, ``\\u202e``).

    File names, a server's error text and a model's answer are data: printed raw, an ESC sequence can retitle
    or clear the terminal and a CR or newline can fake a ranking row."""
    def visible(match: re.Match) -> str:
        char = match.group()
        if char in _VISIBLE:
            return _VISIBLE[char]
        code = ord(char)
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    return _UNSAFE_CHARS.sub(visible, str(text))


def rich_safe(text: object) -> str:
    """:func:`terminal_safe` for text that Rich renders: its ``[markup]`` is escaped too."""
    from rich.markup import escape

    return escape(terminal_safe(text))


def echo(text: object = "", err: bool = False, **style: Any) -> None:
    """One line of output with control characters made visible (results on stdout, warnings with err=True)."""
    line = terminal_safe(text)
    if style:
        typer.secho(line, err=err, **style)
    else:
        typer.echo(line, err=err)


def echo_block(text: object) -> None:
    """A multi-line block (a table a formatter built): each line made safe on its own."""
    for line in str(text).splitlines():
        echo(line)


def warn(text: object) -> None:
    """A warning: on stderr (stdout carries results only, so that pipes get results only)."""
    echo(text, err=True, fg=typer.colors.YELLOW)


def describe_os_error(err: OSError) -> str:
    """What failed, on which file, and what to do: one line for an OSError."""
    where = f" {err.filename}" if getattr(err, "filename", None) else ""
    if getattr(err, "filename2", None):
        where += f" -> {err.filename2}"
    reason = err.strerror or str(err) or type(err).__name__
    code = err.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        advice = "the disk is full: free some space (or write elsewhere with --out) and run again"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "no permission to write or read there: pick a folder you can write (e.g. --out under your home)"
    elif isinstance(err, IsADirectoryError):
        advice = "it is a folder where a file is expected: give the file's path"
    elif isinstance(err, NotADirectoryError):
        advice = "a file stands where a folder is expected: give a folder's path"
    elif isinstance(err, FileExistsError):
        advice = "it already exists: give a new path or remove it yourself"
    elif isinstance(err, FileNotFoundError):
        advice = "check the path"
    else:
        advice = "check the path and the disk, then run again"
    return f"{reason}:{where} ({advice})"


def classify_error(err: BaseException) -> tuple[str, str] | None:
    """(kind, one-line message) for an error the user can act on; None for anything else (a bug)."""
    if isinstance(err, AgentCirError):
        return "user", str(err)
    if isinstance(err, _USAGE_ERROR):
        message = err.format_message()
        ctx = getattr(err, "ctx", None)
        if ctx is not None:
            message += f" (see: {ctx.command_path} --help)"
        return "usage", message
    if isinstance(err, json.JSONDecodeError):
        return "json", f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}; fix or remove the file"
    if isinstance(err, UnicodeError):
        return "encoding", f"a file is not valid UTF-8 text ({err}); fix or re-save the file as UTF-8"
    if isinstance(err, OSError):
        return "os", describe_os_error(err)
    if isinstance(err, ImportError):
        message = missing_extra_message(err)
        return ("missing_extra", message) if message is not None else None
    return None


def print_error(kind: str, message: str, as_json: bool) -> None:
    """The one way an error is shown: ``error: ...`` on stderr, or one JSON object on stdout under --json."""
    if as_json:
        sys.stdout.write(json.dumps({"error": terminal_safe(message), "kind": kind}, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        echo(f"error: {message}", err=True, fg=typer.colors.RED)


def _fail(message: str, as_json: bool, cause: BaseException | None = None, kind: str = "user") -> None:
    print_error(kind, message, as_json)
    raise typer.Exit(code=EXIT_USER_ERROR) from cause


@contextlib.contextmanager
def user_errors(as_json: bool = False) -> Iterator[None]:
    """Errors a user can fix (AgentCirError, OSError, bad UTF-8 or JSON, a missing extra, a bad option) become
    one line (or ``{"error": ..., "kind": ...}`` under --json) and exit code 2. The app's own boundary
    (cli.__init__) does the same for errors raised before a command runs (option parsing)."""
    try:
        yield
    except KeyboardInterrupt as err:
        echo("interrupted; finished work was kept", err=True)
        raise typer.Exit(code=130) from err
    except BrokenPipeError:
        raise  # `search -f | head -1`: the reader left; the app's boundary ends quietly
    except Exception as err:  # noqa: BLE001 - classified below; anything unknown is re-raised untouched
        known = classify_error(err)
        if known is None:
            raise
        kind, message = known
        _fail(message, as_json, err, kind)


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def echo_json(payload: object) -> None:
    # json.dumps escapes C0 controls itself; DEL, C1 and bidi overrides pass through with ensure_ascii=False,
    # and they can only occur inside strings, where a \\u escape means the same.
    text = json.dumps(payload, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


def status(message: str, quiet: bool = False) -> None:
    """A progress line on stderr (model loading, indexing), so that stdout keeps only the answer."""
    if not quiet:
        echo(message, err=True, fg=typer.colors.BRIGHT_BLACK)


class _DropRedundant(__import__("logging").Filter):
    """open_clip's root-logger ``No pretrained weights loaded`` line: the CLI prints its own random-weights
    warning (what it means, what to do), so the library's is a duplicate."""

    def filter(self, record: Any) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


_LIBRARY_LOGGERS = ("", "huggingface_hub", "transformers", "open_clip", "timm", "urllib3", "httpx")


@contextlib.contextmanager
def quiet_library_logs(quiet: bool) -> Iterator[None]:
    """Library log lines a CLI user cannot act on: the duplicates always, everything below ERROR with -q
    (levels and filters are put back afterwards, so that a caller in the same process keeps its logging)."""
    import logging
    import warnings

    root = logging.getLogger()
    drop = _DropRedundant()
    root.addFilter(drop)
    levels = {name: logging.getLogger(name).level for name in _LIBRARY_LOGGERS}
    with warnings.catch_warnings():
        if quiet:
            for name in _LIBRARY_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
            warnings.filterwarnings("ignore", module="huggingface_hub")
            warnings.filterwarnings("ignore", module="transformers")
        try:
            yield
        finally:
            root.removeFilter(drop)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def check_recipe_name(config: str | None) -> None:
    """A --config that is neither a file nor a packaged recipe fails before anything loads, with the closest
    packaged names (``did you mean 'local'?``) instead of the whole list."""
    from pathlib import Path

    if config is None or Path(config).expanduser().is_file():
        return
    from agent_cir.config import available_recipes, did_you_mean

    packaged = list(available_recipes())
    if config in packaged:
        return
    if Path(config).suffix.lower() in (".yaml", ".yml") or "/" in config:
        raise AgentCirError(f"recipe file {config} does not exist; give a recipe YAML file or a packaged name "
                            "(`agent-cir recipes` lists them)")
    close = did_you_mean(config, packaged)
    hint = f"did you mean {' or '.join(repr(name) for name in close)}? " if close else ""
    raise AgentCirError(f"recipe {config!r} not found: no such file and no packaged recipe of that name; "
                        f"{hint}(`agent-cir recipes` lists them)")


def _hub_probe() -> str | None:
    from agent_cir.encoders.base import hub_unreachable_reason

    return hub_unreachable_reason(timeout=3.0)


HUB_PROBE = _hub_probe
"""The one connectivity check (a 3 s TCP connect to the Hub); tests replace it, so they never touch the network."""


def settle_offline_mode(quiet: bool = False) -> str | None:
    """Decide once, before any model of a recipe loads, whether the Hub can be used; returns why not, or None.

    HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set: offline, nothing probed. Else one short probe; when the Hub does
    not answer, offline mode is switched on for every loader of this process (the environment and
    huggingface_hub's constant, read at import), so that each model fails at once with an error naming its
    weights instead of minutes of retries per model."""
    import os

    from agent_cir.encoders.base import hub_offline

    if hub_offline():
        return "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set"
    unreachable = HUB_PROBE()
    if not unreachable:
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None and hasattr(hub_constants, "HF_HUB_OFFLINE"):
        hub_constants.HF_HUB_OFFLINE = True
    status(f"the Hugging Face Hub is not reachable ({unreachable}): offline mode for every model; only weights "
           "already on this machine load", quiet)
    return f"the Hugging Face Hub is not reachable: {unreachable}"
