"""``agent-cir chat``: a piped --script dialogue over a real index with scripted models, hostile lines (empty ones,
unknown commands, ``:pick 999``, control characters) that are reported without ending the session, --json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agent_cir.cli import _register, app
from agent_cir.cli.chat_cmd import ChatLineError, parse_pick
from agent_cir.session.turns import load_session

_register()

REWRITE = '{"reasoning": "red \\u001b[2J and long", "target_description": "a red thing\\u001b]0;pwned\\u0007 with long sleeves"}'


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory, tiny_open_clip_config, photos_dir):
    root = tmp_path_factory.mktemp("chat")
    gallery = root / "gallery"
    gallery.mkdir()
    for photo in sorted(photos_dir.glob("*.jpg"))[:8]:
        shutil.copy(photo, gallery / photo.name)
    built = CliRunner().invoke(app, ["index", str(gallery), "--out", str(root / "idx"), "--model",
                                     str(tiny_open_clip_config), "--pretrained", "none", "--workers", "0"])
    assert built.exit_code == 0, built.output
    recipe = {
        "name": "chat-fake",
        "encoder": {"backend": "open_clip", "model": str(tiny_open_clip_config), "pretrained": "none"},
        "models": {"vlm": {"spec": "fake:captioner", "extra": {"responses": ["A blue shirt with short sleeves."]}},
                   "llm": {"spec": "fake:rewriter", "extra": {"responses": [REWRITE]}}},
        "caption": {"enabled": True, "model": "vlm"},
        "rewrite": {"enabled": True, "model": "llm", "structured_output": False},
        "retrieve": {"mode": "fusion", "k": 6},
    }
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    reference = gallery / sorted(p.name for p in gallery.iterdir())[0]
    return root, recipe_path, reference


def _args(setup, *extra):
    root, recipe, reference = setup
    return ["chat", "-i", str(root / "idx"), "--image", str(reference), "--recipe", str(recipe), "-q", *extra]


def test_a_piped_script_runs_the_dialogue_and_reports_bad_lines_without_ending_it(chat_setup, tmp_path):
    script = tmp_path / "dialogue.txt"
    save_dir = tmp_path / "saved"
    script.write_text("\n".join([
        "make it red",
        "",
        "   ",
        ":frobnicate",
        ":pick 999",
        ":pick two",
        "with long sleeves\x1b[31m",
        ":pick 1",
        "at night",
        ":undo",
        "in the rain",
        f":save {save_dir}",
        ":quit",
        "never read",
    ]) + "\n")
    result = CliRunner().invoke(app, _args(chat_setup, "--script", str(script)))
    assert result.exit_code == 0, result.output
    out, err = result.stdout, result.stderr
    assert "unknown command :frobnicate" in err and "line 4" in err
    assert ":pick 999: there are 5 results" in err and ":pick needs a result number" in err
    assert "\x1b" not in out and "\x1b" not in err and "\\x1b" in out  # model text is shown, escaped
    assert sum(line.startswith("turn ") for line in out.splitlines()) == 4
    assert "picked " in out and "undone: turn 4 (refine: at night)" in out
    record = load_session(save_dir)
    kinds = [turn.kind for turn in record.turns]
    assert kinds == ["query", "refine", "pick", "refine"]
    # the request after the pick composes with those before it (they are 'earlier' for the new reference)
    last = record.turns[-1]
    assert last.dialogue_seen == ["in the rain"]
    assert record.turns[1].dialogue_seen == ["make it red", "with long sleeves [31m"]  # the ESC never reaches a prompt
    assert "never read" not in out


def test_stdin_pipe_with_json_gives_one_object_per_line(chat_setup, tmp_path):
    lines = "make it red\n:help\nwith long sleeves\n:pick 0\n:undo\n:undo\n:undo\n"
    result = CliRunner().invoke(app, _args(chat_setup, "--json"), input=lines)
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    turns = [o for o in objects if "turn" in o and "results" in o]
    assert [t["kind"] for t in turns] == ["query", "refine"]
    assert turns[1]["requests"] == ["make it red", "with long sleeves"]
    assert all(r["path"] and Path(r["path"]).is_file() for r in turns[0]["results"])
    assert len(turns[0]["results"]) == 5
    errors = [o for o in objects if "error" in o]
    assert [e["line"] for e in errors] == [4, 7]  # :pick 0, and the third :undo with nothing left
    assert "nothing to undo" in errors[1]["error"]
    assert any("help" in o for o in objects)


def test_resume_continues_a_saved_session(chat_setup, tmp_path):
    saved = tmp_path / "s"
    first = CliRunner().invoke(app, _args(chat_setup), input=f"make it red\n:save {saved}\n")
    assert first.exit_code == 0, first.output
    root, recipe, _ = chat_setup
    again = CliRunner().invoke(app, ["chat", "-i", str(root / "idx"), "--recipe", str(recipe), "--resume", str(saved),
                                     "-q", "--json"], input=f"with long sleeves\n:save {saved}\n")
    assert again.exit_code == 0, again.output
    turns = load_session(saved).turns
    assert [t.dialogue_seen for t in turns] == [["make it red"], ["make it red", "with long sleeves"]]


def test_bad_options_are_one_line_errors(chat_setup, tmp_path):
    root, recipe, reference = chat_setup
    missing = CliRunner().invoke(app, ["chat", "-i", str(root / "idx"), "--image", str(tmp_path / "nope.jpg")])
    assert missing.exit_code == 2 and "does not exist" in missing.output and "Traceback" not in missing.output
    no_ref = CliRunner().invoke(app, ["chat", "-i", str(root / "idx")])
    assert no_ref.exit_code == 2 and "--image" in no_ref.output
    script = CliRunner().invoke(app, _args(chat_setup, "--script", str(tmp_path / "none.txt")))
    assert script.exit_code == 2 and "script" in script.output


def test_parse_pick_bounds():
    assert parse_pick(" 3 ", 5) == 2
    for bad in ("0", "6", "-1", "x", ""):
        with pytest.raises(ChatLineError):
            parse_pick(bad, 5)
    with pytest.raises(ChatLineError, match="no results"):
        parse_pick("1", 0)
