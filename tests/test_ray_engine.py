"""The Ray Data encoding engine: on a local Ray cluster it writes the index the local engine writes.

The cluster is started once for this module (``ray.init(num_cpus=2)``: one CPU for the encoder actor, one for
decode tasks) and shut down at the end. The CLI, where the engine starts and stops its own cluster, is tested in
test_ray_cli.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent_cir.errors import AgentCirError
from agent_cir.index import ENGINES, EncodeJob, GalleryIndex, ManifestEntry, load_image
from agent_cir.index.generation import has_index
from agent_cir.index.loader import decode_file
from agent_cir.index.ray_engine import RayOptions, _check_resources, decode_rows
from tests.fixtures.encoders import GOOD_IMAGES, corrupt_png

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

BATCH = 64
BAD_PHOTOS = {  # the reason each must be skipped with, whichever engine meets it
    "bad/empty.jpg": "empty file",
    "bad/notes.png": "not an image",
    "bad/truncated.jpg": "truncated",
    "bad/corrupt.png": "corrupt",
    "bad/fifo.jpg": "not a regular file",
}


@pytest.fixture(scope="module")
def ray_cluster():
    # 127.0.0.1: the test-wide socket guard allows loopback only, and a local cluster needs nothing else.
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photo_gallery(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1,000 shared photos plus one file of every kind the decoder must refuse."""
    if not photos_dir.is_dir():
        pytest.skip(f"photos not found at {photos_dir}")
    root = tmp_path_factory.mktemp("ray_gallery") / "photos"
    shutil.copytree(photos_dir, root)
    bad = root / "bad"
    bad.mkdir()
    first = sorted(photos_dir.glob("*.jpg"))[0].read_bytes()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("not an image\n", encoding="utf-8")
    (bad / "truncated.jpg").write_bytes(first[: len(first) // 2])
    (bad / "corrupt.png").write_bytes(corrupt_png())
    os.mkfifo(bad / "fifo.jpg")
    return root


def _build(folder: Path, out: Path, encoder, engine: str = "local", **options) -> GalleryIndex:
    return GalleryIndex.build(
        folder, out, encoder, batch_size=BATCH, workers=0, progress=False, engine=engine, engine_options=options or None
    )


def _generation_files(index: GalleryIndex) -> tuple[list[dict], dict]:
    manifest = [json.loads(line) for line in (index.generation_dir / "manifest.jsonl").read_text().splitlines()]
    for entry in manifest:  # PIL names the open file by descriptor number ("<_io.BufferedReader name=40>")
        if entry.get("detail"):
            entry["detail"] = re.sub(r"name=\d+", "name=N", entry["detail"])
    meta = json.loads((index.generation_dir / "meta.json").read_text())
    for key in ("created", "updated", "last_build", "previous_generation", "generation"):
        meta.pop(key)
    # Checksums differ with float rounding and descriptor numbers; the files themselves must not.
    meta["files"] = {role: {k: v for k, v in item.items() if k != "sha256"} for role, item in meta["files"].items()}
    return manifest, meta


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_index(ray_cluster, photo_gallery, tmp_path, tiny_open_clip_encoder) -> None:
    local = _build(photo_gallery, tmp_path / "local", tiny_open_clip_encoder)
    distributed = _build(photo_gallery, tmp_path / "ray", tiny_open_clip_encoder, engine="ray", concurrency=1)

    photos = sorted(p.name for p in photo_gallery.glob("*.jpg"))
    assert len(photos) == 1000 and distributed.ids == photos == local.ids
    assert {e.path: e.reason for e in distributed.skipped} == BAD_PHOTOS
    assert distributed.build_summary.indexed == 1000 and distributed.build_summary.skipped == local.build_summary.skipped
    assert float(np.abs(np.asarray(distributed.embeddings) - np.asarray(local.embeddings)).max()) <= 1e-5
    # Same on-disk format: manifest (hashes, sizes, rows, reasons and details), metadata and faiss index.
    local_manifest, local_meta = _generation_files(local)
    ray_manifest, ray_meta = _generation_files(distributed)
    assert ray_manifest == local_manifest and ray_meta == local_meta
    assert distributed.faiss_index.ntotal == 1000
    # Spot check against the encoder itself, one image at a time (a different batch composition).
    for row in (0, 499, 999):
        expected = tiny_open_clip_encoder.encode_images([load_image(photo_gallery / distributed.ids[row])])[0]
        np.testing.assert_allclose(distributed.embeddings[row], expected, atol=1e-5)

    # A rerun finds nothing to do: no file reaches the engine, everything is reused, bad files stay listed.
    asked: list[int] = []

    def counting_ray_engine(job: EncodeJob):
        asked.append(len(job.entries))
        return ENGINES["ray"](job)

    rerun = GalleryIndex.build(photo_gallery, tmp_path / "ray", tiny_open_clip_encoder, batch_size=BATCH, progress=False, engine=counting_ray_engine)
    assert asked == [0] and rerun.build_summary.indexed == 0 and rerun.build_summary.reused == 1000
    assert {e.path: e.reason for e in rerun.skipped} == BAD_PHOTOS
    np.testing.assert_array_equal(rerun.embeddings, distributed.embeddings)

    # One new image: only it goes through Ray, and it lands in its sorted row.
    picture = load_image(photo_gallery / photos[0]).transpose(0)  # mirrored: new content
    picture.save(photo_gallery / "zz-mirrored.jpg", quality=90)
    grown = GalleryIndex.build(photo_gallery, tmp_path / "ray", tiny_open_clip_encoder, batch_size=BATCH, progress=False, engine=counting_ray_engine)
    assert asked == [0, 1] and grown.build_summary.indexed == 1 and grown.build_summary.reused == 1000
    expected = tiny_open_clip_encoder.encode_images([load_image(photo_gallery / "zz-mirrored.jpg")])[0]
    np.testing.assert_allclose(grown.embeddings[grown.ids.index("zz-mirrored.jpg")], expected, atol=1e-5)
    (photo_gallery / "zz-mirrored.jpg").unlink()


def test_decoding_runs_in_tasks_apart_from_the_encoder_actors(ray_cluster, image_folder, tiny_open_clip_encoder, capsys) -> None:
    from agent_cir.index.ray_engine import encode_dataset
    from agent_cir.index.scan import scan_gallery

    entries = [ManifestEntry(f.path, f.size, f.mtime, f.mtime_ns, "h") for f in scan_gallery(image_folder).found]
    job = EncodeJob(image_folder, entries, tiny_open_clip_encoder, 4, 0, options={"concurrency": 1})
    encode_dataset(ray, job, RayOptions.from_options(job.options), entries).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(decode_rows)]" in optimized  # not fused into the actors
    assert "ActorPoolMapOperator[MapBatches(EmbedActor)]" in optimized


@pytest.mark.slow
def test_a_worker_whose_encoder_differs_stops_the_build_with_a_clear_error(ray_cluster, image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    class OtherWeights:  # what the driver claims to have built: another random seed than the workers will build
        def __init__(self, encoder) -> None:
            self._encoder = encoder
            self.info = {**encoder.info, "weights": "random-init:seed=7"}

        def __getattr__(self, name):
            return getattr(self._encoder, name)

    with pytest.raises(AgentCirError, match="Ray worker built encoder .* differs from the driver's in weights"):
        _build(image_folder, tmp_path / "idx", OtherWeights(tiny_open_clip_encoder), engine="ray", concurrency=1)
    assert not has_index(tmp_path / "idx")  # nothing published


# ---------------------------------------------------------------- no cluster needed
def test_decode_rows_reports_what_the_local_loader_reports(image_folder, tiny_open_clip_encoder) -> None:
    paths = sorted(str(p) for p in image_folder.rglob("*") if p.is_file() and p.suffix.lower() != ".txt")
    preprocess = tiny_open_clip_encoder.preprocess
    batch = decode_rows({"position": np.arange(len(paths)), "path": np.array(paths)}, preprocess, (3, 32, 32))
    for row, path in enumerate(paths):
        tensor, reason, detail = decode_file(path, preprocess)
        assert batch["reason"][row] == (reason or "") and batch["detail"][row] == (detail or "")
        if tensor is None:
            assert not batch["pixels"][row].any()
        else:
            np.testing.assert_array_equal(batch["pixels"][row], tensor.numpy())
    good = {Path(p).relative_to(image_folder).as_posix() for p, r in zip(paths, batch["reason"]) if r == ""}
    assert good == set(GOOD_IMAGES)


def test_options_are_checked_before_anything_starts() -> None:
    with pytest.raises(AgentCirError, match="unknown ray engine options \\['concurency'\\]"):
        RayOptions.from_options({"concurency": 2})
    with pytest.raises(AgentCirError, match="concurrency must be at least 1"):
        RayOptions.from_options({"concurrency": 0})
    with pytest.raises(AgentCirError, match="num_gpus_per_actor must be >= 0"):
        RayOptions.from_options({"num_gpus_per_actor": -1})
    assert RayOptions.from_options({"address": None}).address is None  # CLI defaults (None) mean "engine default"
    assert RayOptions(num_gpus_per_actor=1).actor_device({"device": "cpu"}) == "cuda"
    assert RayOptions().actor_device({"device": "cpu"}) == "cpu"


class _FakeRay:
    def __init__(self, resources: dict) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict:
        return dict(self.resources)


def test_a_pool_that_leaves_no_cpu_for_decoding_is_refused_on_a_cluster_we_started(caplog) -> None:
    full = RayOptions(concurrency=2, num_cpus_per_actor=1.0)
    with pytest.raises(AgentCirError, match="2 actors x 1 CPUs \\+ 1 CPU for a decode task = 3 CPUs, but the cluster has 2"):
        _check_resources(_FakeRay({"CPU": 2.0}), full, started_here=True)
    with pytest.raises(AgentCirError, match="1 actors x 1 GPUs = 1, but the cluster has 0"):
        _check_resources(_FakeRay({"CPU": 8.0}), RayOptions(num_gpus_per_actor=1), started_here=True)
    _check_resources(_FakeRay({"CPU": 3.0}), full, started_here=True)  # fits
    _check_resources(_FakeRay({"CPU": 2.0}), full, started_here=False)  # a joined cluster may autoscale: warn only
    assert "waiting for the cluster to grow" in caplog.text


def test_failures_keep_their_entry_and_reason(tiny_open_clip_encoder) -> None:
    from agent_cir.index.ray_engine import _encoded_batch

    entries = [ManifestEntry(f"{name}.jpg", 1, 1.0, 1, f"h{name}") for name in "abc"]
    batch = {
        "position": np.array([2, 0, 1]),
        "vector": np.eye(3, dtype=np.float32),
        "reason": np.array(["", "truncated", ""]),
        "detail": np.array(["", "image file is truncated", ""]),
    }
    encoded = _encoded_batch(batch, entries)
    assert [e.path for e in encoded.entries] == ["c.jpg", "b.jpg"]
    np.testing.assert_array_equal(encoded.vectors, np.eye(3, dtype=np.float32)[[0, 2]])
    assert encoded.failures == [replace(entries[0], status="skipped", reason="truncated", detail="image file is truncated")]
