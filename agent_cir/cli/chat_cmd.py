"""``agent-cir chat``: a multi-turn search in the terminal (or from a script, or through a pipe) over an index.

Each line is a request (``make it red``), the answer to the agent's question, or a command: ``:pick N``,
``:undo``, ``:save DIR``, ``:help``, ``:quit``. A bad line is reported and the session goes on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional, TextIO

import typer

from agent_cir.cli._app import app
from agent_cir.cli._common import (
    check_recipe_name,
    echo,
    json_option,
    quiet_library_logs,
    quiet_option,
    settle_offline_mode,
    status,
    terminal_safe,
    user_errors,
    warn,
)
from agent_cir.cli._ranking import format_ranking
from agent_cir.errors import AgentCirError

HELP_TEXT = """Type what should change (e.g. 'make it red'); each line refines the search with everything said so far.
When the agent asks a question, the next line is your answer.
  :pick N    the N-th result (from 1) becomes the reference of the next requests
  :undo      take back the last turn (a request, an answer or a pick)
  :save DIR  save the session to DIR/session.json (resume with --resume DIR)
  :help      this text
  :quit      end the session (end of input does too)"""

COMMANDS = ("pick", "undo", "save", "help", "quit")


class ChatLineError(AgentCirError):
    """A line the chat cannot act on (an unknown command, a bad :pick number); the session goes on."""


def _rows(session: Any, shown: int) -> tuple[str, list[dict[str, Any]]]:
    """The latest results as ranking rows (``cli/_ranking.format_ranking``), from the session's record."""
    result = session.last_result
    ordered_by = getattr(result, "ordered_by", "retrieval") if result is not None else "retrieval"
    rows = []
    for item in session.results[:shown]:
        row: dict[str, Any] = {"rank": item.rank, "id": item.id, "path": item.path or item.id, "score": round(item.score, 6)}
        if ordered_by != "retrieval":
            value = item.final_score if item.final_score is not None else item.verify_score
            row["rerank_score"] = None if value is None else round(float(value), 6)
        rows.append(row)
    return ordered_by, rows


class ChatPrinter:
    """Text or one JSON object per line (``--json``); model and user text always with control characters visible."""

    def __init__(self, as_json: bool, shown: int) -> None:
        self.as_json = as_json
        self.shown = shown

    def _json(self, payload: dict[str, Any]) -> None:
        import json

        from agent_cir.cli._common import _JSON_UNSAFE

        text = json.dumps(payload, ensure_ascii=False, default=str)
        sys.stdout.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
        sys.stdout.flush()

    def turn(self, session: Any, turn: Any) -> None:
        ordered_by, rows = _rows(session, self.shown)
        if self.as_json:
            self._json({"turn": turn.index, "kind": turn.kind, "text": turn.text, "question": turn.question,
                        "target_description": turn.target_description, "description_source": turn.description_source,
                        "requests": turn.dialogue_seen, "reference": turn.reference.model_dump(),
                        "ordered_by": ordered_by, "results": rows, "asked": turn.asked,
                        "uncertainty": turn.uncertainty.model_dump() if turn.uncertainty else None})
            return
        echo(f"turn {turn.index + 1} ({turn.kind}): {turn.target_description or ''}")
        for line in format_ranking(ordered_by, rows):
            echo(line)
        if turn.asked:
            echo(f"question: {turn.asked}")
        sys.stdout.flush()

    def event(self, payload: dict[str, Any], text: str) -> None:
        if self.as_json:
            self._json(payload)
        else:
            echo(text)
            sys.stdout.flush()

    def error(self, line_number: int, message: str) -> None:
        if self.as_json:
            self._json({"error": message, "line": line_number})
        else:
            echo(f"error (line {line_number}): {terminal_safe(message)}", err=True)


def parse_pick(argument: str, count: int) -> int:
    """``:pick N`` -> the 0-based position of the N-th result."""
    try:
        number = int(argument.strip())
    except ValueError:
        raise ChatLineError(f":pick needs a result number from 1 to {count}, got {argument.strip()!r}") from None
    if count == 0:
        raise ChatLineError("there are no results to pick from yet: make a request first")
    if not 1 <= number <= count:
        raise ChatLineError(f":pick {number}: there are {count} results; give a number from 1 to {count}")
    return number - 1


def handle_line(session: Any, line: str, printer: ChatPrinter) -> bool:
    """Act on one line; False when the chat should end. Errors of the line are raised (AgentCirError)."""
    if line.startswith(":"):
        name, _, argument = line[1:].partition(" ")
        name = name.strip().lower()
        if name in ("quit", "q", "exit"):
            return False
        if name == "help":
            printer.event({"help": HELP_TEXT}, HELP_TEXT)
        elif name == "undo":
            undone = session.undo()
            printer.event({"undone": undone.index, "kind": undone.kind},
                          f"undone: turn {undone.index + 1} ({undone.kind}{': ' + undone.text if undone.text else ''})")
        elif name == "pick":
            shown = session.results[: printer.shown]
            chosen = shown[parse_pick(argument, len(shown))]
            turn = session.pick(chosen.id)
            printer.event({"picked": chosen.id, "turn": turn.index, "reference": turn.reference.model_dump()},
                          f"picked {chosen.path or chosen.id}: the next requests start from it")
        elif name == "save":
            if not argument.strip():
                raise ChatLineError(":save needs a folder, e.g. :save my_session")
            written = session.save(Path(argument.strip()))
            printer.event({"saved": str(written)}, f"saved: {written}")
        else:
            raise ChatLineError(f"unknown command :{name}; commands are {', '.join(':' + c for c in COMMANDS)} (:help)")
        return True
    turn = session.answer(line) if session.question else session.refine(line)
    printer.turn(session, turn)
    return True


