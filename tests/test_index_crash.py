"""Crash safety of index builds: a build killed (SIGKILL) at every write step leaves a loadable, intact index;
a rerun completes with every vector equal to a fresh encoding of its file; concurrent writers are refused or
queued, never mixed. The builds that are killed run in subprocesses with AGENT_CIR_TEST_CRASH_AT set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.errors import AgentCirError
from agent_cir.index import GalleryIndex, IndexLockedError, load_image
from agent_cir.index.faults import CRASH_ENV, PAUSE_ENV, PAUSE_FILE_ENV, WRITE_STEPS, batch_step
from tests.conftest import REPO_ROOT

BUILD_SCRIPT = """
import json, sys
from agent_cir.encoders.open_clip_encoder import OpenClipEncoder
from agent_cir.index import GalleryIndex
config, gallery, out, batch = sys.argv[1:5]
encoder = OpenClipEncoder(model=config, pretrained="none", batch_size=8)
index = GalleryIndex.build(gallery, out, encoder, batch_size=int(batch), workers=0, progress=False)
print(json.dumps(index.build_summary.to_dict()))
"""

PUBLISHED_STEPS = {"published", "old-generations-removed", "checkpoints-removed"}


def _run_build(config: Path, gallery: Path, out: Path, batch: int, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.Popen(
        [sys.executable, "-c", BUILD_SCRIPT, str(config), str(gallery), str(out), str(batch)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(path, format="PNG")


def assert_index_is_true_to_its_files(index: GalleryIndex, encoder, expected_ids: set[str]) -> None:
    """Counts agree everywhere and every row is the encoding of the file its manifest entry names."""
    assert set(index.ids) == expected_ids
    assert len(index) == index.embeddings.shape[0] == index.faiss_index.ntotal == index.meta["count"]
    fresh = encoder.encode_images([load_image(path) for path in index.paths])
    np.testing.assert_allclose(np.asarray(index.embeddings), fresh, atol=1e-5)
    # faiss answers with the same rows: each file's own vector finds itself first
    _, rows = index.faiss_index.search(np.ascontiguousarray(fresh, dtype=np.float32), 1)
    assert list(rows[:, 0]) == list(range(len(index)))


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("work-") or p.name.endswith(".partial") or ".tmp-" in p.name)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("step", [*WRITE_STEPS, batch_step(1)])
def test_kill_at_every_write_step_keeps_an_intact_index(step, image_folder, tmp_path, tiny_open_clip_config, tiny_open_clip_encoder) -> None:
    out = tmp_path / "idx"
    before = GalleryIndex.build(image_folder, out, tiny_open_clip_encoder, batch_size=4, workers=0, progress=False)
    before_vectors = np.asarray(before.embeddings).copy()
    # the next build has work to do: 3 new files, one changed, one removed
    for seed in range(3):
        _photo(image_folder / f"new-{seed}.png", seed)
    _photo(image_folder / "green.PNG", 99)
    (image_folder / "red.jpg").unlink()
    expected = {*before.ids, "new-0.png", "new-1.png", "new-2.png"} - {"red.jpg"}

    proc = _run_build(tiny_open_clip_config, image_folder, out, 2, {CRASH_ENV: step})
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, stderr

    survivor = GalleryIndex.load(out, verify=True)
    if step in PUBLISHED_STEPS:
        assert survivor.generation != before.generation
        assert_index_is_true_to_its_files(survivor, tiny_open_clip_encoder, expected)
    else:  # the previous generation, exactly as it was
        assert survivor.generation == before.generation and survivor.ids == before.ids
        np.testing.assert_array_equal(np.asarray(survivor.embeddings), before_vectors)

    rerun = GalleryIndex.build(image_folder, out, tiny_open_clip_encoder, batch_size=2, workers=0, progress=False)
    assert_index_is_true_to_its_files(rerun, tiny_open_clip_encoder, expected)
    assert GalleryIndex.load(out, verify=True).generation == rerun.generation
    summary = rerun.build_summary
    if step in PUBLISHED_STEPS:
        assert (summary.indexed, summary.resumed) == (0, 0)
    elif step == "checkpoint-opened":
        assert (summary.indexed, summary.resumed) == (4, 0)
    elif step == batch_step(1):  # the first batch (two of the four files) was made durable before the kill
        assert (summary.indexed, summary.resumed) == (2, 2)
    else:  # killed while writing the generation: every vector is in the checkpoint
        assert (summary.indexed, summary.resumed) == (0, 4)
    assert _leftovers(out) == []
    assert len([p for p in out.iterdir() if p.name.startswith("gen-")]) <= 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_first_build_killed_at_56_percent_keeps_its_finished_batches(tmp_path, tiny_open_clip_config, tiny_open_clip_encoder) -> None:
    gallery, out = tmp_path / "gallery", tmp_path / "idx"
    for seed in range(9):
        _photo(gallery / f"p{seed}.png", seed)
    proc = _run_build(tiny_open_clip_config, gallery, out, 1, {CRASH_ENV: batch_step(5)})  # 5 of 9 = 56 %
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, stderr
    with pytest.raises(AgentCirError, match="no gallery index"):
        GalleryIndex.load(out)  # nothing was published ...
    rerun = GalleryIndex.build(gallery, out, tiny_open_clip_encoder, batch_size=1, workers=0, progress=False)
    summary = rerun.build_summary  # ... but the finished batches were kept
    assert (summary.resumed, summary.indexed, summary.total) == (5, 4, 9)
    assert_index_is_true_to_its_files(rerun, tiny_open_clip_encoder, {f"p{seed}.png" for seed in range(9)})
    assert _leftovers(out) == []


def test_torn_checkpoint_is_ignored_not_trusted(tmp_path, tiny_open_clip_encoder) -> None:
    """A checkpoint whose bytes do not match its journal (torn write, disk damage) is not reused."""
    from agent_cir.index.checkpoint import CheckpointStore

    gallery, out = tmp_path / "gallery", tmp_path / "idx"
    for seed in range(3):
        _photo(gallery / f"p{seed}.png", seed)
    store = CheckpointStore.open(out, tiny_open_clip_encoder.info, tiny_open_clip_encoder.dim)
    wrong = np.ones((2, tiny_open_clip_encoder.dim), dtype=np.float32)
    from agent_cir.hashing import content_hash

    hashes = [content_hash(gallery / "p0.png"), content_hash(gallery / "p1.png")]
    store.append(hashes, wrong, [])
    vectors_file = next(out.glob("work-*")) / "vectors.f32"
    data = bytearray(vectors_file.read_bytes())
    data[0] ^= 0xFF  # damage the stored rows
    vectors_file.write_bytes(bytes(data))
    with open(next(out.glob("work-*")) / "journal.jsonl", "a") as journal:
        journal.write('{"start": 0, "hashes": ["abc"')  # and a torn last line
    index = GalleryIndex.build(gallery, out, tiny_open_clip_encoder, batch_size=2, workers=0, progress=False)
    assert (index.build_summary.resumed, index.build_summary.indexed) == (0, 3)
    assert_index_is_true_to_its_files(index, tiny_open_clip_encoder, {"p0.png", "p1.png", "p2.png"})


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("writer never reached its pause point")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_writers_into_one_folder_never_mix(image_folder, tmp_path, tiny_open_clip_config, tiny_open_clip_encoder) -> None:
    out, release = tmp_path / "idx", tmp_path / "release"
    other = tmp_path / "other-gallery"
    for seed in range(4):
        _photo(other / f"o{seed}.png", 50 + seed)
    writer = _run_build(tiny_open_clip_config, image_folder, out, 2, {PAUSE_ENV: batch_step(1), PAUSE_FILE_ENV: str(release)})
    _wait_for(Path(f"{release}.reached"), writer)

    # A second writer is refused at once, and told who holds the folder.
    with pytest.raises(IndexLockedError, match=f"pid {writer.pid}.*--wait"):
        GalleryIndex.build(other, out, tiny_open_clip_encoder, workers=0, progress=False)
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["index", str(other), "--out", str(out), "--model", str(tiny_open_clip_config),
                                      "--pretrained", "none", "--workers", "0", "--quiet"])
    assert result.exit_code == 2 and f"pid {writer.pid}" in result.output and "Traceback" not in result.output

    # Writers that wait queue behind it: the same gallery then finds nothing to do, another gallery is refused.
    outcomes: dict[str, object] = {}

    def waiter(name: str, gallery: Path) -> None:
        try:
            outcomes[name] = GalleryIndex.build(gallery, out, tiny_open_clip_encoder, batch_size=2, workers=0, progress=False, wait=True)
        except AgentCirError as err:
            outcomes[name] = err

    threads = [threading.Thread(target=waiter, args=args) for args in (("same", image_folder), ("other", other))]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert not outcomes  # both are blocked on the lock, neither wrote anything
    release.touch()
    _, stderr = writer.communicate(timeout=240)
    assert writer.returncode == 0, stderr
    for thread in threads:
        thread.join(timeout=240)
    assert isinstance(outcomes["other"], AgentCirError) and "use a new --out" in str(outcomes["other"])
    same = outcomes["same"]
    assert isinstance(same, GalleryIndex) and same.build_summary.indexed == 0
    final = GalleryIndex.load(out, verify=True)
    assert_index_is_true_to_its_files(final, tiny_open_clip_encoder, set(final.ids))
    assert not {"o0.png", "o1.png", "o2.png", "o3.png"} & set(final.ids) and len(final) == 6


def test_lock_is_released_when_the_holder_dies(tmp_path) -> None:
    """flock belongs to the process: a writer killed with SIGKILL leaves no stale lock."""
    from agent_cir.index.lock import IndexLock

    out = tmp_path / "idx"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from agent_cir.index.lock import IndexLock\n"
         "with IndexLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
        with IndexLock(out):
            pass
    holder.kill()
    holder.wait()
    with IndexLock(out):  # free again
        pass
