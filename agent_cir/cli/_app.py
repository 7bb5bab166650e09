"""The typer app every command module registers on, its help order and its one error boundary."""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer
from typer.core import TyperGroup, TyperOption

COMMAND_ORDER = ("quickstart", "index", "search", "chat", "eval", "compare", "report", "demo", "recipes")
"""``--help`` lists commands in the order a new user needs them; unlisted commands follow, as registered."""


def _flag_aware_display_type(self: TyperOption, ctx: Any) -> Optional[str]:
    """A flag takes no value: typer 0.2x prints ``<bool>`` after ``--json`` as if it did; show nothing."""
    if getattr(self, "is_flag", False) and not getattr(self, "count", False):
        return None
    return _typer_display_type(self, ctx)


_typer_display_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_aware_display_type  # type: ignore[method-assign]


class _OrderedGroup(TyperGroup):
    def list_commands(self, ctx) -> list[str]:  # type: ignore[no-untyped-def]
        names = list(self.commands)
        ranked = [name for name in COMMAND_ORDER if name in self.commands]
        return ranked + [name for name in names if name not in ranked]

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,  # type: ignore[override]
             standalone_mode: bool = True, **extra: Any) -> Any:
        """The CLI's one error boundary: a usage error (``--k 0``, an unknown option), an OSError, bad UTF-8 or
        JSON, wherever raised, is one ``error: ...`` line on stderr (one JSON object on stdout with --json)
        and exit code 2, never a traceback or a Rich box."""
        from agent_cir.cli._common import EXIT_USER_ERROR, classify_error, print_error

        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
        try:
            code = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except KeyboardInterrupt:
            print_error("interrupted", "interrupted; finished work was kept", as_json)
            code = 130
        except BrokenPipeError:
            # the reader of a pipe left (`... -f | head -1`): nothing to say; keep Python's exit flush quiet
            import os

            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # not a real file (a test runner's capture)
                pass
            code = 1
        except Exception as err:  # noqa: BLE001 - classified; anything unknown (a bug) keeps its traceback
            if type(err).__name__ == "NoArgsIsHelpError":  # `agent-cir` alone: the help, as click shows it
                err.show()  # type: ignore[attr-defined]
                code = err.exit_code  # type: ignore[attr-defined]
            elif type(err).__name__ == "Abort":
                print_error("aborted", "aborted", as_json)
                code = 1
            else:
                known = classify_error(err)
                if known is None:
                    raise
                print_error(*known, as_json)
                code = EXIT_USER_ERROR
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="agent-cir",
    cls=_OrderedGroup,
    help="Training-free zero-shot composed image retrieval with inspectable agent stages. "
    "New here? Run `agent-cir quickstart`.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
