"""``agent-cir index --engine ray`` and ``--input-format list|parquet`` from the command line.

The Ray test lets the engine start its own local cluster (none is running in this module) and checks that it is
gone afterwards; the input-format tests use the local engine, the list is read the same way for either engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent_cir.errors import AgentCirError
from agent_cir.index import GalleryIndex
from agent_cir.index.ray_engine import RAY_MISSING
from tests.fixtures.encoders import BAD_FILES, GOOD_IMAGES


def _cli():
    from agent_cir.cli import _register, app

    _register()
    return app


def _index(folder: Path, out: Path, config: Path, *extra: str):
    args = ["index", str(folder), "--out", str(out), "--model", str(config), "--pretrained", "none", "--workers", "0",
            "--batch-size", "4", "--quiet", "--json", *extra]
    return CliRunner().invoke(_cli(), args)


def _payload(result) -> dict:
    assert result.exit_code == 0, result.output
    # Ray's own log lines may follow on the mixed output stream; the summary is the first JSON object.
    return json.JSONDecoder().raw_decode(result.output[result.output.index("{"):])[0]


@pytest.mark.slow
def test_engine_ray_starts_and_stops_its_own_cluster_and_matches_local(image_folder, tmp_path, tiny_open_clip_config) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    assert not ray.is_initialized()
    distributed = _payload(_index(image_folder, tmp_path / "ray", tiny_open_clip_config, "--engine", "ray", "--concurrency", "1"))
    assert not ray.is_initialized()  # the local cluster it started was shut down
    local = _payload(_index(image_folder, tmp_path / "local", tiny_open_clip_config))
    assert distributed["engine"] == "ray" and local["engine"] == "local"
    assert distributed["total"] == 6 and distributed["skipped"] == {reason: 1 for reason in BAD_FILES.values()}
    a, b = GalleryIndex.load(tmp_path / "ray"), GalleryIndex.load(tmp_path / "local")
    assert a.ids == b.ids == sorted(GOOD_IMAGES)
    assert float(np.abs(np.asarray(a.embeddings) - np.asarray(b.embeddings)).max()) <= 1e-5


def test_engine_ray_without_ray_installed_is_one_line(image_folder, tmp_path, tiny_open_clip_config, tiny_open_clip_encoder, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = _index(image_folder, tmp_path / "x", tiny_open_clip_config, "--engine", "ray")
    assert result.exit_code == 2 and json.loads(result.output) == {"error": RAY_MISSING, "kind": "user"}
    plain = CliRunner().invoke(_cli(), ["index", str(image_folder), "-o", str(tmp_path / "x"), "--engine", "ray"])
    assert plain.exit_code == 2 and plain.output.strip() == f"error: {RAY_MISSING}"
    with pytest.raises(AgentCirError, match=r"install the ray extra: pip install 'agent-cir\[ray\]'"):
        GalleryIndex.build(image_folder, tmp_path / "y", tiny_open_clip_encoder, progress=False, engine="ray")
    assert not (tmp_path / "x").exists()


def test_ray_options_without_engine_ray_are_refused(image_folder, tmp_path, tiny_open_clip_config) -> None:
    result = _index(image_folder, tmp_path / "x", tiny_open_clip_config, "--concurrency", "2")
    assert result.exit_code == 2 and "need --engine ray" in json.loads(result.output)["error"]
    result = _index(image_folder, tmp_path / "x", tiny_open_clip_config, "--engine", "spark")
    assert result.exit_code == 2 and "--engine must be local or ray" in json.loads(result.output)["error"]


# ---------------------------------------------------------------- --input-format list | parquet
def test_input_format_list_indexes_the_listed_files_only(image_folder, tmp_path, tiny_open_clip_config) -> None:
    listing = image_folder / "subset.txt"
    listing.write_text("# a subset\nred.jpg\n\n  nested/blue.jpeg  \nempty.jpg\nred.jpg\n", encoding="utf-8")
    payload = _payload(_index(listing, tmp_path / "idx", tiny_open_clip_config, "--input-format", "list"))
    index = GalleryIndex.load(tmp_path / "idx")
    assert index.ids == ["nested/blue.jpeg", "red.jpg"] and index.images_dir == image_folder.resolve()
    assert payload["skipped"] == {"empty file": 1}
    # A longer list later: the same index grows incrementally (ids are relative to the same root).
    listing.write_text("red.jpg\nnested/blue.jpeg\ngray.bmp\n", encoding="utf-8")
    again = _payload(_index(listing, tmp_path / "idx", tiny_open_clip_config, "--input-format", "list"))
    assert again["indexed"] == 1 and again["reused"] == 2 and again["removed"] == 1  # empty.jpg left the list


def test_input_format_parquet_reads_the_path_column_under_root(image_folder, tmp_path, tiny_open_clip_config) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    table = tmp_path / "shard-00000.parquet"
    paths = [str(image_folder / "green.PNG"), str(image_folder / "nested" / "deeper" / "yellow.webp"), "animated.gif"]
    parquet.write_table(pa.table({"path": paths, "caption": ["g", "y", "a"]}), table)
    _payload(_index(table, tmp_path / "idx", tiny_open_clip_config, "--input-format", "parquet", "--root", str(image_folder)))
    assert GalleryIndex.load(tmp_path / "idx").ids == ["animated.gif", "green.PNG", "nested/deeper/yellow.webp"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("/etc/hostname\n", "outside"),  # absolute path outside the root
        ("red.jpg\ns3://bucket/a.jpg\n", "URLs"),
        ("missing.jpg\n", "not found"),
        ("# nothing\n\n", "lists no files"),
    ],
)
def test_bad_lists_fail_before_any_model_loads(image_folder, tmp_path, content, expected) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(content, encoding="utf-8")
    # No --model/--pretrained override: loading the default model would fail offline, so an error about the
    # list proves the list was checked first.
    result = CliRunner().invoke(
        _cli(), ["index", str(listing), "-o", str(tmp_path / "x"), "--input-format", "list", "--root", str(image_folder), "--json"]
    )
    assert result.exit_code == 2 and expected in json.loads(result.output)["error"], result.output
    if expected == "outside":
        assert "--root" in json.loads(result.output)["error"]


def test_parquet_without_a_path_column_is_explained(image_folder, tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    table = tmp_path / "t.parquet"
    parquet.write_table(pa.table({"url": ["red.jpg"]}), table)
    result = CliRunner().invoke(_cli(), ["index", str(table), "-o", str(tmp_path / "x"), "--input-format", "parquet", "--json"])
    assert result.exit_code == 2 and "has no 'path' column" in json.loads(result.output)["error"]


def test_root_is_only_for_lists(image_folder, tmp_path) -> None:
    result = CliRunner().invoke(_cli(), ["index", str(image_folder), "-o", str(tmp_path / "x"), "--root", str(tmp_path), "--json"])
    assert result.exit_code == 2 and "--root is for --input-format list or parquet" in json.loads(result.output)["error"]
