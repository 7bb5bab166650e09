"""`agent-cir quickstart` offline, end to end, and the parts it is made of (example gallery, mode decision,
folder safety)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from agent_cir.cli import _register, app
from agent_cir.quickstart import (
    MARKER_NAME,
    QuickstartError,
    example_gallery,
    example_queries,
    examples_dir,
    offline_reason,
    prepare_folder,
    run_quickstart,
)
from agent_cir.trace.io import read_traces

ROOT = Path(__file__).resolve().parent.parent
_register()


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory):
    """One offline quickstart through the CLI (HF_HUB_OFFLINE=1 is set for the whole suite)."""
    folder = tmp_path_factory.mktemp("qs") / "agent_cir_quickstart"
    result = CliRunner().invoke(app, ["quickstart", "-o", str(folder)])
    return folder, result


# ------------------------------------------------------------------------------------ the example gallery


def test_example_gallery_is_small_varied_and_its_queries_point_into_it():
    manifest = json.loads((examples_dir() / "examples.json").read_text())
    files = sorted(p.name for p in example_gallery().glob("*.jpg"))
    assert 40 <= len(files) <= 60
    assert sorted(scene["file"] for scene in manifest["scenes"]) == files
    sizes = [p.stat().st_size for p in example_gallery().glob("*.jpg")]
    assert max(sizes) < 25_000 and sum(sizes) < 1_000_000
    for key in ("shape", "colour", "count", "background"):
        assert len({scene[key] for scene in manifest["scenes"]}) >= 2, key
    for query in example_queries():
        assert query.reference in files and query.target in files and query.reference != query.target
        assert query.text


def test_each_scene_shows_the_colour_and_background_it_is_named_for():
    """Checked on the pixels, independently of the generator: the background colour sits in the corners and
    the named object colour is the most common non-background colour."""
    references = {"red": (205, 40, 45), "green": (40, 155, 70), "yellow": (235, 195, 35),
                  "white": (244, 242, 236), "blue": (55, 100, 190)}
    manifest = json.loads((examples_dir() / "examples.json").read_text())
    for scene in manifest["scenes"]:
        pixels = np.asarray(Image.open(example_gallery() / scene["file"]).convert("RGB"), dtype=np.float64)
        corner = pixels[:6, :6].reshape(-1, 3).mean(axis=0)
        nearest = min(("white", "blue"), key=lambda name: np.linalg.norm(corner - references[name]))
        assert nearest == scene["background"], scene["file"]
        flat = pixels.reshape(-1, 3)
        distance = {name: np.linalg.norm(flat - np.array(references[name]), axis=1)
                    for name in ("red", "green", "yellow")}
        counts = {name: int((d < 40).sum()) for name, d in distance.items()}
        assert max(counts, key=counts.get) == scene["colour"], (scene["file"], counts)


def test_the_generator_script_reproduces_the_committed_gallery(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("make_example_gallery", ROOT / "scripts" / "make_example_gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    manifest = module.build(tmp_path)
    assert manifest == json.loads((examples_dir() / "examples.json").read_text())
    for committed in example_gallery().glob("*.jpg"):
        fresh = np.asarray(Image.open(tmp_path / "gallery" / committed.name), dtype=np.float64)
        # pixels, not bytes: another libjpeg may encode the same picture slightly differently
        assert np.abs(fresh - np.asarray(Image.open(committed), dtype=np.float64)).mean() < 1.0, committed.name


# ------------------------------------------------------------------------------------- online or offline


def test_offline_reason_never_probes_when_told_offline(monkeypatch: pytest.MonkeyPatch):
    def probe() -> str | None:
        raise AssertionError("the Hub must not be probed")

    assert "--offline" in offline_reason(True, probe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in offline_reason(False, probe)


def test_offline_reason_follows_the_probe_when_the_environment_allows(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert offline_reason(False, lambda: None) is None
    assert "not reachable: no route" in offline_reason(False, lambda: "no route")


# ----------------------------------------------------------------------------------------- the folder


def test_a_folder_the_quickstart_did_not_make_is_never_written(tmp_path: Path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(QuickstartError, match="not made by the quickstart"):
        prepare_folder(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    result = CliRunner().invoke(app, ["quickstart", "-o", str(mine), "--json"])
    assert result.exit_code == 2
    assert "not made by the quickstart" in json.loads(result.stdout)["error"]
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_a_file_or_an_empty_folder(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(QuickstartError, match="is a file"):
        prepare_folder(tmp_path / "f")
    (tmp_path / "empty").mkdir()
    assert (prepare_folder(tmp_path / "empty") / MARKER_NAME).is_file()


def test_unknown_example_query_lists_the_known_ones(tmp_path: Path):
    result = CliRunner().invoke(app, ["quickstart", "-o", str(tmp_path / "q"), "--query", "nope"])
    assert result.exit_code == 2 and "example-1" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ end to end


def test_offline_quickstart_says_so_first_prints_a_ranking_and_a_report(offline_run):
    folder, result = offline_run
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OFFLINE: random-init CLIP + scripted models")
    assert sum("OFFLINE" in line for line in lines) == 1, "said once, plainly"
    table = [line for line in lines if re.match(r"\s+\d+\s+[\d.-]+\s+[\d.]+\s+\S+\.jpg", line)]
    assert len(table) == 10
    report = Path(next(line for line in lines if line.startswith("report: ")).split(": ", 1)[1])
    assert report == folder / "report" / "index.html" and report.is_file()


def test_offline_quickstart_ran_all_four_stages_and_recorded_why(offline_run):
    folder, _ = offline_run
    [trace] = list(read_traces(folder / "run" / "traces.jsonl"))
    assert [s["stage"] for s in trace["stages"]] == ["caption", "rewrite", "retrieve", "rerank"]
    assert all(s["skipped"] is None for s in trace["stages"])
    assert {c["backend"] for s in trace["stages"] for c in s["calls"]} == {"fake"}
    assert trace["encoder"]["random_weights"] is True and trace["encoder"]["architecture"] == "ViT-B-32"
    assert trace["target_descriptions"] == ["Two green circles on a blue background."]
    assert trace["query"]["meta"]["ground_truth"] == ["two_green_circles_on_blue.jpg"]
    run_info = json.loads((folder / "run" / "run.json").read_text())
    assert run_info["quickstart_offline"] is True and "HF_HUB_OFFLINE" in run_info["offline_reason"]
    html = (folder / "report" / "index.html").read_text()
    assert "OFFLINE RUN" in html  # the report says it too (notes), besides the report's own banner


def test_rerun_reuses_the_index_and_json_output_is_honest(offline_run):
    folder, first = offline_run
    assert first.exit_code == 0
    result = CliRunner().invoke(app, ["quickstart", "-o", str(folder), "--json", "--query", "example-3"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["offline"] is True and answer["encoder"]["random_weights"] is True
    assert answer["query"]["target"] == "one_green_triangle_on_white.jpg"
    assert answer["ordered_by"] == "judge" and len(answer["results"]) == 20
    assert Path(answer["report"]).is_file()
    from agent_cir.index import GalleryIndex

    meta = GalleryIndex.load(next((folder / "index").glob("*/CURRENT")).parent).meta
    assert meta["last_build"]["reused"] == 48 and meta["last_build"]["indexed"] == 0


def test_unloadable_weights_fall_back_to_the_offline_path(offline_run, monkeypatch: pytest.MonkeyPatch):
    """The Hub 'answers' but the weights cannot be had: the same run, offline, saying why."""
    folder, _ = offline_run
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(folder.parent / "empty_hf_home"))  # no cached weights
    import agent_cir.encoders.base as base

    monkeypatch.setattr(base, "hub_unreachable_reason", lambda timeout=3.0: "test: no network")
    modes: list[str | None] = []
    outcome = run_quickstart(folder, probe=lambda: None, on_mode=modes.append, progress=False)
    assert modes[0] is None and "could not be loaded" in modes[1]
    assert outcome.offline and outcome.encoder["random_weights"] is True
    assert outcome.report.is_file()


def test_the_quickstart_report_embeds_its_thumbnails(offline_run):
    """The first report a new user opens shows the pictures, not "outside the gallery" (issue 20.1)."""
    folder, result = offline_run
    assert result.exit_code == 0, result.output
    pages = sorted((folder / "report").rglob("*.html"))
    html = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    assert "outside the gallery" not in html
    shown = set(re.findall(r"""thumbs/[\w.-]+\.(?:jpg|png|webp)""", html))
    assert len(shown) >= 10  # the reference and the ranked results, as thumbnails the report made
    assert all((folder / "report" / name).is_file() for name in shown)


def test_the_report_finds_the_gallery_of_a_generational_index(offline_run, tmp_path):
    """`report --gallery <index folder>` stands for the index's images, whichever generation is current."""
    from agent_cir.report.load import _index_images_dir

    folder, _ = offline_run
    [index] = [p for p in (folder / "index").iterdir() if p.is_dir()]
    assert (index / "CURRENT").is_file() and not (index / "meta.json").exists()  # generational layout
    assert _index_images_dir(index) == folder / "gallery"
    # a traces file alone (no run.json) with --gallery <index folder>: thumbnails again
    traces = tmp_path / "traces.jsonl"
    traces.write_bytes((folder / "run" / "traces.jsonl").read_bytes())
    result = CliRunner().invoke(app, ["report", str(traces), "-o", str(tmp_path / "r"), "--gallery", str(index),
                                        "--gallery", str(folder / "run" / "artifacts")])
    assert result.exit_code == 0, result.output
    html = "\n".join(page.read_text(encoding="utf-8") for page in (tmp_path / "r").rglob("*.html"))
    assert "outside the gallery" not in html and "thumbs/" in html
