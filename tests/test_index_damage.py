"""Damaged and legacy index folders: every damage is a clear AgentCirError naming the file and what to do;
a rebuild recovers; an index written by the flat pre-generation layout loads and is migrated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent_cir.errors import AgentCirError
from agent_cir.retrieval import search_index
from agent_cir.index import DamagedIndexError, GalleryIndex


def _build(folder: Path, out: Path, encoder) -> GalleryIndex:
    return GalleryIndex.build(folder, out, encoder, batch_size=4, workers=0, progress=False)


def _edit_meta(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


DAMAGES = {
    "meta edited": ("meta.json", lambda gen: _edit_meta(gen / "meta.json", count=5)),
    "meta not json": ("meta.json", lambda gen: (gen / "meta.json").write_text("{not json")),
    "embeddings truncated": ("embeddings.npy", lambda gen: (gen / "embeddings.npy").write_bytes((gen / "embeddings.npy").read_bytes()[:-40])),
    "embeddings zeroed, same size": ("embeddings.npy", lambda gen: (gen / "embeddings.npy").write_bytes(
        (gen / "embeddings.npy").read_bytes()[:128] + bytes(len((gen / "embeddings.npy").read_bytes()) - 128))),
    "manifest garbage line": ("manifest.jsonl", lambda gen: (gen / "manifest.jsonl").write_text(
        (gen / "manifest.jsonl").read_text() + "\x00garbage{\n")),
    "faiss missing": ("index.faiss", lambda gen: (gen / "index.faiss").unlink()),
    "pointer garbage": ("CURRENT", lambda gen: (gen.parent / "CURRENT").write_text("../../etc")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_generation_is_a_clear_error_and_a_rebuild_recovers(damage, image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    out = tmp_path / "idx"
    index = _build(image_folder, out, tiny_open_clip_encoder)
    name, apply = DAMAGES[damage]
    apply(index.generation_dir)
    with pytest.raises(DamagedIndexError) as caught:
        GalleryIndex.load(out)
    message = str(caught.value)
    assert name in message and "agent-cir index" in message and str(out) in message
    rebuilt = _build(image_folder, out, tiny_open_clip_encoder)  # starts over, says why, never reuses the damage
    assert rebuilt.build_summary.indexed == 6 and rebuilt.build_summary.notes
    assert sorted(GalleryIndex.load(out, verify=True).ids) == sorted(index.ids)


def test_files_swapped_between_generations_are_detected(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    out = tmp_path / "idx"
    first = _build(image_folder, out, tiny_open_clip_encoder)
    first_embeddings = first.generation_dir / "embeddings.npy"
    saved = first_embeddings.read_bytes()
    shutil.copy(image_folder / "gray.bmp", image_folder / "gray-2.bmp")
    (image_folder / "red.jpg").unlink()
    second = _build(image_folder, out, tiny_open_clip_encoder)  # also 6 images: same array shape
    assert len(second) == len(first)
    (second.generation_dir / "embeddings.npy").write_bytes(saved)
    with pytest.raises(DamagedIndexError, match="embeddings.npy does not match the checksum"):
        GalleryIndex.load(out)


def test_large_generation_checks_sizes_and_counts_without_hashing(image_folder, tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    import agent_cir.index.generation as generation

    out = tmp_path / "idx"
    index = _build(image_folder, out, tiny_open_clip_encoder)
    monkeypatch.setattr(generation, "VERIFY_FULL_MAX_BYTES", 10)
    assert GalleryIndex.load(out).ids == index.ids
    path = index.generation_dir / "embeddings.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DamagedIndexError, match="embeddings.npy is .* bytes"):
        GalleryIndex.load(out)


def _as_legacy(index: GalleryIndex, folder: Path) -> None:
    """The flat layout written before generations: the four files directly in --out, format_version 1."""
    folder.mkdir()
    for name in ("manifest.jsonl", "embeddings.npy", "index.faiss"):
        shutil.copy(index.generation_dir / name, folder / name)
    meta = dict(index.meta)
    for key in ("generation", "faiss_ntotal", "previous_generation", "follow_symlinks"):
        meta.pop(key, None)
    meta.update(format_version=1, files={"embeddings": "embeddings.npy", "manifest": "manifest.jsonl", "faiss": "index.faiss"})
    (folder / "meta.json").write_text(json.dumps(meta))


def test_legacy_flat_index_loads_and_is_migrated(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    built = _build(image_folder, tmp_path / "new", tiny_open_clip_encoder)
    legacy_dir = tmp_path / "legacy"
    _as_legacy(built, legacy_dir)
    legacy = GalleryIndex.load(legacy_dir)
    assert legacy.generation == "legacy" and legacy.ids == built.ids
    np.testing.assert_array_equal(np.asarray(legacy.embeddings), np.asarray(built.embeddings))
    assert legacy.faiss_index.ntotal == 6
    hit = search_index(legacy, tiny_open_clip_encoder, image=image_folder / "gray.bmp", mode="image", k=1, exclude_reference=False)
    assert hit[0].id == "gray.bmp"

    migrated = _build(image_folder, legacy_dir, tiny_open_clip_encoder)
    assert migrated.generation.startswith("gen-") and migrated.build_summary.reused == 6 and migrated.build_summary.indexed == 0
    assert (legacy_dir / "meta.json").is_file()  # the replaced (legacy) generation is kept one build longer
    again = _build(image_folder, legacy_dir, tiny_open_clip_encoder)
    assert not (legacy_dir / "meta.json").exists() and not (legacy_dir / "embeddings.npy").exists()
    assert again.ids == built.ids and again.build_summary.reused == 6


def test_legacy_count_mismatch_names_the_manifest(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    built = _build(image_folder, tmp_path / "new", tiny_open_clip_encoder)
    legacy_dir = tmp_path / "legacy"
    _as_legacy(built, legacy_dir)
    _edit_meta(legacy_dir / "meta.json", count=7)
    with pytest.raises(AgentCirError, match="manifest.jsonl lists 6 images, but meta.json says count 7"):
        GalleryIndex.load(legacy_dir)
    _edit_meta(legacy_dir / "meta.json", count=6)
    faiss_path = legacy_dir / "index.faiss"
    import faiss

    small = faiss.IndexFlatIP(32)
    small.add(np.zeros((2, 32), dtype=np.float32))
    faiss.write_index(small, str(faiss_path))
    with pytest.raises(AgentCirError, match="index.faiss holds 2 vectors"):
        GalleryIndex.load(legacy_dir).faiss_index


def test_garbage_manifest_lines_of_every_kind(tmp_path) -> None:
    from agent_cir.index.manifest import parse_manifest

    for line in (b"[1, 2]", b'"text"', b"\xff\xfe", b'{"path": 1}', b'{"path": "a", "size": 1, "mtime": 0, "mtime_ns": 0, "hash": "h", "row": -1}',
                 b"[" * 5000 + b"]" * 5000, b'{"path": "a", "size": 1, "mtime": 0, "mtime_ns": 0, "hash": "h", "status": "ok", "x": 1}'):
        with pytest.raises(AgentCirError, match=r"manifest .*m\.jsonl line 1 is damaged"):
            parse_manifest(line + b"\n", tmp_path / "m.jsonl")
