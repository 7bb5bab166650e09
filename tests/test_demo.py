"""The demo's logic without a browser: stage-by-stage views, the intervention, input errors."""

from __future__ import annotations

import re
import os
from pathlib import Path

import pytest

from agent_cir.demo import DemoError, DemoSession, stream_query, supports_stage_callback, view_from_trace
from agent_cir.pipeline import Pipeline
from agent_cir.types import Query
from tests.fixtures.report import DEMO_CAPTION, DEMO_JUDGE, DEMO_REASONING, DEMO_TARGET


def test_a_query_shows_every_stage_output(demo_pipeline):
    session = DemoSession(demo_pipeline)
    assert [item_id for item_id, _ in session.pickable] == demo_pipeline.gallery.ids
    views = list(session.run("make it red", picked="photo_03.png"))
    final = views[-1]
    assert final.stages_done == ["caption", "rewrite", "retrieve", "rerank"]
    assert final.captions == DEMO_CAPTION
    assert final.reasoning == DEMO_REASONING
    assert final.description == DEMO_TARGET and final.description_source == "rewrite"
    assert len(final.retrieval) == 8 and len(final.final) == 8
    assert all(Path(path).is_file() for path, _ in final.retrieval + final.final)
    assert not any("photo 03" in label for _, label in final.retrieval), "the reference is excluded"
    assert all(re.fullmatch(r"#\d+ -?\d+\.\d{3} · photo \d\d", label) for _, label in final.retrieval), final.retrieval
    assert final.grid is not None and Path(final.grid).is_file()
    assert DEMO_JUDGE in final.judge
    # the judge ranked cell 3 first: the third retrieved item leads the final ranking
    assert final.final[0][1].split(" · ")[-1] == final.retrieval[2][1].split(" · ")[-1]
    # each final label names the score that ordered it, then the retrieval score of that item
    assert all(re.fullmatch(r"#\d+ judge (-|-?\d+\.\d{3}) · cosine -?\d+\.\d{3} · photo \d\d", label)
               for _, label in final.final), final.final
    cosine = {label.split(" · ")[-1]: label.split(" ")[1] for _, label in final.retrieval}
    assert all(label.split(" · ")[1] == f"cosine {cosine[label.split(' · ')[-1]]}" for _, label in final.final)
    assert final.trace is not None and final.trace["query"]["reference_id"] == "photo_03.png"


@pytest.mark.skipif(
    not supports_stage_callback(Pipeline),
    reason="Pipeline.run has no on_stage hook yet (requested from the lead): stages can only appear together",
)
def test_stages_stream_one_by_one(demo_pipeline):
    views = list(stream_query(demo_pipeline, Query(id="s1", text="make it red",
                                                   image=demo_pipeline.gallery.paths[1])))
    assert [v.stages_done for v in views[:4]] == [["caption"], ["caption", "rewrite"],
                                                 ["caption", "rewrite", "retrieve"],
                                                 ["caption", "rewrite", "retrieve", "rerank"]]
    assert views[0].captions == DEMO_CAPTION and views[0].retrieval == [] and views[0].trace is None
    assert views[2].retrieval and not views[2].final and views[2].grid is None
    assert views[-1].trace is not None


def test_intervention_skips_caption_and_rewrite(demo_pipeline):
    session = DemoSession(demo_pipeline)
    first = list(session.run("make it red", picked="photo_03.png"))[-1]
    edited = "a green square on a white table"
    rerun = list(session.run("make it red", picked="photo_03.png", target_text=edited))[-1]
    assert rerun.description == edited and rerun.description_source == "manual"
    assert rerun.captions == "", "no caption call was made"
    log = rerun.log
    assert "**caption**: skipped" in log and "**rewrite**: skipped" in log
    trace = rerun.trace
    assert trace["query"]["target_text"] == edited
    assert [s["stage"] for s in trace["stages"] if s["skipped"]] == ["caption", "rewrite"]
    assert trace["totals"]["model_calls"] == 1, "only the judge was called"
    retrieve = next(s for s in trace["stages"] if s["stage"] == "retrieve")
    assert retrieve["output"]["query_texts"] == [edited]
    assert first.trace["query"]["target_text"] is None


