"""The index never deletes or overwrites a user's files: which --out folders it writes into, what garbage
collection may remove, and no write through a symlink (issue 18, items 1-3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_cir.index import GalleryIndex
from agent_cir.index.generation import collect_garbage
from agent_cir.index.lock import IndexLock
from agent_cir.index.out_folder import MARKER_NAME, OutFolderError, check_out_folder


def _build(folder: Path, out: Path, encoder) -> GalleryIndex:
    return GalleryIndex.build(folder, out, encoder, batch_size=4, workers=0, progress=False)


def _user_lookalikes(folder: Path) -> list[Path]:
    """A user's own folders and files whose names look like index internals."""
    made = []
    for name in ("gen-holiday", "work-2019", "gen-20200101T000000-1-abcd.partial"):
        (folder / name).mkdir(parents=True)
        (folder / name / "photo.txt").write_text("mine", encoding="utf-8")
        made.append(folder / name / "photo.txt")
    (folder / "CURRENT.tmp-notes").write_text("mine", encoding="utf-8")
    made.append(folder / "CURRENT.tmp-notes")
    return made


def test_a_folder_of_user_files_is_refused_and_left_untouched(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    out = tmp_path / "mine"
    made = _user_lookalikes(out)
    (out / ".lock").write_text("my lock notes", encoding="utf-8")
    with pytest.raises(OutFolderError, match="not empty and is not an agent_cir index"):
        _build(image_folder, out, tiny_open_clip_encoder)
    assert all(path.read_text(encoding="utf-8") == "mine" for path in made)
    assert (out / ".lock").read_text(encoding="utf-8") == "my lock notes"
    assert not (out / MARKER_NAME).exists()


def test_cli_refuses_a_user_folder_before_the_model_loads(image_folder, tmp_path, monkeypatch) -> None:
    from agent_cir.cli import _register, app

    _register()

    def no_model(*args, **kwargs):
        raise AssertionError("the encoder must not load for a refused --out")

    monkeypatch.setattr("agent_cir.encoders.create_encoder", no_model)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "taxes.pdf").write_bytes(b"%PDF")
    result = CliRunner().invoke(app, ["index", str(image_folder), "--out", str(out), "--json"])
    assert result.exit_code != 0
    assert "not an agent_cir index" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["index", str(image_folder), "--out", str(image_folder / "idx"), "--json"])
    assert result.exit_code != 0 and "inside the images folder" in result.output


def test_out_equal_to_or_inside_the_gallery_is_refused(image_folder, tiny_open_clip_encoder) -> None:
    photo = image_folder / "gen-2020" / "beach.png"
    photo.parent.mkdir()
    photo.write_bytes((image_folder / next(p.name for p in image_folder.glob("*.png"))).read_bytes())
    for out in (image_folder, image_folder / "sub" / "idx"):
        with pytest.raises(OutFolderError, match="inside the images folder"):
            _build(image_folder, out, tiny_open_clip_encoder)
    assert photo.is_file() and not (image_folder / "sub").exists() and not (image_folder / ".lock").exists()


def test_garbage_collection_spares_lookalikes_inside_an_index(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    out = tmp_path / "idx"
    _build(image_folder, out, tiny_open_clip_encoder)
    first = json.loads((out / "CURRENT").read_text(encoding="utf-8"))["generation"]
    made = _user_lookalikes(out)
    _build(image_folder, out, tiny_open_clip_encoder)  # an existing index: written, its own old files collected
    _build(image_folder, out, tiny_open_clip_encoder)
    assert all(path.read_text(encoding="utf-8") == "mine" for path in made)
    assert not (out / first).exists()  # the index's own old generation is collected
    generations = [p.name for p in out.iterdir() if p.name.startswith("gen-") and p.name.count("-") > 2 and not p.name.endswith(".partial")]
    assert len(generations) == 2  # the current one and the one it replaced
    assert collect_garbage(out, set()) == [name for name in sorted(generations)]  # only names it recorded


def test_index_written_before_the_marker_is_still_recognised(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    out = tmp_path / "idx"
    _build(image_folder, out, tiny_open_clip_encoder)
    (out / MARKER_NAME).unlink()
    check_out_folder(out, image_folder)  # CURRENT + gen-*/meta.json
    index = _build(image_folder, out, tiny_open_clip_encoder)
    assert index.build_summary.indexed == 0 and (out / MARKER_NAME).is_file()


def test_a_symlinked_lock_is_refused_and_its_target_kept(tmp_path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate", encoding="utf-8")
    out = tmp_path / "idx"
    out.mkdir()
    os.symlink(target, out / ".lock")
    with pytest.raises(OutFolderError, match="symlink"):
        with IndexLock(out):
            pass
    assert target.read_text(encoding="utf-8") == "do not truncate"


def test_a_symlinked_checkpoint_journal_is_refused_and_its_target_kept(image_folder, tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    import secrets

    target = tmp_path / "precious.txt"
    target.write_text("do not append", encoding="utf-8")
    out = tmp_path / "idx"
    _build(image_folder, out, tiny_open_clip_encoder)
    monkeypatch.setattr(secrets, "token_hex", lambda n: "f" * (2 * n))
    work = out / f"work-{os.getpid()}-ffffffff"
    real_mkdir = Path.mkdir

    def mkdir_then_plant(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        if self == work:
            os.symlink(target, work / "journal.jsonl")

    monkeypatch.setattr(Path, "mkdir", mkdir_then_plant)
    from PIL import Image

    Image.new("RGB", (30, 20), (9, 200, 3)).save(image_folder / "new.png")
    with pytest.raises(OutFolderError, match="symlink"):
        _build(image_folder, out, tiny_open_clip_encoder)
    assert target.read_text(encoding="utf-8") == "do not append"


def test_a_folder_holding_only_a_users_lock_file_is_refused(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / ".lock").write_text("combination: 1234", encoding="utf-8")
    with pytest.raises(OutFolderError, match="not an agent_cir index"):
        _build(image_folder, out, tiny_open_clip_encoder)
    assert (out / ".lock").read_text(encoding="utf-8") == "combination: 1234"
    (out / ".lock").write_text("", encoding="utf-8")  # what a first build killed right after its lock leaves
    assert len(_build(image_folder, out, tiny_open_clip_encoder)) > 0
