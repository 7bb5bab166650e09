"""Gallery index: build -> search end to end, incremental updates, bad files, encoder mismatch, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent_cir.errors import AgentCirError
from agent_cir.hashing import content_hash
from agent_cir.index import GalleryIndex, encoder_config_from_meta, load_image
from agent_cir.retrieval import search_index
from agent_cir.index.decode import REASON_BOMB, BadImageError
from tests.fixtures.encoders import BAD_FILES, GOOD_IMAGES, decompression_bomb_png


def _build(folder: Path, out: Path, encoder, **kwargs) -> GalleryIndex:
    kwargs.setdefault("workers", 0)
    return GalleryIndex.build(folder, out, encoder, batch_size=4, progress=False, **kwargs)


# ---------------------------------------------------------------- build + search, generated images
def test_build_writes_every_artifact_and_skips_bad_files(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    out = tmp_path / "idx"
    index = _build(image_folder, out, tiny_open_clip_encoder)
    summary = index.build_summary
    assert sorted(index.ids) == sorted(GOOD_IMAGES)  # nested folders, every extension, any case; .txt ignored
    assert summary.indexed == 6 and summary.reused == 0 and summary.total == 6
    assert summary.skipped == {reason: 1 for reason in BAD_FILES.values()}

    generation = index.generation_dir
    assert generation.parent == out and generation.name == index.generation and index.generation.startswith("gen-")
    embeddings = np.load(generation / "embeddings.npy", mmap_mode="r")
    assert embeddings.dtype == np.float32 and embeddings.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    manifest = [json.loads(line) for line in (generation / "manifest.jsonl").read_text().splitlines()]
    by_path = {entry["path"]: entry for entry in manifest}
    for rel in GOOD_IMAGES:
        entry = by_path[rel]
        assert entry["status"] == "ok" and entry["hash"] == content_hash(image_folder / rel)
        assert entry["size"] == (image_folder / rel).stat().st_size
        # row i of embeddings.npy is this file's embedding
        expected = tiny_open_clip_encoder.encode_images([load_image(image_folder / rel)])[0]
        np.testing.assert_allclose(embeddings[entry["row"]], expected, atol=1e-5)
    for rel, reason in BAD_FILES.items():
        assert by_path[rel]["status"] == "skipped" and by_path[rel]["reason"] == reason and by_path[rel]["row"] is None
    meta = json.loads((generation / "meta.json").read_text())
    assert meta["count"] == 6 and meta["dim"] == 32 and meta["index_factory"] == "Flat"
    assert meta["encoder"]["weights"] == "random-init:seed=0" and meta["preprocess"]["size"] == [32, 32]
    assert meta["agent_cir_version"] and meta["created"] and meta["images_dir"] == str(image_folder.resolve())
    import faiss

    assert faiss.read_index(str(generation / "index.faiss")).ntotal == 6


def test_decode_workers_give_the_same_embeddings(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    in_process = _build(image_folder, tmp_path / "a", tiny_open_clip_encoder, workers=0)
    with_workers = _build(image_folder, tmp_path / "b", tiny_open_clip_encoder, workers=2)
    assert in_process.ids == with_workers.ids
    np.testing.assert_allclose(in_process.embeddings, with_workers.embeddings, atol=1e-6)
    assert with_workers.build_summary.skipped == in_process.build_summary.skipped


def test_image_search_finds_itself_and_reference_is_excluded(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    shutil.copy(image_folder / "red.jpg", image_folder / "nested" / "red-copy.jpg")  # same content, other path
    index = _build(image_folder, tmp_path / "idx", tiny_open_clip_encoder)
    kept = search_index(index, tiny_open_clip_encoder, image=image_folder / "red.jpg", mode="image", k=3, exclude_reference=False)
    assert {kept[0].id, kept[1].id} == {"red.jpg", "nested/red-copy.jpg"}
    assert kept[0].score == pytest.approx(1.0, abs=1e-4) and [c.rank for c in kept] == [1, 2, 3]
    assert kept[0].path == str(image_folder.resolve() / kept[0].id)
    excluded = search_index(index, tiny_open_clip_encoder, image=image_folder / "red.jpg", mode="image", k=3)
    assert [c.rank for c in excluded] == [1, 2, 3]
    assert not {"red.jpg", "nested/red-copy.jpg"} & {c.id for c in excluded}
    everything_kept = search_index(index, tiny_open_clip_encoder, image=image_folder / "red.jpg", mode="image", k=50, exclude_reference=False)
    others = [c.id for c in everything_kept if c.id not in {"red.jpg", "nested/red-copy.jpg"}]
    assert [c.id for c in excluded] == others[:3]
    # k larger than the gallery: everything except the reference, once each
    everything = search_index(index, tiny_open_clip_encoder, image=image_folder / "red.jpg", mode="image", k=50)
    assert len(everything) == 5 and len({c.id for c in everything}) == 5


def test_fusion_matches_a_hand_computation(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    index = _build(image_folder, tmp_path / "idx", tiny_open_clip_encoder)
    reference, text, alpha = image_folder / "green.PNG", "make it a yellow square", 0.7
    img = tiny_open_clip_encoder.encode_images([load_image(reference)])[0].astype(np.float64)
    txt = tiny_open_clip_encoder.encode_texts([text])[0].astype(np.float64)
    mixed = (1 - alpha) * img / np.linalg.norm(img) + alpha * txt / np.linalg.norm(txt)
    query = mixed / np.linalg.norm(mixed)
    scores = np.asarray(index.embeddings, dtype=np.float64) @ query
    ids = index.ids
    expected = [(ids[i], scores[i]) for i in np.argsort(-scores) if ids[i] != "green.PNG"][:4]

    got = search_index(index, tiny_open_clip_encoder, image=reference, text=text, mode="fusion", alpha=alpha, k=4)
    assert [c.id for c in got] == [e[0] for e in expected]
    np.testing.assert_allclose([c.score for c in got], [e[1] for e in expected], atol=1e-5)

    text_only = search_index(index, tiny_open_clip_encoder, text=text, mode="text", k=6)
    text_scores = np.asarray(index.embeddings) @ (txt / np.linalg.norm(txt))
    assert [c.id for c in text_only] == [ids[i] for i in np.argsort(-text_scores)]
    with pytest.raises(AgentCirError, match="needs a reference image"):
        search_index(index, tiny_open_clip_encoder, text=text, mode="fusion")
    with pytest.raises(AgentCirError, match="needs a modification text"):
        search_index(index, tiny_open_clip_encoder, image=reference, mode="text")


def test_search_vectors_batch_and_dimension_check(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    index = _build(image_folder, tmp_path / "idx", tiny_open_clip_encoder)
    queries = np.asarray(index.embeddings[:2])
    both = index.search_vectors(queries, k=2)
    assert [ranking[0].id for ranking in both] == index.ids[:2]
    red_hash = content_hash(image_folder / "red.jpg")
    row = index.ids.index("red.jpg")
    single = index.search_vectors(np.asarray(index.embeddings[row]), k=2, exclude_hashes=[red_hash])
    assert "red.jpg" not in [c.id for c in single] and len(single) == 2
    with pytest.raises(AgentCirError, match="dimension 5"):
        index.search_vectors(np.ones(5, dtype=np.float32), k=2)


# ---------------------------------------------------------------- incremental
def test_incremental_reindex_encodes_only_new_and_changed(image_folder, tmp_path, tiny_open_clip_encoder, monkeypatch) -> None:
    out = tmp_path / "idx"
    first = _build(image_folder, out, tiny_open_clip_encoder)
    before = dict(zip(first.ids, np.asarray(first.embeddings).copy()))

    # Unchanged folder: nothing re-encoded, and no file is even re-hashed (size + mtime shortcut).
    import agent_cir.index.plan as plan_module

    calls: list[str] = []
    monkeypatch.setattr(plan_module, "read_hash", lambda path, root=None: calls.append(str(path)) or content_hash(path))
    again = _build(image_folder, out, tiny_open_clip_encoder)
    assert (again.build_summary.indexed, again.build_summary.reused, calls) == (0, 6, [])

    # add one, change one, remove one, touch one without changing it, move one
    shutil.copy(image_folder / "gray.bmp", image_folder / "new-gray.bmp")
    from PIL import Image

    Image.new("RGB", (40, 36), (0, 0, 0)).save(image_folder / "green.PNG", format="PNG")
    (image_folder / "red.jpg").unlink()
    touched = image_folder / "nested" / "blue.jpeg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 5_000_000_000))
    (image_folder / "nested" / "deeper" / "yellow.webp").rename(image_folder / "yellow-moved.webp")
    calls.clear()
    third = _build(image_folder, out, tiny_open_clip_encoder)
    summary = third.build_summary
    assert summary.indexed == 1  # only the changed green.PNG; the copy and the moved file reuse by content hash
    assert summary.reused == 5 and summary.removed == 2 and summary.total == 6
    assert sorted(Path(p).name for p in calls) == ["blue.jpeg", "green.PNG", "new-gray.bmp", "yellow-moved.webp"]
    after = dict(zip(third.ids, np.asarray(third.embeddings)))
    assert "red.jpg" not in after and "nested/deeper/yellow.webp" not in after
    np.testing.assert_allclose(after["new-gray.bmp"], before["gray.bmp"], atol=1e-6)
    np.testing.assert_allclose(after["yellow-moved.webp"], before["nested/deeper/yellow.webp"], atol=1e-6)
    np.testing.assert_allclose(after["nested/blue.jpeg"], before["nested/blue.jpeg"], atol=1e-6)
    assert not np.allclose(after["green.PNG"], before["green.PNG"])
    fresh = tiny_open_clip_encoder.encode_images([load_image(image_folder / "green.PNG")])[0]
    np.testing.assert_allclose(after["green.PNG"], fresh, atol=1e-5)
    assert third.build_summary.skipped_total == 5  # bad files stay listed, not retried


def test_interrupted_build_keeps_finished_work(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    class StopsAfterOneBatch:
        def __init__(self, inner) -> None:
            self.inner, self.calls = inner, 0
            self.dim, self.info, self.preprocess, self.batch_size = inner.dim, inner.info, inner.preprocess, 4

        def encode_images(self, images, batch_size=None):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return self.inner.encode_images(images, batch_size)

        def encode_texts(self, texts, batch_size=None):
            return self.inner.encode_texts(texts, batch_size)

    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        _build(image_folder, out, StopsAfterOneBatch(tiny_open_clip_encoder))
    partial = GalleryIndex.load(out)
    assert 0 < len(partial) < 6
    resumed = _build(image_folder, out, tiny_open_clip_encoder)
    assert resumed.build_summary.reused == len(partial) and resumed.build_summary.indexed == 6 - len(partial)


# ---------------------------------------------------------------- bad inputs and mismatches
def test_decompression_bomb_warning_level_is_an_error_too(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "big.png"
    width = 12_000
    height = Image.MAX_IMAGE_PIXELS // width + 100  # above the warning limit, below PIL's hard error
    path.write_bytes(decompression_bomb_png(width, height))
    with pytest.raises(BadImageError) as caught:
        load_image(path)
    assert caught.value.reason == REASON_BOMB


def test_mismatched_encoder_is_refused(image_folder, tmp_path, tiny_open_clip_encoder, tiny_hf_clip_dir) -> None:
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders import create_encoder

    out = tmp_path / "idx"
    index = _build(image_folder, out, tiny_open_clip_encoder)
    other = create_encoder(EncoderConfig(backend="hf", model=str(tiny_hf_clip_dir)))
    with pytest.raises(AgentCirError) as caught:
        _build(image_folder, out, other)
    message = str(caught.value)
    assert "open_clip" in message and str(tiny_hf_clip_dir) in message
    assert "--out" in message and "--model/--pretrained" in message
    with pytest.raises(AgentCirError, match="was built with encoder"):
        search_index(index, other, text="a red thing", mode="text")
    # the index on disk is untouched
    assert GalleryIndex.load(out).ids == index.ids


def test_hf_encoder_builds_and_searches(image_folder, tmp_path, tiny_hf_clip_dir) -> None:
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders import create_encoder

    encoder = create_encoder(EncoderConfig(backend="hf", model=str(tiny_hf_clip_dir)))
    index = _build(image_folder, tmp_path / "idx", encoder)
    assert len(index) == 6 and index.dim == 16
    found = search_index(index, encoder, image=image_folder / "gray.bmp", mode="image", k=1, exclude_reference=False)
    assert found[0].id == "gray.bmp"


def test_faiss_factories(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    hnsw = _build(image_folder, tmp_path / "hnsw", tiny_open_clip_encoder, index_type="HNSW8")
    top = search_index(hnsw, tiny_open_clip_encoder, image=image_folder / "gray.bmp", mode="image", k=1, exclude_reference=False)
    assert top[0].id == "gray.bmp"
    assert GalleryIndex.load(tmp_path / "hnsw").meta["index_factory"] == "HNSW8"
    with pytest.raises(AgentCirError, match="not a valid faiss index_factory"):
        _build(image_folder, tmp_path / "bad", tiny_open_clip_encoder, index_type="Flatt")
    assert not (tmp_path / "bad").exists()  # refused before any work
    with pytest.raises(AgentCirError, match="could not be trained on 6 vectors"):
        _build(image_folder, tmp_path / "ivf", tiny_open_clip_encoder, index_type="IVF64,Flat")


def test_encoder_config_from_meta_rebuilds_the_same_encoder(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    index = _build(image_folder, tmp_path / "idx", tiny_open_clip_encoder)
    config = encoder_config_from_meta(index.meta)
    assert (config.backend, config.model, config.pretrained) == ("open_clip", tiny_open_clip_encoder.info["model"], "none")
    rebuilt = index.load_encoder()
    index.check_encoder(rebuilt)
    query = image_folder / "red.jpg"
    assert search_index(index, rebuilt, image=query, text="x", k=3) == search_index(index, tiny_open_clip_encoder, image=query, text="x", k=3)


def test_missing_index_and_missing_reference_errors(image_folder, tmp_path, tiny_open_clip_encoder) -> None:
    with pytest.raises(AgentCirError, match="no gallery index"):
        GalleryIndex.load(tmp_path / "nothing")
    index = _build(image_folder, tmp_path / "idx", tiny_open_clip_encoder)
    with pytest.raises(AgentCirError, match="reference image not found"):
        search_index(index, tiny_open_clip_encoder, image=tmp_path / "nope.jpg", mode="image")
    with pytest.raises(AgentCirError, match="cannot be used: truncated"):
        search_index(index, tiny_open_clip_encoder, image=image_folder / "truncated.jpg", mode="image")
    with pytest.raises(AgentCirError, match="no images found"):
        empty = tmp_path / "empty"
        empty.mkdir()
        _build(empty, tmp_path / "idx2", tiny_open_clip_encoder)


# ---------------------------------------------------------------- real photos
def test_real_photos_subset_end_to_end(photos_dir, tmp_path, tiny_open_clip_encoder) -> None:
    if not photos_dir.is_dir():
        pytest.skip(f"{photos_dir} not found")
    files = sorted(p.name for p in photos_dir.iterdir() if p.suffix.lower() == ".jpg")[:40]
    index = _build(photos_dir, tmp_path / "idx", tiny_open_clip_encoder, files=files, workers=1)
    assert index.ids == files and index.build_summary.skipped_total == 0
    reference = photos_dir / files[7]
    kept = search_index(index, tiny_open_clip_encoder, image=reference, mode="image", k=5, exclude_reference=False)
    assert kept[0].id == files[7] and kept[0].score == pytest.approx(1.0, abs=1e-4)
    fused = search_index(index, tiny_open_clip_encoder, image=reference, text="a cat instead", k=10)
    assert len(fused) == 10 and files[7] not in [c.id for c in fused]
    assert all(a.score >= b.score for a, b in zip(fused, fused[1:]))
    with pytest.raises(AgentCirError, match="not found"):
        _build(photos_dir, tmp_path / "idx3", tiny_open_clip_encoder, files=["no_such_photo.jpg"])


# ---------------------------------------------------------------- CLI
def _cli():
    from agent_cir.cli import _register, app

    _register()
    return app


def test_cli_index_builds_then_reuses(image_folder, tmp_path, tiny_open_clip_config) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-idx"
    args = ["index", str(image_folder), "--out", str(out), "--model", str(tiny_open_clip_config), "--pretrained", "none",
            "--workers", "0", "--batch-size", "4", "--quiet"]
    first = runner.invoke(_cli(), args)
    assert first.exit_code == 0, first.output
    assert "images in index: 6" in first.output and "encoded now:     6" in first.output
    assert "skipped:         5" in first.output and "truncated" in first.output
    second = runner.invoke(_cli(), [*args, "--json"])
    assert second.exit_code == 0, second.output
    payload = json.loads(second.output[second.output.index("{"):])
    assert payload["indexed"] == 0 and payload["reused"] == 6 and payload["skipped"]["decompression bomb"] == 1


def test_cli_missing_weights_is_one_clear_line(image_folder, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(
        _cli(), ["index", str(image_folder), "--out", str(tmp_path / "x"), "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"]
    )
    assert result.exit_code == 2
    assert "error: open_clip model ViT-B-32" in result.output and "--pretrained /path/to/" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
