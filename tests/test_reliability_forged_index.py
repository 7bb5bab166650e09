"""A forged index meta.json cannot aim the index at any folder (issue 18, case 7, the images folder itself):
``images_dir`` is checked on load by GalleryIndex and by the report's reader of index folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_cir.errors import AgentCirError
from agent_cir.index import GalleryIndex
from agent_cir.index.images_root import ForgedImagesDirError, images_dir_problem
from agent_cir.report.load import _index_images_dir


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path, format="PNG")


def _forge_images_dir(out: Path, images_dir: object) -> None:
    """Set meta.json's images_dir and re-seal the pointer's checksum, as a forger would."""
    pointer = json.loads((out / "CURRENT").read_text(encoding="utf-8"))
    meta_path = out / pointer["generation"] / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["images_dir"] = images_dir
    data = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8")
    meta_path.write_bytes(data)
    pointer["meta_sha256"] = hashlib.sha256(data).hexdigest()
    (out / "CURRENT").write_text(json.dumps(pointer), encoding="utf-8")


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, tiny_open_clip_encoder) -> Path:
    root = tmp_path_factory.mktemp("forged")
    _photo(root / "gallery" / "id_rsa", 0)  # named like the file a forger would be after
    _photo(root / "gallery" / "b.png", 1)
    GalleryIndex.build(root / "gallery", root / "idx", tiny_open_clip_encoder, files=["b.png"], workers=0, progress=False)
    return root / "idx"


FORGED = [
    str(Path.home() / ".ssh"),
    str(Path.home()),
    "/etc",
    "/etc/ssl/private",
    "/",
    "/proc/self",
    "relative/photos",
    "/tmp/photos/../../etc",
    "/tmp/./photos",
    "/tmp/photos\x1b]0;pwned\x07",
]


@pytest.mark.parametrize("forged", FORGED)
def test_a_forged_images_folder_is_refused_on_load(built_index, tmp_path, forged) -> None:
    import shutil

    out = tmp_path / "idx"
    shutil.copytree(built_index, out)
    _forge_images_dir(out, forged)
    with pytest.raises(ForgedImagesDirError, match="forged") as caught:
        GalleryIndex.load(out)
    assert isinstance(caught.value, AgentCirError) and "agent-cir index" in str(caught.value)
    assert _index_images_dir(out) is None  # the report does not show images from there either


def test_the_images_folder_a_build_wrote_loads(built_index) -> None:
    index = GalleryIndex.load(built_index)
    assert index.images_dir == (built_index.parent / "gallery").resolve()
    assert _index_images_dir(built_index) == index.images_dir


def test_the_cli_says_what_is_wrong_with_a_forged_index(built_index, tmp_path) -> None:
    import shutil

    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    _register()
    out = tmp_path / "idx"
    shutil.copytree(built_index, out)
    _forge_images_dir(out, str(Path.home() / ".ssh"))
    result = CliRunner().invoke(app, ["search", "--index", str(out), "--text", "a cat", "--json"])
    assert result.exit_code == 2, result.output
    assert "forged" in result.output and "Traceback" not in result.output


def test_a_credential_store_is_not_indexed(tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    keys = tmp_path / "home" / ".ssh"
    _photo(keys / "id_rsa.png", 0)
    with pytest.raises(AgentCirError, match="credentials"):
        GalleryIndex.build(keys, tmp_path / "idx", tiny_open_clip_encoder, workers=0, progress=False)
    assert not (tmp_path / "idx").exists()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="/.a\x00\x1b ", max_size=24))
def test_an_accepted_images_folder_is_absolute_normalised_and_outside_system_trees(value) -> None:
    if images_dir_problem(value, home="/home/u") is None:
        import os

        assert value.startswith("/") and os.path.normpath(value) == value
        assert not any(ord(c) < 32 for c in value)
        assert value not in ("/", "/home/u") and not value.startswith(("/etc", "/proc", "/home/u/.ssh"))