def test_bad_input_is_a_clear_error(demo_pipeline, tmp_path):
    session = DemoSession(demo_pipeline)
    with pytest.raises(DemoError, match="type a modification"):
        session.make_query("  ", picked="photo_01.png")
    with pytest.raises(DemoError, match="give a reference image"):
        session.make_query("make it red")
    with pytest.raises(DemoError, match="has no image file"):
        session.make_query("make it red", picked="not-in-gallery.png")
    uploaded = tmp_path / "mine.png"
    uploaded.write_bytes(Path(demo_pipeline.gallery.paths[0]).read_bytes())
    query = session.make_query("make it red", uploaded=str(uploaded))
    assert query.image == str(uploaded) and query.reference_id is None
    assert session.make_query("", target_text="a red square").target_text == "a red square"


def test_items_without_image_files_get_placeholders():
    trace = {"stages": [{"stage": "retrieve", "output": {"candidates": [{"rank": 1, "id": "cirr-dev-1", "score": 0.5}]}}],
             "results": [{"rank": 1, "id": "cirr-dev-1", "path": None, "score": 0.5}]}
    view = view_from_trace(trace, ground_truth={"cirr-dev-1"})
    path, label = view.final[0]
    assert Path(path).is_file() and "cirr-dev-1" in label and "ground truth" in label
    assert view.retrieval[0][0] == path


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served_demo(tmp_path, tiny_open_clip_config):
    """A demo launched on loopback from a recipe file and an index, over a gallery folder that also holds
    files that must never be served (a recipe, an SQLite cache, notes, a text file named .jpg)."""
    import yaml

    from agent_cir.config import EncoderConfig
    from agent_cir.demo import launch_demo
    from agent_cir.encoders import create_encoder
    from agent_cir.index import GalleryIndex
    from tests.fixtures.report import demo_recipe_dict, make_gallery_images

    pytest.importorskip("gradio")
    gallery = tmp_path / "gallery"
    make_gallery_images(gallery, count=6)
    secrets = {"recipe.yaml": "api_key: sk-secret\n", "cache.sqlite": "SQLite format 3\x00 rows",
               "notes.txt": "private notes", "fake.jpg": "not an image at all"}
    for name, text in secrets.items():
        (gallery / name).write_text(text)
    encoder = create_encoder(EncoderConfig(model=str(tiny_open_clip_config), pretrained="none", batch_size=8))
    GalleryIndex.build(gallery, tmp_path / "index", encoder, workers=0, progress=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(demo_recipe_dict()))
    port = _free_port()

    def launch(**options):
        return launch_demo(recipe, tmp_path / "index", port=port, artifacts_dir=tmp_path / "artifacts",
                           block=False, **options)

    apps = []

    def start(**options):
        apps.append(launch(**options))
        return apps[-1], f"http://127.0.0.1:{port}"

    yield start, gallery, tmp_path, secrets
    for app in apps:
        app.close()


def test_launch_demo_from_a_recipe_file_and_an_index_serves_on_loopback(served_demo):
    import urllib.request

    start, gallery, _, _ = served_demo
    app, base = start()
    assert app.server_name == "127.0.0.1"
    with urllib.request.urlopen(f"{base}/", timeout=30) as response:
        assert response.status == 200
        assert "agent_cir demo" in response.read().decode("utf-8", "replace")
    session = app.agent_cir_session
    assert sorted(item_id for item_id, _ in session.pickable) == sorted(p.name for p in gallery.glob("photo_*.png"))
    final = list(session.run("make it red", picked=session.pickable[0][0]))[-1]
    assert final.stages_done == ["caption", "rewrite", "retrieve", "rerank"] and len(final.final) == 5


