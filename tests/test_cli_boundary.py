"""The CLI's one error boundary (cli.__init__ + cli/_common.classify_error): every error typer/click or the OS
raises is one ``error: ...`` line on stderr, or under ``--json`` one JSON object on stdout; never a traceback."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_cir.cli import _register, app

_register()
runner = CliRunner()


def _one_json_error(result) -> dict:
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "╭" not in result.output
    objects = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(objects) == 1, result.stdout
    assert set(objects[0]) == {"error", "kind"} and objects[0]["error"]
    return objects[0]


def _one_error_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "╭" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ["search", "--k", "0", "--text", "x"],
    ["search", "--alpha", "2", "--text", "x"],
    ["search", "--no-such-option"],
    ["index", "imgs", "--batch-size", "0", "-o", "x"],
    ["index", "imgs"],  # a missing required option
])
def test_usage_errors_are_one_line_or_one_json_object(args):
    line = _one_error_line(runner.invoke(app, args))
    assert "--help" in line  # what to do next
    error = _one_json_error(runner.invoke(app, args + ["--json"]))
    assert error["kind"] == "usage"


@pytest.mark.parametrize("raised, kind, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/index.faiss"), "os", ["disk is full", "/out/index.faiss"]),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), "os", ["/ro/out", "permission"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/traces.jsonl"), "os", ["folder where a file"]),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "encoding", ["UTF-8"]),
    (json.JSONDecodeError("Expecting value", "{x", 1), "json", ["invalid JSON", "line 1"]),
])
def test_os_encoding_and_json_errors_inside_a_command_are_one_line(monkeypatch, tmp_path, raised, kind, words):
    import agent_cir.report as report

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(report, "build_report", failing)
    (tmp_path / "t.jsonl").write_text("{}\n")
    args = ["report", str(tmp_path / "t.jsonl"), "-o", str(tmp_path / "r")]
    line = _one_error_line(runner.invoke(app, args))
    for word in words:
        assert word in line
    assert runner.invoke(app, args).exit_code == 2


def test_an_os_error_under_json_is_one_json_object(monkeypatch, tmp_path):
    import agent_cir.cli.index_cmd as index_cmd

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "idx" / "embeddings.npy"))

    monkeypatch.setattr(index_cmd, "run_index", full_disk)
    (tmp_path / "imgs").mkdir()
    result = runner.invoke(app, ["index", str(tmp_path / "imgs"), "-o", str(tmp_path / "idx"), "--json"])
    error = _one_json_error(result)
    assert error["kind"] == "os" and "embeddings.npy" in error["error"]


def test_index_out_is_an_existing_file_fails_before_any_model_loads(monkeypatch, tmp_path):
    import agent_cir.encoders as encoders

    def no_loading(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr(encoders, "create_encoder", no_loading)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "out.txt").write_text("mine")
    result = runner.invoke(app, ["index", str(tmp_path / "imgs"), "-o", str(tmp_path / "out.txt"), "--json"])
    assert "is a file, expected a folder" in _one_json_error(result)["error"]
    assert (tmp_path / "out.txt").read_text() == "mine"
    listed = runner.invoke(app, ["index", str(tmp_path / "out.txt"), "-o", str(tmp_path / "idx")])
    assert "is a file, expected a folder" in _one_error_line(listed)


def test_help_short_flag_and_no_bool_metavar():
    for args in (["-h"], ["search", "-h"], ["index", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.stdout, result.output
    for command in ("search", "index", "eval", "report", "demo", "quickstart"):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).stdout
        assert "<bool>" not in text.lower() and "BOOLEAN" not in text, command
    assert "[ray]" in runner.invoke(app, ["index", "--help"], terminal_width=200).stdout


@pytest.mark.parametrize("command", [["search", "--text", "x", "-i", "."], ["eval", "--dataset", "circo", "-o", "o"],
                                     ["demo", "-i", "."]])
def test_a_recipe_typo_suggests_the_closest_name(command, tmp_path):
    result = runner.invoke(app, [*command, "--config", "locla"] if command[0] != "demo" else [*command, "-c", "locla"])
    line = _one_error_line(result)
    assert "did you mean 'local'" in line
    assert "cirevl" not in line  # not the whole list of recipes


def test_recipes_text_output_says_what_each_needs():
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    assert "needs API keys: OPENAI_API_KEY" in result.stdout
    assert "needs servers: ollama" in result.stdout
    assert result.stdout.count("needs weights:") >= 5


def test_offline_is_settled_once_up_front_for_every_model(monkeypatch):
    import huggingface_hub.constants as hub_constants

    import agent_cir.cli._common as common

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    probes = []
    monkeypatch.setattr(common, "HUB_PROBE", lambda: probes.append(1) or "cannot reach huggingface.co:443 (timed out)")
    reason = common.settle_offline_mode(quiet=True)
    assert "not reachable" in reason and probes == [1]
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert hub_constants.HF_HUB_OFFLINE is True  # loaders imported before the check see it too
    # decided: a second call (another model) does not probe again
    assert common.settle_offline_mode(quiet=True) and probes == [1]


def test_offline_env_means_no_probe_at_all(monkeypatch):
    import agent_cir.cli._common as common

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(common, "HUB_PROBE", lambda: pytest.fail("probed although HF_HUB_OFFLINE is set"))
    assert "HF_HUB_OFFLINE" in common.settle_offline_mode(quiet=True)


def test_search_with_a_recipe_settles_offline_before_any_model_loads(monkeypatch, tmp_path):
    import agent_cir.cli._common as common
    import agent_cir.pipeline as pipeline_module

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(common, "HUB_PROBE", lambda: "cannot reach huggingface.co:443 (no route)")
    seen = {}

    def from_config(cls, *args, **kwargs):
        import os

        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        raise common.AgentCirError("stop here")

    monkeypatch.setattr(pipeline_module.Pipeline, "from_config", classmethod(from_config))
    index = tmp_path / "idx"
    index.mkdir()
    (index / "meta.json").write_text("{}")
    result = runner.invoke(app, ["search", "-c", "local", "-i", str(index), "--text", "x"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == "error: stop here" and seen == {"offline": "1"}
    assert "not reachable" in result.stderr


def test_library_noise_is_dropped_and_quiet_hides_library_warnings():
    import logging

    from agent_cir.cli._common import quiet_library_logs

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    before = (root.level, logging.getLogger("huggingface_hub").level)
    try:
        with quiet_library_logs(quiet=False):
            logging.warning("No pretrained weights loaded for model 'ViT-B-32'. Model initialized randomly.")
            logging.warning("kept: not a duplicate")
        assert seen == ["kept: not a duplicate"]  # open_clip's duplicate of the CLI's own warning is gone
        seen.clear()
        with quiet_library_logs(quiet=True):
            logging.getLogger("huggingface_hub.file_download").warning("Retrying in 1s [Retry 1/5]")
            logging.getLogger("huggingface_hub.file_download").error("kept: an error still shows")
        assert seen == ["kept: an error still shows"]
        assert (root.level, logging.getLogger("huggingface_hub").level) == before  # put back afterwards
    finally:
        root.removeHandler(handler)


def test_a_closed_pipe_ends_quietly(monkeypatch):
    import agent_cir.cli.eval_cmd as eval_cmd

    def reader_left(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(eval_cmd, "echo", reader_left)
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 1 and result.stderr == "" and "Traceback" not in result.output
