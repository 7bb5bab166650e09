"""``agent-cir index --twins``: the synthetic twins (Paracosm) drawn from the command line with the tiny diffusers
pipeline, resumed on a re-run, and clear errors before any index work when a piece is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from agent_cir.cli import _register, app
from agent_cir.index import GalleryIndex
from agent_cir.index.twins import JOURNAL_NAME, load_twins, twins_folder
from tests.test_imagine_twins import _gallery
from tests.test_imagine_tiny import TINY_SIZE

pytest.importorskip("diffusers")
from tests.test_imagine_tiny import tiny_text2img_dir  # noqa: E402,F401 - the session fixture

_register()
CAPTION = "a square of one colour with a dotted line"


def _twins_recipe(folder: Path, pipeline: Path) -> Path:
    recipe = {
        "name": "twins-tiny",
        "models": {"vlm": {"spec": "fake:captioner", "extra": {"responses": [CAPTION]}}},
        "caption": {"enabled": True, "model": "vlm"},
        "imagine": {"enabled": True, "model": f"diffusers:{pipeline}", "steps": 2, "guidance": 2.0,
                    "size": TINY_SIZE, "device": "cpu"},
        "cache": {"enabled": False},
    }
    path = folder / "twins.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _index_args(gallery: Path, out: Path, model: Path) -> list[str]:
    return ["index", str(gallery), "--out", str(out), "--model", str(model), "--pretrained", "none", "--workers", "0"]


def test_index_twins_draws_one_twin_per_image_and_a_rerun_reuses_them(tmp_path, tiny_open_clip_config,
                                                                        tiny_text2img_dir):  # noqa: F811
    gallery, out = _gallery(tmp_path / "gallery"), tmp_path / "index"
    recipe = _twins_recipe(tmp_path, tiny_text2img_dir)
    args = _index_args(gallery, out, tiny_open_clip_config) + ["--twins", "--twins-config", str(recipe)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "twins: 6 drawn, 0 reused" in first.output  # 7 files, two with the same bytes: one twin
    index = GalleryIndex(out)
    twins = load_twins(index)
    assert twins.shape == (len(index), index.dim) == (7, index.dim)
    journal = [json.loads(line) for line in (twins_folder(out) / JOURNAL_NAME).read_text().splitlines()]
    assert len(journal) == 6 and {record["caption"] for record in journal} == {CAPTION}

    # a re-run (the same settings) keeps the index and draws no twin again
    again = CliRunner().invoke(app, args + ["--json"])
    assert again.exit_code == 0, again.output
    payload = json.loads(again.stdout)
    assert any("twins: 0 drawn, 6 reused" in note for note in payload["notes"])
    assert np.array_equal(load_twins(GalleryIndex(out)), twins)

    # other settings (--twins-set) draw every twin again: the twins on disk are the ones meta.json describes
    reseeded = CliRunner().invoke(app, args + ["--twins-set", "imagine.seed=5"])
    assert reseeded.exit_code == 0, reseeded.output
    assert "twins: 6 drawn, 0 reused" in reseeded.output
    assert json.loads((twins_folder(out) / "meta.json").read_text())["settings"]["seed"] == 5
    assert not np.array_equal(load_twins(GalleryIndex(out)), twins)


def test_twins_set_overrides_the_recipe(tmp_path, tiny_open_clip_config, tiny_text2img_dir):  # noqa: F811
    gallery, out = _gallery(tmp_path / "gallery"), tmp_path / "index"
    recipe = _twins_recipe(tmp_path, tiny_text2img_dir)
    result = CliRunner().invoke(app, _index_args(gallery, out, tiny_open_clip_config) + [
        "--twins", "--twins-config", str(recipe), "--twins-set", "imagine.seed=7", "--twins-set", "imagine.steps=1"])
    assert result.exit_code == 0, result.output
    meta = json.loads((twins_folder(out) / "meta.json").read_text())
    assert meta["settings"]["seed"] == 7 and meta["settings"]["steps"] == 1


def test_missing_diffusers_is_one_clear_error_before_the_index_is_built(tmp_path, monkeypatch, tiny_text2img_dir):  # noqa: F811
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    gallery, out = _gallery(tmp_path / "gallery"), tmp_path / "index"
    recipe = _twins_recipe(tmp_path, tiny_text2img_dir)
    result = CliRunner().invoke(app, _index_args(gallery, out, Path("ViT-B-32")) + [
        "--twins", "--twins-config", str(recipe), "--json"])
    assert result.exit_code != 0
    error = json.loads(result.stdout)["error"]
    assert "pip install 'agent-cir[edit]'" in error and "diffusers" in error
    assert "Traceback" not in result.output
    assert not out.exists()  # failed before any index work (and before the encoder loaded)


def test_twins_options_without_twins_and_a_recipe_without_its_captioner_are_refused(tmp_path, tiny_text2img_dir):  # noqa: F811
    gallery, out = _gallery(tmp_path / "gallery"), tmp_path / "index"
    recipe = _twins_recipe(tmp_path, tiny_text2img_dir)
    lone = CliRunner().invoke(app, _index_args(gallery, out, Path("ViT-B-32")) + ["--twins-config", str(recipe)])
    assert lone.exit_code != 0 and "add --twins" in lone.output
    broken = CliRunner().invoke(app, _index_args(gallery, out, Path("ViT-B-32")) + [
        "--twins", "--twins-config", str(recipe), "--twins-set", "caption.model=nowhere"])
    assert broken.exit_code != 0 and "Traceback" not in broken.output
    assert "nowhere" in broken.output and "models:" in broken.output
    assert not out.exists()