def test_the_demo_serves_only_the_images_it_shows(served_demo):
    import io

    import httpx
    from PIL import Image

    start, gallery, tmp_path, secrets = served_demo
    app, base = start()
    session = app.agent_cir_session
    final = list(session.run("make it red", picked="photo_02.png"))[-1]
    shown = [path for path, _ in final.retrieval + final.final] + [final.grid]
    served_folder = session.served.folder
    assert all(Path(path).parent == served_folder for path in shown), "every image shown is a copy we made"
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in {shown[0], final.grid, session.preview_of("photo_01.png")}:
            response = client.get(f"/gradio_api/file={path}")
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith("image/")
            Image.open(io.BytesIO(response.content)).verify()
        refused = [gallery / "photo_01.png", *(gallery / name for name in secrets), tmp_path / "index" / "meta.json",
                   tmp_path / "index" / "manifest.jsonl", tmp_path / "recipe.yaml", Path("/etc/passwd"),
                   Path.cwd() / "pyproject.toml", Path(final.grid.replace(str(served_folder), str(tmp_path / "artifacts")))]
        for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/"):
            for path in refused + [Path(f"{served_folder}/../{served_folder.name}/../../etc/passwd")]:
                response = client.get(f"{route}{path}")
                assert response.status_code in (403, 404), f"{route}{path}: {response.status_code}"
                assert b"sk-secret" not in response.content and b"private notes" not in response.content
    assert all(p.suffix in (".jpg", ".png") for p in served_folder.iterdir())


def test_auth_puts_a_login_in_front_of_every_file(served_demo):
    import httpx

    start, _, _, _ = served_demo
    app, base = start(auth="alice:s3cret")
    session = app.agent_cir_session
    picture = session.preview_of("photo_01.png")
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get(f"/gradio_api/file={picture}").status_code in (401, 403)
        assert client.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 400
        assert client.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
        assert client.get(f"/gradio_api/file={picture}").status_code == 200


def test_network_warning_auth_option_and_readable_labels():
    from agent_cir.demo import item_label, network_warning, parse_auth
    from agent_cir.report.served import readable_name

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert network_warning(host) is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "myhost.example"):
        warning = network_warning(host)
        assert warning and "reachable from the network" in warning and "--auth" in warning
    assert parse_auth("alice:pa:ss") == ("alice", "pa:ss") and parse_auth(None) is None
    for bad in ("alice", ":pw", "alice:", " :x"):
        with pytest.raises(DemoError, match="USER:PASSWORD"):
            parse_auth(bad)
    assert item_label(1, 0.3124, "n02085620_Chihuahua.jpg") == "#1 0.312 · Chihuahua"
    assert item_label(12, None, "cats/tabby_03.png", ground_truth=True) == "#12 · tabby 03 ★ ground truth"
    assert (item_label(1, 0.9, "n02085620_Chihuahua.jpg", ordered_by="judge", retrieval_score=0.3124)
            == "#1 judge 0.900 · cosine 0.312 · Chihuahua")
    assert item_label(5, None, "a.jpg", ordered_by="verifier", retrieval_score=0.2) == "#5 verifier - · cosine 0.200 · a"
    assert readable_name("n02099601_golden_retriever.jpg") == "golden retriever"
    assert readable_name("cirr-dev-1") == "cirr-dev-1"


@pytest.mark.parametrize("ordered_by, field", [("judge", "judge_score"), ("fused", "final_score"),
                                               ("verifier", "verify_score")])
def test_the_final_gallery_shows_the_score_that_ordered_it(ordered_by, field):
    rows = [{"rank": 1, "id": "b.jpg", "score": 0.4, field: 0.95}, {"rank": 2, "id": "a.jpg", "score": 0.5}]
    trace = {"stages": [{"stage": "retrieve", "output": {"candidates": [{"rank": 1, "id": "a.jpg", "score": 0.5},
                                                                       {"rank": 2, "id": "b.jpg", "score": 0.4}]}}],
             "results": rows, "ordered_by": ordered_by}
    view = view_from_trace(trace)
    assert [label for _, label in view.final] == [f"#1 {ordered_by} 0.950 · cosine 0.400 · b",
                                                  f"#2 {ordered_by} - · cosine 0.500 · a"]
    assert [label for _, label in view.retrieval] == ["#1 0.500 · a", "#2 0.400 · b"]
    assert "gallery shows retrieval scores" not in view.log
    assert f"each row shows the {ordered_by} score, then the retrieval score" in view.log
    assert "rows with '-' were not shown to the" in view.log


