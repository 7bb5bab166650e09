"""CLI conventions every command shares (cli/_common.py) and the honest-output rules of `search` / `index`."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
import yaml
from typer.testing import CliRunner

from agent_cir.cli import COMMAND_ORDER, _register, app
from agent_cir.cli._common import missing_extra_message, user_errors
from agent_cir.quickstart import example_gallery

ROOT = Path(__file__).resolve().parent.parent
_register()
runner = CliRunner()


def _commands() -> dict:
    group = typer.main.get_command(app)
    return {name: group.get_command(None, name) for name in group.list_commands(None)}


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory, tiny_open_clip_config: Path) -> tuple[Path, Path]:
    """Ten example scenes indexed with a tiny random open_clip model; returns (index dir, gallery dir)."""
    import shutil

    root = tmp_path_factory.mktemp("conventions")
    gallery = root / "gallery"
    gallery.mkdir()
    for path in sorted(example_gallery().glob("*.jpg"))[:10]:
        shutil.copy(path, gallery / path.name)
    result = runner.invoke(app, ["index", str(gallery), "-o", str(root / "idx"), "--model", str(tiny_open_clip_config),
                                 "--pretrained", "none", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    return root / "idx", gallery


def test_version():
    from agent_cir import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"agent-cir {__version__}"


def test_help_lists_commands_in_order_of_use():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = [name for name in re.findall(r"^│ (\w[\w-]*)\s", result.stdout, re.MULTILINE) if name in _commands()]
    expected = [name for name in COMMAND_ORDER if name in _commands()]
    assert listed[: len(expected)] == expected
    assert listed[0] == "quickstart"


@pytest.mark.parametrize("name", sorted(set(COMMAND_ORDER)))
def test_one_spelling_per_concept(name: str):
    command = _commands().get(name)
    assert command is not None, f"{name} is in cli.COMMAND_ORDER but not registered"
    spellings = {"out": {"--out", "-o"}, "as_json": {"--json"}, "json_output": {"--json"}, "quiet": {"--quiet", "-q"}}
    problems = []
    for param in command.params:
        opts = set(param.opts) | set(getattr(param, "secondary_opts", []))
        if param.name in spellings and opts != spellings[param.name]:
            problems.append(f"{param.name}: {sorted(opts)}")
        if "--progress" in opts:
            problems.append("--progress/--no-progress: use -q/--quiet")
    assert not problems, f"{name}: {problems}; use cli/_common's out_option / json_option / quiet_option"


def test_index_on_a_wrong_path_fails_before_any_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import agent_cir.encoders as encoders

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for a path that does not exist")

    monkeypatch.setattr(encoders, "create_encoder", no_loading)
    result = runner.invoke(app, ["index", str(tmp_path / "nope"), "-o", str(tmp_path / "idx")])
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Traceback" not in result.output
    as_json = runner.invoke(app, ["index", str(tmp_path / "nope"), "-o", str(tmp_path / "idx"), "--json"])
    assert as_json.exit_code == 2 and "does not exist" in json.loads(as_json.stdout)["error"]
    assert not (tmp_path / "idx").exists()


def test_search_errors_are_json_under_json(tmp_path: Path):
    result = runner.invoke(app, ["search", "-i", str(tmp_path / "nope"), "--text", "x", "--json"])
    assert result.exit_code == 2
    assert "does not exist" in json.loads(result.stdout)["error"]
    missing_image = runner.invoke(app, ["search", "-i", str(tmp_path), "--image", str(tmp_path / "a.jpg"), "--json"])
    assert missing_image.exit_code == 2 and "a.jpg" in json.loads(missing_image.stdout)["error"]


def test_image_alone_is_image_mode_and_json_names_the_encoder(tiny_index):
    index, gallery = tiny_index
    reference = sorted(gallery.iterdir())[0]
    result = runner.invoke(app, ["search", "-i", str(index), "--image", str(reference), "--json", "-q"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["mode"] == "image" and answer["query_texts"] == []
    encoder = answer["encoder"]
    assert encoder["random_weights"] is True and encoder["backend"] == "open_clip"
    assert {"architecture", "weights", "preprocess", "pretrained"} <= set(encoder)
    assert answer["ordered_by"] == "retrieval"
    # an empty text cannot be fused in
    fused = runner.invoke(app, ["search", "-i", str(index), "--image", str(reference), "--mode", "fusion", "--json"])
    assert fused.exit_code == 2 and "--text" in json.loads(fused.stdout)["error"]


def test_random_weights_warning_is_on_stderr_and_stdout_holds_only_results(tiny_index):
    index, _ = tiny_index
    result = runner.invoke(app, ["search", "-i", str(index), "--text", "a red star", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith("warning: the encoder") and "RANDOM" in result.stderr
    assert "RANDOM" not in result.stdout and result.stdout.splitlines()[0].startswith("rank")
    # the default k is 10 (rclip's), and a CLIP-only search reports no "model calls: 0"
    assert len(result.stdout.splitlines()) == 1 + 10
    assert "model calls" not in result.stderr


def test_search_leaves_no_temporary_folder(tiny_index, tiny_open_clip_config, tmp_path, monkeypatch):
    index, gallery = tiny_index
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    recipe = yaml.safe_load((ROOT / "examples" / "offline_fake.yaml").read_text())
    recipe["encoder"] = {"backend": "open_clip", "model": str(tiny_open_clip_config), "pretrained": "none"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["search", "-c", str(tmp_path / "r.yaml"), "-i", str(index), "--image",
                                 str(sorted(gallery.iterdir())[0]), "--text", "make it green", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["grids"] == []
    assert list(scratch.iterdir()) == []
    asked = runner.invoke(app, ["search", "-c", str(tmp_path / "r.yaml"), "-i", str(index), "--image",
                                str(sorted(gallery.iterdir())[0]), "--text", "make it green", "--json", "-q",
                                "--artifacts", str(tmp_path / "art")])
    [grid] = json.loads(asked.stdout)["grids"]
    assert Path(grid).is_file() and Path(grid).is_relative_to(tmp_path / "art")


def test_text_output_after_a_rerank_shows_the_judge_score_that_made_the_order(tiny_index, tiny_open_clip_config,
                                                                               tmp_path):
    index, gallery = tiny_index
    recipe = yaml.safe_load((ROOT / "examples" / "offline_fake.yaml").read_text())
    recipe["encoder"] = {"backend": "open_clip", "model": str(tiny_open_clip_config), "pretrained": "none"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    args = ["search", "-c", str(tmp_path / "r.yaml"), "-i", str(index), "--image", str(sorted(gallery.iterdir())[0]),
            "--text", "make it green", "-q"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    header = next(line for line in text.stdout.splitlines() if line.strip().startswith("rank"))
    assert header.split()[:3] == ["rank", "judge", "cosine"]
    rows = [line.split() for line in text.stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    judged = [float(row[1]) for row in rows if row[1] != "-"]
    assert len(judged) == 9 and judged == sorted(judged, reverse=True) and judged[0] == 1.0
    answer = json.loads(runner.invoke(app, args + ["--json"]).stdout)
    assert answer["ordered_by"] == "judge"
    assert [round(r["rerank_score"], 4) for r in answer["results"][:9]] == judged
    # the judge said 3 > 7 > ... : its first pick need not be the best cosine, and the table shows both
    assert [float(row[2]) for row in rows] == [round(r["score"], 4) for r in answer["results"]]


def test_use_index_encoder_reaches_the_pipeline(tiny_index, monkeypatch):
    import inspect

    from agent_cir.pipeline import Pipeline

    seen = {}
    original = Pipeline.from_config.__func__
    takes_it = "use_index_encoder" in inspect.signature(original).parameters

    def from_config(cls, recipe, use_index_encoder=False, **kwargs):
        seen["use_index_encoder"] = use_index_encoder
        return original(cls, recipe, **kwargs, **({"use_index_encoder": use_index_encoder} if takes_it else {}))

    monkeypatch.setattr(Pipeline, "from_config", classmethod(from_config))
    index, _ = tiny_index
    result = runner.invoke(app, ["search", "-i", str(index), "--text", "a star", "--use-index-encoder", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert seen == {"use_index_encoder": True}


def test_a_missing_extra_is_one_line_naming_it():
    probe = typer.Typer()

    @probe.command()
    def needs_gradio(as_json: bool = typer.Option(False, "--json")) -> None:
        with user_errors(as_json):
            raise ModuleNotFoundError("No module named 'gradio'", name="gradio")

    result = runner.invoke(probe, [])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "pip install 'agent-cir[demo]'" in result.stderr
    assert "agent-cir[demo]" in json.loads(runner.invoke(probe, ["--json"]).stdout)["error"]
    assert "agent-cir[hf]" in missing_extra_message(ModuleNotFoundError(name="accelerate.utils"))
    assert missing_extra_message(ModuleNotFoundError(name="agent_cir.nonexistent")) is None  # a bug stays a bug


# ----------------------------------------------------------------------------- issue 18.4, 18.10, 20.5, 20.6, 20.11


def test_two_searches_with_one_reference_and_different_texts_get_two_query_ids(tiny_index, tmp_path):
    index, gallery = tiny_index
    reference = sorted(gallery.glob("*.jpg"))[0]
    traces = tmp_path / "t.jsonl"
    for text in ("make it red", "make it blue"):
        result = runner.invoke(app, ["search", "-i", str(index), "--image", str(reference), "--text", text,
                                     "--trace", str(traces), "-q"])
        assert result.exit_code == 0, result.output
    ids = [json.loads(line)["query_id"] for line in traces.read_text().splitlines()]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(query_id.startswith(reference.stem) for query_id in ids)  # still readable


def test_paths_only_prints_one_existing_path_per_line(tiny_index):
    index, _ = tiny_index
    result = runner.invoke(app, ["search", "-i", str(index), "--text", "a red star", "-f", "--k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(Path(line).is_file() for line in lines)
    assert "RANDOM" in result.stderr  # the warning still reaches the user, on stderr


def test_search_checks_path_kinds_and_the_reference_before_any_model_loads(tiny_index, tmp_path, monkeypatch):
    import agent_cir.pipeline as pipeline_module

    def no_loading(*args, **kwargs):
        raise AssertionError("models were loaded for a bad path")

    monkeypatch.setattr(pipeline_module.Pipeline, "from_config", classmethod(no_loading))
    index, gallery = tiny_index
    folder = runner.invoke(app, ["search", "-i", str(index), "--image", str(gallery), "--json"])
    assert folder.exit_code == 2 and "is a folder, expected" in json.loads(folder.stdout)["error"]
    a_file = runner.invoke(app, ["search", "-i", str(sorted(gallery.glob("*.jpg"))[0]), "--text", "x"])
    assert a_file.exit_code == 2 and "is a file, expected" in a_file.stderr
    images = runner.invoke(app, ["search", "-i", str(gallery), "--text", "x"])
    assert images.exit_code == 2 and "not an index folder" in images.stderr
    assert f"-o {gallery}" not in images.stderr and f"--out {gallery}" not in images.stderr
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("just text")
    bad = runner.invoke(app, ["search", "-i", str(index), "--image", str(not_image), "--text", "x", "--json"])
    message = json.loads(bad.stdout)["error"]
    assert bad.exit_code == 2 and str(not_image) in message and "BufferedReader" not in message


class _OneFile:
    def __init__(self, body: bytes) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/ref.jpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_image_url_is_a_reference_downloaded_with_a_size_cap(tiny_index):
    from agent_cir.cli.search_cmd import fetched_reference
    from agent_cir.errors import AgentCirError

    index, gallery = tiny_index
    body = sorted(gallery.glob("*.jpg"))[0].read_bytes()
    server = _OneFile(body)
    try:
        result = runner.invoke(app, ["search", "-i", str(index), "--image", server.url, "--json", "-q"])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        assert answer["query"]["image"] == server.url and answer["results"]
        with pytest.raises(AgentCirError, match="larger than"):
            with fetched_reference(server.url, max_bytes=len(body) // 2):
                pass
    finally:
        server.close()
    leftovers = list(Path(tempfile.gettempdir()).glob("agent-cir-reference-*"))
    assert not leftovers


def test_an_index_update_reuses_the_recorded_encoder_and_loads_it_only_when_needed(
        tiny_open_clip_config, tmp_path, monkeypatch):
    import shutil

    import agent_cir.encoders as encoders
    from PIL import Image

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for path in sorted(example_gallery().glob("*.jpg"))[:3]:
        shutil.copy(path, gallery / path.name)
    index = tmp_path / "idx"
    first = runner.invoke(app, ["index", str(gallery), "-o", str(index), "--model", str(tiny_open_clip_config),
                                "--pretrained", "none", "--workers", "0", "-q"])
    assert first.exit_code == 0, first.output
    real_create = encoders.create_encoder
    loaded = []

    def counting(config, *args, **kwargs):
        loaded.append(config)
        return real_create(config, *args, **kwargs)

    monkeypatch.setattr(encoders, "create_encoder", counting)
    # nothing new: no encoder flags given, none loaded (the default --pretrained would need the Hub)
    rerun = runner.invoke(app, ["index", str(gallery), "-o", str(index), "--workers", "0", "--json", "-q"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["indexed"] == 0 and loaded == []
    # a new file: the recorded encoder (random weights, 'none') loads, not the default laion weights
    Image.new("RGB", (40, 30), (200, 10, 10)).save(gallery / "new.png")
    update = runner.invoke(app, ["index", str(gallery), "-o", str(index), "--workers", "0", "--json", "-q"])
    assert update.exit_code == 0, update.output
    assert json.loads(update.stdout)["indexed"] == 1
    assert len(loaded) == 1 and loaded[0].pretrained in (None, "none") and loaded[0].model == str(tiny_open_clip_config)


_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_control_characters_in_a_target_description_never_reach_the_terminal(tiny_index):
    index, _ = tiny_index
    hostile = "a red star\x1b]0;pwned\x07\r\n   1    0.9999  /etc/passwd\x9b2J"
    result = runner.invoke(app, ["search", "-i", str(index), "--text", "x", "--target-text", hostile,
                                 "--k", "2"])
    assert result.exit_code == 0, result.output
    for stream in (result.stdout, result.stderr):
        assert not _CONTROL.search(stream), repr(stream)
    assert "\\x1b]0;pwned" in result.stdout
    assert len(result.stdout.splitlines()) == 1 + 1 + 2  # description, header, two rows: no faked row


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])))
def test_no_control_character_survives_the_printers(text):
    from agent_cir.cli._common import rich_safe, terminal_safe
    from agent_cir.cli._ranking import format_ranking

    safe = terminal_safe(text)
    assert not _CONTROL.search(safe) and "\n" not in safe
    assert terminal_safe(safe.replace("\\", "")) == safe.replace("\\", "")  # plain text passes unchanged
    rows = [{"rank": 1, "path": text, "id": text, "score": 0.5}]
    for line in format_ranking("retrieval", rows):
        assert not _CONTROL.search(terminal_safe(line))
    assert not _CONTROL.search(rich_safe(text))


def test_printed_errors_and_json_carry_no_control_characters(capsys):
    from agent_cir.cli._common import echo_json, print_error

    print_error("user", "server said: \x1b[2J\x9b1;1H\nfake line", as_json=False)
    print_error("user", "server said: \x1b[2J\x9b1;1H\nfake line", as_json=True)
    echo_json({"path": "a\x9b2J\u202eb"})
    captured = capsys.readouterr()
    assert not _CONTROL.search(captured.err) and not _CONTROL.search(captured.out)
    assert len(captured.err.splitlines()) == 1
    lines = captured.out.splitlines()
    assert json.loads(lines[0])["kind"] == "user"
    assert json.loads("\n".join(lines[1:]))["path"] == "a\x9b2J\u202eb"  # escaped, same value
