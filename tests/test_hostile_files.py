"""Hostile gallery files and reference images: loops, dangling and escaping links, FIFOs, devices, folders
named like images, unreadable files, bad names, bombs, truncated files, every PIL mode and EXIF orientations
1-8, through `build` and through `encode_image_file`. Nothing crashes, nothing hangs, every skip has a reason,
and gallery and reference decode identically."""

from __future__ import annotations

import io
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_cir.errors import AgentCirError
from agent_cir.retrieval import search_index
from agent_cir.index import MAX_DECODE_PIXELS, GalleryIndex, encode_image_file, load_image
from agent_cir.index.reasons import (
    REASON_BAD_NAME,
    REASON_BOMB,
    REASON_DANGLING_LINK,
    REASON_NOT_REGULAR,
    REASON_OUTSIDE_ROOT,
    REASON_SYMLINK_LOOP,
    REASON_UNREADABLE,
    BadImageError,
)
from tests.fixtures.encoders import decompression_bomb_png


@pytest.fixture(autouse=True)
def no_hangs():
    """A FIFO that blocks an open() would hang the suite: fail the test instead."""
    def hung(signum, frame):
        raise AssertionError("hung for 120 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _picture(seed: int = 0, size=(40, 30)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[: size[1] // 2, : size[0] // 2] = (230, 20, 20)  # a red top-left quarter makes orientation visible
    array[size[1] // 2 :, size[0] // 2 :] = rng.integers(0, 255, 3, dtype=np.uint8)
    return array


MODE_FILES = {
    # name: (mode, format)
    "mode-1.png": ("1", "PNG"),
    "mode-L.png": ("L", "PNG"),
    "mode-P.png": ("P", "PNG"),
    "mode-P.gif": ("P", "GIF"),
    "mode-LA.png": ("LA", "PNG"),
    "mode-I16.png": ("I;16", "PNG"),
    "mode-RGBA.png": ("RGBA", "PNG"),
    "mode-RGBA.webp": ("RGBA", "WEBP"),
    "mode-CMYK.jpg": ("CMYK", "JPEG"),
    "mode-L.jpg": ("L", "JPEG"),
}


def _mode_image(mode: str) -> Image.Image:
    rgb = Image.fromarray(_picture(3))
    if mode == "I;16":
        return Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    if mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = 0
        return image
    return rgb.convert(mode)


def make_hostile_gallery(root: Path, outside: Path) -> dict[str, str | None]:
    """Files and the reason each must be skipped with (None: must be indexed)."""
    root.mkdir(parents=True)
    outside.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    Image.fromarray(_picture(1)).save(root / "good.jpg", quality=95)
    expected["good.jpg"] = None
    Image.fromarray(_picture(2)).save(outside / "elsewhere.png")
    os.symlink(root / "good.jpg", root / "inside-link.jpg")
    expected["inside-link.jpg"] = None
    os.symlink(outside / "elsewhere.png", root / "escaping-link.png")
    expected["escaping-link.png"] = REASON_OUTSIDE_ROOT
    os.symlink("loop.jpg", root / "loop.jpg")
    expected["loop.jpg"] = REASON_SYMLINK_LOOP
    os.symlink("ping.jpg", root / "pong.jpg")
    os.symlink("pong.jpg", root / "ping.jpg")
    expected["ping.jpg"] = expected["pong.jpg"] = REASON_SYMLINK_LOOP
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    expected["dangling.jpg"] = REASON_DANGLING_LINK
    os.mkfifo(root / "fifo.jpg")
    expected["fifo.jpg"] = REASON_NOT_REGULAR
    (root / "folder.jpg").mkdir()  # a folder named like an image: walked into, holds one real image
    Image.fromarray(_picture(4)).save(root / "folder.jpg" / "inner.png")
    expected["folder.jpg/inner.png"] = None
    os.symlink(root / "folder.jpg", root / "folder-link.jpg")
    expected["folder-link.jpg"] = REASON_NOT_REGULAR
    os.symlink("/dev/zero", root / "device.png")  # outside the root: refused without even a stat of its target
    expected["device.png"] = REASON_OUTSIDE_ROOT
    (root / "bomb-900mp.png").write_bytes(_png_header_only(30000, 30000))
    expected["bomb-900mp.png"] = REASON_BOMB
    (root / "bomb-3600mp.png").write_bytes(decompression_bomb_png())
    expected["bomb-3600mp.png"] = REASON_BOMB
    (root / "big-90mp.png").write_bytes(_png_header_only(12000, 7500))  # over the decode limit, not a JPEG
    expected["big-90mp.png"] = REASON_BOMB
    whole = io.BytesIO()
    Image.fromarray(_picture(5, (64, 64))).save(whole, format="JPEG")
    (root / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    expected["truncated.jpg"] = "truncated"
    png = io.BytesIO()
    Image.fromarray(_picture(6)).save(png, format="PNG")
    (root / "truncated.png").write_bytes(png.getvalue()[:60])
    expected["truncated.png"] = "truncated"
    (root / "zero.webp").write_bytes(b"")
    expected["zero.webp"] = "empty file"
    (root / "text.gif").write_text("GIF89a but not really")
    expected["text.gif"] = "not an image"
    bad_name = os.fsencode(root) + b"/bad-\xff-name.jpg"
    with open(bad_name, "wb") as handle:
        handle.write((root / "good.jpg").read_bytes())
    expected["bad-\\xff-name.jpg"] = REASON_BAD_NAME
    for name, (mode, fmt) in MODE_FILES.items():
        _mode_image(mode).save(root / name, format=fmt)
        expected[name] = None
    (root / "unreadable.png").write_bytes(png.getvalue())
    expected["unreadable.png"] = REASON_UNREADABLE
    return expected


@pytest.fixture()
def unreadable_file(monkeypatch):
    """Tests run as root, so chmod 000 reads fine: make opening files named unreadable.* fail like EACCES."""
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        if os.path.basename(os.fsdecode(path)).startswith("unreadable."):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


def test_hostile_corpus_through_build(tmp_path, tiny_open_clip_encoder, unreadable_file) -> None:
    root = tmp_path / "gallery"
    expected = make_hostile_gallery(root, tmp_path / "outside")
    index = GalleryIndex.build(root, tmp_path / "idx", tiny_open_clip_encoder, batch_size=4, workers=0, progress=False)
    got = {e.path: (e.reason if e.status == "skipped" else None) for e in index.entries}
    mismatches = {path: (got.get(path, "<missing>"), reason) for path, reason in expected.items() if got.get(path, "<missing>") != reason}
    assert not mismatches, mismatches
    assert set(got) == set(expected)
    assert all(e.detail for e in index.skipped)  # every skip says why
    fresh = tiny_open_clip_encoder.encode_images([load_image(p) for p in index.paths])
    np.testing.assert_allclose(np.asarray(index.embeddings), fresh, atol=1e-5)

    # --follow-symlinks indexes the escaping link (a regular file) but still refuses the device
    followed = GalleryIndex.build(root, tmp_path / "idx2", tiny_open_clip_encoder, batch_size=4, workers=0, progress=False,
                                  follow_symlinks=True)
    reasons = {e.path: e.reason for e in followed.entries}
    assert reasons["escaping-link.png"] is None and reasons["device.png"] == REASON_NOT_REGULAR
    assert "escaping-link.png" in followed.ids


def test_hostile_files_with_decode_workers(tmp_path, tiny_open_clip_encoder) -> None:
    """The same corpus decoded in DataLoader worker processes: no hang on the FIFO, same reasons."""
    root = tmp_path / "gallery"
    expected = make_hostile_gallery(root, tmp_path / "outside")
    (root / "unreadable.png").unlink()
    del expected["unreadable.png"]
    index = GalleryIndex.build(root, tmp_path / "idx", tiny_open_clip_encoder, batch_size=4, workers=2, progress=False)
    assert {e.path: e.reason for e in index.entries} == expected


def test_hostile_corpus_as_reference_images(tmp_path, tiny_open_clip_encoder, unreadable_file) -> None:
    root = tmp_path / "gallery"
    expected = make_hostile_gallery(root, tmp_path / "outside")
    for name, reason in expected.items():
        if reason in (None, REASON_OUTSIDE_ROOT, REASON_BAD_NAME):
            continue  # usable as a reference (a reference may live anywhere)
        with pytest.raises(AgentCirError) as caught:
            encode_image_file(tiny_open_clip_encoder, root / name)
        assert str(root / name) in str(caught.value), name
        assert isinstance(caught.value.__cause__, BadImageError)
    for name in ("good.jpg", "escaping-link.png", *MODE_FILES):
        vector = encode_image_file(tiny_open_clip_encoder, root / name)
        assert vector.shape == (32,) and np.isfinite(vector).all()
    with pytest.raises(AgentCirError, match="reference image not found"):
        encode_image_file(tiny_open_clip_encoder, root / "nope.jpg")


@pytest.mark.parametrize("name", sorted(MODE_FILES))
def test_every_mode_decodes_to_the_same_picture(name, tmp_path) -> None:
    mode, fmt = MODE_FILES[name]
    path = tmp_path / name
    _mode_image(mode).save(path, format=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    pixels = np.asarray(image, dtype=np.float64)
    # the picture survives (not clipped to white, not black): the top-left quarter differs from the bottom-left
    top_left, bottom_left = pixels[:15, :20].mean(), pixels[15:, :20].mean()
    assert abs(top_left - bottom_left) > 20 and 5 < pixels.mean() < 250, (top_left, bottom_left)


def _stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that a viewer applying EXIF `orientation` (TIFF/EXIF 2.3 table)
    shows `upright`: the inverse of the display transform, written out with numpy."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                    # display mirrors horizontally (self-inverse)
        3: lambda a: a[::-1, ::-1],                 # display rotates 180
        4: lambda a: a[::-1, :],                    # display mirrors vertically
        5: lambda a: a.transpose(1, 0, 2),          # display transposes (self-inverse)
        6: lambda a: np.rot90(a, 1),                # display rotates 90 clockwise: store 90 counter-clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # display transverses (self-inverse)
        8: lambda a: np.rot90(a, -1),               # display rotates 90 counter-clockwise: store clockwise
    }[orientation](upright)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientations_1_to_8_same_for_gallery_and_reference(fmt, tmp_path, tiny_open_clip_encoder) -> None:
    upright = _picture(7, (40, 24))
    root = tmp_path / "gallery"
    root.mkdir()
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    for orientation in range(1, 9):
        stored = Image.fromarray(np.ascontiguousarray(_stored_for_orientation(upright, orientation)))
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(root / f"o{orientation}{suffix}", format=fmt, exif=exif.tobytes(), **({"quality": 98} if fmt == "JPEG" else {}))
    index = GalleryIndex.build(root, tmp_path / "idx", tiny_open_clip_encoder, batch_size=3, workers=0, progress=False)
    assert len(index) == 8
    tolerance = 12 if fmt == "JPEG" else 0
    for orientation in range(1, 9):
        path = root / f"o{orientation}{suffix}"
        decoded = np.asarray(load_image(path), dtype=np.int16)
        assert decoded.shape == upright.shape, orientation
        assert np.abs(decoded - upright).mean() <= tolerance, orientation
        row = index.ids.index(path.name)
        reference = encode_image_file(tiny_open_clip_encoder, path)  # the reference path: same vector
        np.testing.assert_allclose(index.embeddings[row], reference, atol=1e-5)
        found = search_index(index, tiny_open_clip_encoder, image=path, mode="image", k=1, exclude_reference=False)
        assert found[0].score == pytest.approx(1.0, abs=1e-3)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path) -> None:
    """A JPEG over the decode budget is decoded at 1/2 scale by the JPEG decoder, not refused."""
    width, height = 8200 + 16, 8200  # 67.4 MP > MAX_DECODE_PIXELS (67.1 MP); greyscale keeps the test small
    assert width * height > MAX_DECODE_PIXELS
    path = tmp_path / "huge.jpg"
    Image.new("L", (width, height), 128).save(path, quality=50)
    image = load_image(path)
    assert image.size == ((width + 1) // 2, (height + 1) // 2) and image.mode == "RGB"


@pytest.mark.slow
def test_100_megapixel_jpeg_stays_small_in_memory(tmp_path) -> None:
    """Measured in a fresh process: decoding a 100 MP JPEG peaks far below the 1.2 GB a full decode took."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    path = tmp_path / "100mp.jpg"
    Image.new("L", (12000, 8400), 90).save(path, quality=50)
    script = (
        "import resource, sys\nfrom agent_cir.index import load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "image = load_image(sys.argv[1])\n"
        "print(image.size[0], image.size[1], before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True)
    width, height, before_kb, after_kb = map(int, result.stdout.split())
    assert (width, height) == (6000, 4200)
    assert (after_kb - before_kb) < 400 * 1024, f"decode grew RSS by {(after_kb - before_kb) / 1024:.0f} MB"


def test_bomb_is_a_clear_error_as_reference(tmp_path, tiny_open_clip_encoder) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(AgentCirError, match=rf"{path.name} cannot be used: decompression bomb: .*900000000 pixels"):
        encode_image_file(tiny_open_clip_encoder, path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM"]))
def test_arbitrary_bytes_never_escape_as_anything_but_bad_image(tmp_path_factory, data, prefix) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.img"
    path.write_bytes(prefix + data)
    try:
        image = load_image(path)
    except BadImageError as err:
        assert err.reason
    else:
        assert image.mode == "RGB"