def test_random_encoder_warning_in_the_view():
    trace = {"encoder": {"backend": "open_clip", "model": "ViT-B-32", "random_weights": True},
             "stages": [], "results": []}
    assert "random-init encoder: rankings are meaningless" in view_from_trace(trace).warning
    trace["encoder"]["random_weights"] = False
    assert view_from_trace(trace).warning == ""


def test_bad_auth_fails_before_models_load(tmp_path):
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    pytest.importorskip("gradio")
    _register()
    result = CliRunner().invoke(app, ["demo", "--config", "no-such-recipe", "--index", str(tmp_path), "--auth", "alice"])
    assert result.exit_code == 2 and "USER:PASSWORD" in result.output and "Traceback" not in result.output


def test_missing_gradio_is_a_clear_error(monkeypatch):
    import sys

    from agent_cir.demo import build_demo

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(DemoError, match=r"pip install 'agent-cir\[demo\]'"):
        build_demo(pipeline=None)


def test_demo_command_reports_a_missing_index_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["demo", "--config", "no-such-recipe", "--index", str(tmp_path / "nope")])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output


def test_the_demo_refuses_foreign_host_headers(served_demo):
    """DNS rebinding (issue 18, case 11): a page on evil.example whose name resolves to 127.0.0.1 gets 421."""
    import httpx

    start, _, _, _ = served_demo
    app, base = start()
    with httpx.Client(base_url=base, timeout=30) as client:
        for host in ("evil.example", "evil.example:7860", "127.0.0.1.evil.example", ""):
            assert client.get("/", headers={"Host": host}).status_code == 421, host
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert client.get("/", headers={"Host": host}).status_code == 200, host


def test_allowed_host_names_add_the_given_host():
    from agent_cir.demo import _host_name, allowed_host_names

    assert allowed_host_names("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert "demo.lan" in allowed_host_names("demo.lan") and "0.0.0.0" not in allowed_host_names("0.0.0.0")
    assert _host_name("[::1]:7860") == "::1" and _host_name("Demo.LAN:80") == "demo.lan"


_DEMO_UNTIL_SIGNALLED = """
import sys, time
from pathlib import Path
import agent_cir.demo as demo
import agent_cir.pipeline as pipeline_module

class _Pipeline:
    gallery = None
    class recipe:
        name = "stub"

pipeline_module.Pipeline.from_config = classmethod(lambda cls, *a, **k: _Pipeline())
demo._import_gradio = lambda: None

class _App:
    def __init__(self, pipeline):
        self.agent_cir_session = demo.DemoSession(pipeline)

demo.build_demo = lambda pipeline, title="": _App(pipeline)

def _serve(app, pipeline, artifacts_dir=None, **options):
    (artifacts_dir / "grid.png").write_bytes(b"grid")
    app.agent_cir_session.served.placeholder("ref")
    try:  # what Gradio's block_thread does: sleep until KeyboardInterrupt, then return
        print(artifacts_dir, app.agent_cir_session.served.folder, flush=True)
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        return

demo.launch_app = _serve
demo.launch_demo("recipe.yaml", "index", block=True)
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_the_demo_removes_its_temporary_folders_when_stopped(tmp_path, how):
    """Issue 18, case 23: the served copies and grids do not outlive a demo stopped by SIGTERM or Ctrl-C."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", _DEMO_UNTIL_SIGNALLED], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    line = process.stdout.readline().split()
    assert len(line) == 2, process.stderr.read()
    artifacts, served = map(Path, line)
    assert artifacts.is_dir() and any(served.iterdir())
    process.send_signal(getattr(signal, how))
    assert process.wait(timeout=30) == 0, process.stderr.read()
    assert not artifacts.exists() and not served.exists()
