"""No path escapes the gallery and no file blows up or kills a build (issue 18, items 7, 8, 15): forged
manifest paths, a symlink re-pointed outside after the scan, extreme shapes, a file that kills its decode
worker."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.errors import AgentCirError
from agent_cir.index import GalleryIndex, load_image
from agent_cir.index.decode import MAX_ASPECT_RATIO
from agent_cir.index.loader import decode_file
from agent_cir.index.manifest import check_gallery_path
from agent_cir.index.reasons import REASON_DECODER_CRASH, REASON_ELONGATED, REASON_OUTSIDE_ROOT, BadImageError


def _photo(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="PNG")


def _build(folder: Path, out: Path, encoder, **kwargs) -> GalleryIndex:
    kwargs.setdefault("workers", 0)
    return GalleryIndex.build(folder, out, encoder, batch_size=4, progress=False, **kwargs)


def _reseal(out: Path, edit) -> None:
    """Edit the current generation's manifest lines with ``edit`` and re-seal every checksum, as a forger would."""
    pointer = json.loads((out / "CURRENT").read_text(encoding="utf-8"))
    generation = out / pointer["generation"]
    manifest = generation / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    manifest.write_text("".join(json.dumps(edit(line)) + "\n" for line in lines), encoding="utf-8")
    meta = json.loads((generation / "meta.json").read_text(encoding="utf-8"))
    data = manifest.read_bytes()
    meta["files"]["manifest"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8")
    (generation / "meta.json").write_bytes(meta_bytes)
    pointer["meta_sha256"] = hashlib.sha256(meta_bytes).hexdigest()
    (out / "CURRENT").write_text(json.dumps(pointer), encoding="utf-8")


@pytest.mark.parametrize("forged", ["../outside.png", "/etc/passwd", "a/../../outside.png", "./a.png", "a//b.png", ""])
def test_a_forged_manifest_path_is_refused_at_load(forged, tmp_path, tiny_open_clip_encoder) -> None:
    gallery = tmp_path / "gallery"
    for seed in range(3):
        _photo(gallery / f"p{seed}.png", seed)
    out = tmp_path / "idx"
    _build(gallery, out, tiny_open_clip_encoder)
    _reseal(out, lambda line: {**line, "path": forged} if line["path"] == "p1.png" else line)
    with pytest.raises(AgentCirError, match="not a relative path inside the indexed folder"):
        GalleryIndex.load(out)


def test_gallery_paths_that_are_fine_stay_fine() -> None:
    for path in ("a.png", "sub/dir/b c.jpg", "x..y.png", "...png", "a\\b.png", "c:d.png"):
        check_gallery_path(path)


def test_a_symlink_repointed_outside_after_the_scan_is_not_read(tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    import agent_cir.index.build as build

    gallery = tmp_path / "gallery"
    for seed in range(2):
        _photo(gallery / f"p{seed}.png", seed)
    _photo(gallery / "inside.png", 7)
    _photo(tmp_path / "secret.png", 9)
    os.symlink(gallery / "inside.png", gallery / "link.png")
    real_scan = build.scan_gallery

    def scan_then_repoint(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        (gallery / "link.png").unlink()
        os.symlink(tmp_path / "secret.png", gallery / "link.png")  # the race the scan cannot see
        return result

    monkeypatch.setattr(build, "scan_gallery", scan_then_repoint)
    index = _build(gallery, tmp_path / "idx", tiny_open_clip_encoder)
    skipped = {e.path: e.reason for e in index.skipped}
    assert skipped.get("link.png") == REASON_OUTSIDE_ROOT and "link.png" not in index.ids
    from agent_cir.hashing import content_hash

    assert content_hash(tmp_path / "secret.png") not in index.hashes


def test_the_decoder_checks_the_root_on_the_open_file(tmp_path) -> None:
    gallery = tmp_path / "gallery"
    _photo(tmp_path / "secret.png", 9)
    gallery.mkdir()
    os.symlink(tmp_path / "secret.png", gallery / "link.png")
    with pytest.raises(BadImageError) as caught:
        load_image(gallery / "link.png", root=gallery)
    assert caught.value.reason == REASON_OUTSIDE_ROOT
    tensor, reason, _ = decode_file(str(gallery / "link.png"), lambda picture: picture, str(gallery))
    assert tensor is None and reason == REASON_OUTSIDE_ROOT
    assert load_image(gallery / "link.png").size == (40, 30)  # without a root (references): read as before


def _tiny_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (MAX_ASPECT_RATIO * 10 + 1, 10), (11600, 11600 // 4)])
def test_extreme_shapes_are_bad_files_not_gigabytes(size, tmp_path) -> None:
    path = tmp_path / "strip.png"
    path.write_bytes(_tiny_png(*size))
    with pytest.raises(BadImageError) as caught:
        load_image(path)
    assert caught.value.reason == REASON_ELONGATED and f"{size[0]} x {size[1]}" in caught.value.detail


def test_ordinary_shapes_still_decode(tmp_path) -> None:
    for size in ((MAX_ASPECT_RATIO * 10, 10), (4000, 3000), (300, 9000)):
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        path.write_bytes(_tiny_png(*size))
        assert load_image(path).size == size


def test_a_strip_in_the_gallery_is_skipped_with_its_reason(tmp_path, tiny_open_clip_encoder) -> None:
    gallery = tmp_path / "gallery"
    _photo(gallery / "ok.png", 1)
    (gallery / "strip.png").write_bytes(_tiny_png(1, 20000))
    index = _build(gallery, tmp_path / "idx", tiny_open_clip_encoder, index_type="Flat")
    assert index.ids == ["ok.png"] and {e.path: e.reason for e in index.skipped} == {"strip.png": REASON_ELONGATED}


def test_a_file_that_kills_its_decode_worker_is_marked_bad(tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    import agent_cir.index.loader as loader

    gallery = tmp_path / "gallery"
    for seed in range(7):
        _photo(gallery / f"p{seed}.png", seed)
    _photo(gallery / "killer.png", 99)
    real_load = loader.load_image

    def load_or_die(path, root=None):
        if Path(path).name == "killer.png":
            os.kill(os.getpid(), signal.SIGKILL)  # what a decoder segfault or the OOM killer does to the worker
        return real_load(path, root)

    monkeypatch.setattr(loader, "load_image", load_or_die)  # forked decode workers inherit it
    index = _build(gallery, tmp_path / "idx", tiny_open_clip_encoder, workers=2)
    assert sorted(index.ids) == [f"p{seed}.png" for seed in range(7)]
    assert {e.path: e.reason for e in index.skipped} == {"killer.png": REASON_DECODER_CRASH}
    again = _build(gallery, tmp_path / "idx", tiny_open_clip_encoder, workers=2)  # the rerun does not retry it
    assert again.build_summary.indexed == 0 and again.build_summary.skipped == {REASON_DECODER_CRASH: 1}
