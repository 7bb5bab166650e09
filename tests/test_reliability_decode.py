"""A file that kills the decoder never kills every rerun (issue 18, case 15, the gaps left after the process pool):

- the in-process decode (``--workers 0``): the build itself is SIGKILLed mid-decode (what the OOM killer does);
  the rerun decodes the suspects of the dead batch one by one, the next run marks the one that killed again bad
  without opening it (journal.py);
- the ray engine: a decode task whose worker dies is not retried forever; the file is found and marked bad in
  the same run (ray_engine.py);
- decoded-size bounds hold on the in-process path too, and a decoder's MemoryError is a bad file, not a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.index import GalleryIndex
from agent_cir.index.journal import JOURNAL_NAME, DecodeJournal
from agent_cir.index.reasons import REASON_CORRUPT, REASON_DECODER_CRASH, REASON_ELONGATED
from tests.conftest import REPO_ROOT

# The build in a subprocess, with a decoder that SIGKILLs the whole process on ``k.png`` (as the OOM killer
# would); it prints every file it is asked to decode, so the test sees what each run touched.
KILLING_BUILD = """
import os, signal, sys
from pathlib import Path
import agent_cir.index.loader as loader
from agent_cir.encoders.open_clip_encoder import OpenClipEncoder
from agent_cir.index import GalleryIndex
config, gallery, out = sys.argv[1:4]
real_load = loader.load_image
def load_or_die(path, root=None):
    print(Path(path).name, flush=True)
    if Path(path).name == "k.png":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_load(path, root)