def _lines(source: TextIO, interactive: bool) -> Iterator[str]:
    """Lines of the script, the pipe or the terminal (a prompt only on a terminal)."""
    if not interactive:
        yield from (line.rstrip("\r\n") for line in source)
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            return


def run_chat(session: Any, lines: Iterable[str], printer: ChatPrinter) -> int:
    """Every line through :func:`handle_line`; returns how many lines failed."""
    failed = 0
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if not handle_line(session, line, printer):
                break
        except AgentCirError as err:
            failed += 1
            printer.error(number, str(err))
    return failed


@app.command("chat")
def chat(
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder made by `agent-cir index`."),
    image: Optional[Path] = typer.Option(None, "--image", help="Reference image file the conversation starts from."),
    reference_id: Optional[str] = typer.Option(
        None, "--reference-id", help="Start from this gallery item instead of an image file."),
    text: Optional[str] = typer.Option(None, "--text", help="The first request (else the first line)."),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", "--recipe", help="Recipe: a YAML file or a packaged name (see `agent-cir recipes`)."),
    gallery_captions: Optional[Path] = typer.Option(
        None, "--gallery-captions", help="JSON of gallery id -> captions to mix into scores."),
    script: Optional[Path] = typer.Option(
        None, "--script", help="Run these lines (one request or :command a line) instead of reading the terminal."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the session saved in this folder."),
    k: int = typer.Option(5, "--k", "-k", min=1, max=10, help="Results shown per turn."),
    as_json: bool = json_option("One JSON object per line: each turn, command result and error."),
    quiet: bool = quiet_option(),
) -> None:
    """A conversation: refine a search turn after turn, pick a result to continue from, undo, save.

    Reads the terminal, a --script file or a pipe (`printf 'make it red\\n:pick 2\\n' | agent-cir chat ...`)."""
    with user_errors(as_json):
        check_recipe_name(config)
        _check_inputs(index, image, reference_id, gallery_captions, script, resume)
        with contextlib.ExitStack() as stack:
            stack.enter_context(quiet_library_logs(quiet or as_json))
            session = _open_session(index, image, reference_id, config, gallery_captions, resume, quiet or as_json)
            printer = ChatPrinter(as_json, k)
            if resume is not None and session.results:
                printer.event({"resumed": str(resume), "turns": len(session.history)},
                              f"resumed {len(session.history)} turns from {resume}")
            failed = run_chat(session, [text], printer) if text else 0
            if script is not None:
                source = stack.enter_context(open(script, encoding="utf-8", errors="replace"))
                failed += run_chat(session, _lines(source, interactive=False), printer)
            else:
                interactive = sys.stdin.isatty()
                if interactive and not as_json:
                    echo("Type a change (:help for commands, :quit to end).", err=True)
                failed += run_chat(session, _lines(sys.stdin, interactive=interactive), printer)
            if failed and not as_json:
                warn(f"{failed} line(s) could not be used (see the errors above)")


def _check_inputs(index: Path | None, image: Path | None, reference_id: str | None, gallery_captions: Path | None,
                  script: Path | None, resume: Path | None) -> None:
    if index is None and gallery_captions is None:
        raise typer.BadParameter("give --index INDEX_DIR (made by `agent-cir index`)", param_hint="--index")
    if index is not None and not index.is_dir():
        raise typer.BadParameter(f"index folder {index} does not exist (make one with `agent-cir index`)",
                                 param_hint="--index")
    if resume is None and image is None and reference_id is None:
        raise typer.BadParameter("give --image REF (or --reference-id, or --resume DIR)", param_hint="--image")
    if image is not None and not image.is_file():
        raise typer.BadParameter(f"reference image {image} does not exist", param_hint="--image")
    if script is not None and not script.is_file():
        raise typer.BadParameter(f"script {script} does not exist (one request or :command a line)",
                                 param_hint="--script")
    if gallery_captions is not None and not gallery_captions.is_file():
        raise typer.BadParameter(f"gallery captions file {gallery_captions} does not exist",
                                 param_hint="--gallery-captions")


def _open_session(index: Path | None, image: Path | None, reference_id: str | None, config: str | None,
                  gallery_captions: Path | None, resume: Path | None, quiet: bool) -> Any:
    from agent_cir.cli.search_cmd import build_search_overrides, check_reference_image
    from agent_cir.pipeline import Pipeline
    from agent_cir.session import Session

    if image is not None:
        check_reference_image(image, str(image))
    overrides = build_search_overrides(None, None, None, with_recipe=config is not None,
                                       has_image=image is not None, has_text=True)
    if config is not None:
        settle_offline_mode(quiet)
    status(f"loading models ({'recipe ' + config if config else 'CLIP only'}) ...", quiet)
    pipeline = Pipeline.from_config(config if config is not None else {"name": "clip-only"}, index=index,
                                    overrides=overrides, gallery_captions=gallery_captions)
    if resume is not None:
        return Session.resume(resume, pipeline)
    return pipeline.session(reference=image, reference_id=reference_id)