loader.load_image = load_or_die
encoder = OpenClipEncoder(model=config, pretrained="none", batch_size=8)
GalleryIndex.build(gallery, out, encoder, batch_size=4, workers=0, progress=False)
"""


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path, format="PNG")


def _killing_build(config: Path, gallery: Path, out: Path) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLING_BUILD, str(config), str(gallery), str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    return proc.returncode, proc.stdout.split()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_file_that_kills_the_build_itself_is_marked_bad_and_never_kills_again(
    tmp_path, tiny_open_clip_config, tiny_open_clip_encoder, monkeypatch
) -> None:
    gallery, out = tmp_path / "gallery", tmp_path / "idx"
    for seed in range(7):
        _photo(gallery / f"a{seed}.png", seed)
    _photo(gallery / "k.png", 99)  # sorted: a0-a3 | a4 a5 a6 k, batches of 4

    code, touched = _killing_build(tiny_open_clip_config, gallery, out)
    assert code == -9 and touched == [f"a{i}.png" for i in range(7)] + ["k.png"]
    journal = DecodeJournal.open(out)
    assert len(journal.suspects) == 4 and not journal.killers  # the dead batch: a4 a5 a6 k, culprit unknown

    # The rerun decodes only the suspects (a0-a3 are checkpointed), one per batch: k dies alone.
    code, touched = _killing_build(tiny_open_clip_config, gallery, out)
    assert code == -9 and touched == ["a4.png", "a5.png", "a6.png", "k.png"]
    assert len(DecodeJournal.open(out).killers) == 1

    # The third run never opens k.png: it is a bad file now, and the index holds every other photo.
    import agent_cir.index.loader as loader

    opened: list[str] = []
    real_load = loader.load_image
    monkeypatch.setattr(loader, "load_image", lambda path, root=None: opened.append(Path(path).name) or real_load(path, root))
    index = GalleryIndex.build(gallery, out, tiny_open_clip_encoder, batch_size=4, workers=0, progress=False)
    assert opened == []
    assert sorted(index.ids) == [f"a{i}.png" for i in range(7)]
    assert {e.path: e.reason for e in index.skipped} == {"k.png": REASON_DECODER_CRASH}
    assert not (out / JOURNAL_NAME).exists()  # published: the journal's work is in the manifest
    again = GalleryIndex.build(gallery, out, tiny_open_clip_encoder, batch_size=4, workers=0, progress=False)
    assert opened == [] and again.build_summary.skipped == {REASON_DECODER_CRASH: 1}


def test_the_journal_reads_a_torn_line_and_tells_suspects_from_killers(tmp_path) -> None:
    from agent_cir.index.out_folder import claim

    out = tmp_path / "idx"
    claim(out, JOURNAL_NAME)
    lines = [
        {"begin": "r1-1", "hashes": ["h1", "h2"]}, {"end": "r1-1"},  # finished: nothing to say
        {"begin": "r1-2", "hashes": ["h3", "h4", "h5"]},  # died in it: suspects
        {"begin": "r2-1", "hashes": ["h4"]},  # decoded alone and died: a killer
    ]
    (out / JOURNAL_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"begin": "r3-', encoding="utf-8")
    journal = DecodeJournal.open(out)
    assert journal.killers == {"h4"} and journal.suspects == {"h3", "h5"}
    with journal.decoding(["h6", "h7"]):  # written after the torn line, not glued onto it
        pass
    with journal.decoding(["h8"]):
        (out / JOURNAL_NAME).write_text((out / JOURNAL_NAME).read_text(encoding="utf-8"), encoding="utf-8")
        reread = DecodeJournal.open(out)
    assert "h8" in reread.killers and reread.suspects == {"h3", "h5"}  # h6, h7 ended; h8 still begun when read


def test_a_journal_the_index_did_not_write_is_not_trusted(tmp_path) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    (out / JOURNAL_NAME).write_text(json.dumps({"begin": "x", "hashes": ["h1"]}) + "\n", encoding="utf-8")
    assert DecodeJournal.open(out).killers == set()  # not claimed in the marker: a stray file, not ours


def test_the_journal_is_never_written_through_a_symlink(tmp_path) -> None:
    from agent_cir.index.out_folder import OutFolderError

    out, victim = tmp_path / "idx", tmp_path / "precious.txt"
    out.mkdir()
    victim.write_text("mine", encoding="utf-8")
    (out / JOURNAL_NAME).symlink_to(victim)
    journal = DecodeJournal.open(out)
    with pytest.raises(OutFolderError, match="symlink"), journal.decoding(["h1", "h2"]):
        pass
    assert victim.read_text(encoding="utf-8") == "mine"


def _tiny_png(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_in_process_decode_bounds_the_decoded_size_and_survives_a_memory_error(tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    import agent_cir.index.decode as decode

    gallery = tmp_path / "gallery"
    _photo(gallery / "ok.png", 1)
    Image.new("RGB", (41, 31), "red").save(gallery / "hog.png")
    (gallery / "strip.png").write_bytes(_tiny_png(1, 20000))  # 143 bytes; centre crop would make 3 GB
    real_to_rgb = decode.to_rgb

    def to_rgb_or_oom(image):
        if image.size == (41, 31):
            raise MemoryError("cannot allocate 3 GB")
        return real_to_rgb(image)

    monkeypatch.setattr(decode, "to_rgb", to_rgb_or_oom)
    index = GalleryIndex.build(gallery, tmp_path / "idx", tiny_open_clip_encoder, batch_size=4, workers=0, progress=False)
    assert index.ids == ["ok.png"]
    assert {e.path: e.reason for e in index.skipped} == {"hog.png": REASON_CORRUPT, "strip.png": REASON_ELONGATED}


@pytest.mark.slow
@pytest.mark.timeout(400)  # before: Ray Data retried the dead task forever (max_retries=-1), a hang
def test_a_file_that_kills_its_ray_decode_worker_is_marked_bad_in_the_same_run(tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import signal

    gallery = tmp_path / "gallery"
    for seed in range(5):
        _photo(gallery / f"a{seed}.png", seed)
    Image.new("RGB", (41, 31), "red").save(gallery / "k.png")
    real_preprocess = tiny_open_clip_encoder.preprocess

    def preprocess_or_die(image):  # runs in the Ray decode task: kills its worker as the OOM killer would
        if image.size == (41, 31):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_preprocess(image)

    monkeypatch.setattr(tiny_open_clip_encoder, "preprocess", preprocess_or_die)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        index = GalleryIndex.build(
            gallery, tmp_path / "idx", tiny_open_clip_encoder, batch_size=2, workers=0, progress=False, engine="ray",
            engine_options={"decode_num_cpus": 0.5},
        )
    finally:
        ray.shutdown()
    assert sorted(index.ids) == [f"a{seed}.png" for seed in range(5)]
    assert {e.path: e.reason for e in index.skipped} == {"k.png": REASON_DECODER_CRASH}


def test_a_file_that_is_not_an_image_is_recorded_with_a_reason_a_person_can_read(tmp_path, tiny_open_clip_encoder) -> None:
    gallery = tmp_path / "gallery"
    _photo(gallery / "ok.png", 1)
    (gallery / "notes.png").write_text("shopping list: milk\n", encoding="utf-8")
    (gallery / "archive.jpg").write_bytes(b"PK\x03\x04\x14\x00\x00\x00")
    index = GalleryIndex.build(gallery, tmp_path / "idx", tiny_open_clip_encoder, batch_size=4, workers=0, progress=False)
    details = {e.path: e.detail for e in index.skipped}
    assert details == {
        "notes.png": "no image format Pillow reads starts like this file (first bytes: 'shopping list: m')",
        "archive.jpg": "no image format Pillow reads starts like this file (first bytes: 50 4b 03 04 14 00 00 00)",
    }
    manifest = (index.generation_dir / "manifest.jsonl").read_text(encoding="utf-8")
    assert "_io." not in manifest and "name=" not in manifest  # before: "<_io.BufferedReader name=40>"


def test_a_batch_this_process_survived_leaves_no_suspects(tmp_path) -> None:
    out = tmp_path / "idx"
    journal = DecodeJournal.open(out)
    with pytest.raises(KeyboardInterrupt), journal.decoding(["h1", "h2"]):
        raise KeyboardInterrupt  # Ctrl-C mid-batch: the process lived, no file killed it
    reread = DecodeJournal.open(out)
    assert reread.suspects == set() and reread.killers == set()
