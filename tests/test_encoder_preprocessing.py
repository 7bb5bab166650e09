"""Encoder preprocessing (center_crop | targetpad), the encoder identity it is recorded in, and check_compatible.

targetpad is checked against images padded by hand here, from the official definition (SEARLE / CIReVL
``src/data_utils.py`` ``TargetPad``): when long / short >= ratio, pad the short side with black, int((long /
ratio - short) / 2) pixels on each side; otherwise leave the image alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_cir.config import EncoderConfig
from agent_cir.encoders import EncoderMismatchError, TargetPad, check_compatible, create_encoder, encoder_identity
from agent_cir.errors import AgentCirError


def _pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Random bright pixels (no pure black), so padding is visible wherever it lands."""
    return np.random.default_rng(seed).integers(30, 256, (height, width, 3), dtype=np.uint8)


def _hand_pad(pixels: np.ndarray, left_right: int, top_bottom: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    out = np.zeros((height + 2 * top_bottom, width + 2 * left_right, 3), dtype=np.uint8)
    out[top_bottom : top_bottom + height, left_right : left_right + width] = pixels
    return out


# (width, height) -> (pixels added left and right, top and bottom), worked out by hand for ratio 1.25
HAND_WORKED = {
    (40, 16): (0, 8),  # 40 / 16 = 2.5 >= 1.25: short side -> 40 / 1.25 = 32, (32 - 16) / 2 = 8
    (16, 40): (8, 0),  # the same, portrait
    (41, 16): (0, 8),  # 41 / 1.25 = 32.8, (32.8 - 16) / 2 = 8.4 -> 8 (whole pixels, rounded down)
    (30, 25): (0, 0),  # 1.2 < 1.25: untouched
    (25, 20): (0, 0),  # exactly 1.25: padded to 20 rows, i.e. nothing to add
    (100, 10): (0, 35),  # 100 / 1.25 = 80, (80 - 10) / 2 = 35
}


@pytest.mark.parametrize(("size", "padding"), list(HAND_WORKED.items()))
def test_targetpad_pads_like_the_official_definition(size: tuple[int, int], padding: tuple[int, int]) -> None:
    pixels = _pattern(*size)
    padded = np.asarray(TargetPad(1.25)(Image.fromarray(pixels)))
    np.testing.assert_array_equal(padded, _hand_pad(pixels, *padding))


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 120), height=st.integers(1, 120), ratio=st.floats(1.0, 3.0))
def test_targetpad_any_size_keeps_the_picture_centred_and_reaches_the_ratio(width: int, height: int, ratio: float) -> None:
    pixels = _pattern(width, height, seed=width * 131 + height)
    padded = np.asarray(TargetPad(ratio)(Image.fromarray(pixels)))
    new_height, new_width = padded.shape[:2]
    left, top = (new_width - width) // 2, (new_height - height) // 2
    assert new_width - width == 2 * left and new_height - height == 2 * top  # symmetric, whole pixels
    np.testing.assert_array_equal(padded[top : top + height, left : left + width], pixels)
    assert not padded[:top].any() and not padded[top + height :].any()
    assert not padded[:, :left].any() and not padded[:, left + width :].any()
    if max(width, height) / min(width, height) < ratio:
        assert (new_width, new_height) == (width, height)
    else:  # padded to the ratio, up to the rounding down of each side's padding (< 2 pixels)
        long_side, short_side = max(new_width, new_height), min(new_width, new_height)
        assert long_side == max(width, height)
        assert long_side / ratio - 2 < short_side <= long_side / ratio + 1e-9


def test_targetpad_rejects_a_ratio_below_one() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        TargetPad(0.8)
    with pytest.raises(Exception, match="target_ratio"):
        EncoderConfig(preprocess="targetpad", target_ratio=0.5)


@pytest.fixture(scope="module")
def open_clip_pair(tiny_open_clip_config: Path):
    """The tiny open_clip model with the model's own preprocessing and with targetpad (same weights)."""
    config = dict(backend="open_clip", model=str(tiny_open_clip_config), pretrained="none")
    return (create_encoder(EncoderConfig(**config)),
            create_encoder(EncoderConfig(**config, preprocess="targetpad", target_ratio=1.25)))


def test_open_clip_targetpad_is_open_clips_transform_of_the_hand_padded_image(open_clip_pair) -> None:
    center, targetpad = open_clip_pair
    for size, padding in HAND_WORKED.items():
        image = Image.fromarray(_pattern(*size, seed=size[0]))
        hand_padded = Image.fromarray(_hand_pad(np.asarray(image), *padding))
        torch.testing.assert_close(targetpad.preprocess(image), center.preprocess(hand_padded), rtol=0, atol=0)


def test_open_clip_targetpad_matches_an_independent_torchvision_pipeline(open_clip_pair) -> None:
    """The official pipeline: pad, bicubic resize of the short side, centre crop, to tensor, normalise."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    _, targetpad = open_clip_pair
    cfg = targetpad.info["preprocess"]
    side = cfg["size"][0]
    reference = Compose([Resize(side, interpolation=InterpolationMode.BICUBIC), CenterCrop(side), ToTensor(),
                         Normalize(cfg["mean"], cfg["std"])])
    pixels = _pattern(40, 16, seed=3)
    expected = reference(Image.fromarray(_hand_pad(pixels, 0, 8)))
    torch.testing.assert_close(targetpad.preprocess(Image.fromarray(pixels)), expected)
    # the black bands survive resize + crop: after normalisation they sit at (0 - mean) / std
    black = (0 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    torch.testing.assert_close(expected[:, 0, side // 2], black, atol=1e-3, rtol=0)


def test_targetpad_changes_embeddings_only_of_elongated_images(open_clip_pair) -> None:
    center, targetpad = open_clip_pair
    square = Image.fromarray(_pattern(32, 30, seed=1))
    tall = Image.fromarray(_pattern(20, 60, seed=2))
    np.testing.assert_allclose(center.encode_images([square]), targetpad.encode_images([square]), atol=1e-6)
    assert not np.allclose(center.encode_images([tall]), targetpad.encode_images([tall]), atol=1e-3)
    # the PIL path and the preprocessed-tensor path (index workers) agree
    batch = torch.stack([targetpad.preprocess(tall), targetpad.preprocess(square)])
    np.testing.assert_allclose(targetpad.encode_images(batch), targetpad.encode_images([tall, square]), atol=1e-5)


def test_targetpad_preprocess_pickles_for_index_workers(open_clip_pair) -> None:
    import pickle

    _, targetpad = open_clip_pair
    image = Image.fromarray(_pattern(50, 20, seed=4))
    torch.testing.assert_close(pickle.loads(pickle.dumps(targetpad.preprocess))(image), targetpad.preprocess(image))


def test_hf_targetpad_is_the_processor_on_the_hand_padded_image(tiny_hf_clip_dir: Path) -> None:
    center = create_encoder(EncoderConfig(backend="hf", model=str(tiny_hf_clip_dir)))
    targetpad = create_encoder(EncoderConfig(backend="hf", model=str(tiny_hf_clip_dir), preprocess="targetpad"))
    pixels = _pattern(16, 40, seed=5)
    hand_padded = Image.fromarray(_hand_pad(pixels, 8, 0))
    torch.testing.assert_close(targetpad.preprocess(Image.fromarray(pixels)), center.preprocess(hand_padded))
    np.testing.assert_allclose(targetpad.encode_images([Image.fromarray(pixels)]),
                               center.encode_images([hand_padded]), atol=1e-5)
    assert targetpad.info["preprocess"]["method"] == "targetpad"
    assert targetpad.info["preprocess"]["target_ratio"] == 1.25
    assert encoder_identity(targetpad.info) != encoder_identity(center.info)


# ------------------------------------------------------------------------------------ identity, honesty


def test_info_names_architecture_weights_preprocessing_and_random_init(open_clip_pair, tiny_open_clip_config) -> None:
    center, targetpad = open_clip_pair
    assert center.info["random_weights"] is True and center.info["pretrained"] == "none"
    assert center.info["architecture"].startswith("agent_cir_tiny-vit_")  # the registered config's name
    assert center.info["preprocess"]["method"] == "center_crop" and "target_ratio" not in center.info["preprocess"]
    assert targetpad.info["preprocess"] == {**center.info["preprocess"], "method": "targetpad", "target_ratio": 1.25}
    assert encoder_identity(center.info) != encoder_identity(targetpad.info)
    other_ratio = create_encoder(EncoderConfig(model=str(tiny_open_clip_config), pretrained="none",
                                               preprocess="targetpad", target_ratio=1.5))
    assert encoder_identity(other_ratio.info) != encoder_identity(targetpad.info)
    # an index written before the option existed (no method) was centre-cropped: same identity
    legacy = {**center.info, "preprocess": {k: v for k, v in center.info["preprocess"].items() if k != "method"}}
    legacy.pop("architecture"), legacy.pop("random_weights")
    assert encoder_identity(legacy) == encoder_identity(center.info)


def test_local_checkpoint_is_not_random_weights(tiny_open_clip_config, tmp_path: Path) -> None:
    from agent_cir.encoders.open_clip_encoder import OpenClipEncoder

    source = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained="none", seed=3)
    checkpoint = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.model.state_dict(), checkpoint)
    loaded = OpenClipEncoder(model=str(tiny_open_clip_config), pretrained=str(checkpoint))
    assert loaded.info["random_weights"] is False and loaded.info["weights"].startswith("sha256:")


def test_check_compatible_names_each_difference_and_the_index_command(open_clip_pair, tiny_open_clip_config) -> None:
    center, targetpad = open_clip_pair
    model = str(tiny_open_clip_config)
    same = EncoderConfig(model=model, pretrained="none", device="cpu", precision="bf16", batch_size=3)
    check_compatible(same, center.info)  # device, precision and batch size do not matter
    check_compatible({"model": model, "pretrained": None}, center.info)  # None and 'none' are both random init
    check_compatible(center.info, center.info)
    check_compatible(EncoderConfig(model=model, pretrained="none", preprocess="targetpad"), targetpad.info)

    with pytest.raises(EncoderMismatchError) as caught:
        check_compatible(EncoderConfig(model=model, pretrained="none", preprocess="targetpad"), center.info)
    message = str(caught.value)
    assert isinstance(caught.value, AgentCirError)
    assert "differ in preprocess, target_ratio" in message
    assert "preprocess targetpad 1.25" in message and "preprocess center_crop)" in message
    assert f"agent-cir index IMAGES_DIR --out NEW_INDEX_DIR --backend open_clip --model {model} --pretrained none " \
           "--preprocess targetpad --target-ratio 1.25" in message

    with pytest.raises(EncoderMismatchError, match="differ in target_ratio"):
        check_compatible({"model": model, "pretrained": "none", "preprocess": "targetpad", "target_ratio": 1.5},
                         targetpad.info)
    with pytest.raises(EncoderMismatchError, match="differ in model, pretrained"):
        check_compatible(EncoderConfig(model="ViT-L-14", pretrained="laion2b_s32b_b82k"), center.info)
    with pytest.raises(EncoderMismatchError, match="differ in backend, model, pretrained") as caught:
        check_compatible(EncoderConfig(backend="hf", model="/models/clip"), center.info)
    assert "--backend hf --model /models/clip --preprocess center_crop`" in str(caught.value)
    with pytest.raises(EncoderMismatchError, match="differ in pretrained"):
        check_compatible(center.info | {"pretrained": "laion2b_s34b_b79k", "weights": "tag:x"}, center.info)


def test_index_records_targetpad_and_rebuilds_the_same_encoder(image_folder: Path, tmp_path: Path, open_clip_pair) -> None:
    from agent_cir.index import GalleryIndex, encoder_config_from_meta, load_image

    _, targetpad = open_clip_pair
    GalleryIndex.build(image_folder, tmp_path / "index", targetpad, workers=0, progress=False)
    loaded = GalleryIndex.load(tmp_path / "index")
    assert loaded.meta["encoder"]["preprocess"]["method"] == "targetpad"
    config = encoder_config_from_meta(loaded.meta)
    assert (config.preprocess, config.target_ratio) == ("targetpad", 1.25)
    check_compatible(config, loaded.encoder_info)
    rebuilt = loaded.load_encoder()
    loaded.check_encoder(rebuilt)
    # the rebuilt encoder reproduces the stored rows (the gallery images are 40x36 / 48x40: below 1.25, so
    # also check an elongated image against the index's own encoder)
    vectors = rebuilt.encode_images([load_image(path) for path in loaded.paths])
    np.testing.assert_allclose(vectors, np.asarray(loaded.embeddings), atol=1e-5)
    tall = Image.fromarray(_pattern(20, 70, seed=9))
    np.testing.assert_allclose(rebuilt.encode_images([tall]), targetpad.encode_images([tall]), atol=1e-6)
    with pytest.raises(EncoderMismatchError, match="--preprocess center_crop"):
        check_compatible(config.model_copy(update={"preprocess": "center_crop"}), loaded.encoder_info)


# ------------------------------------------------------------------------------------ normalisation constants

# The constants the official code hard-codes (CIReVL src/data_utils.py:65, WeiMoCIR's CLIPImageProcessor),
# written out here rather than read from the model or from agent_cir.
OFFICIAL_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OFFICIAL_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _official_pipeline(side: int, mean, std):
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(side, interpolation=InterpolationMode.BICUBIC), CenterCrop(side), ToTensor(),
                    Normalize(mean, std)])


def test_openai_normalize_replaces_the_laion_tags_own_constants_in_open_clips_transform() -> None:
    """open_clip's ViT-L-14 laion2b_s32b_b82k transform normalises with 0.5 / 0.5; CIReVL's with OpenAI's."""
    import open_clip

    from agent_cir.encoders.preprocessing import with_normalize, with_pad

    tag_cfg = open_clip.get_pretrained_cfg("ViT-L-14", "laion2b_s32b_b82k")
    assert tag_cfg["mean"] == (0.5, 0.5, 0.5) and tag_cfg["std"] == (0.5, 0.5, 0.5)  # why the option exists
    model_own = open_clip.image_transform(32, is_train=False, mean=tag_cfg["mean"], std=tag_cfg["std"])
    ours = with_pad(with_normalize(model_own, "openai"), "targetpad", 1.25)
    pixels = _pattern(40, 16, seed=5)
    expected = _official_pipeline(32, OFFICIAL_OPENAI_MEAN, OFFICIAL_OPENAI_STD)(Image.fromarray(_hand_pad(pixels, 0, 8)))
    torch.testing.assert_close(ours(Image.fromarray(pixels)), expected)
    # and the model's own constants really give other pixels (the difference the option removes)
    own = with_pad(model_own, "targetpad", 1.25)(Image.fromarray(pixels))
    assert (own - expected).abs().max() > 0.5


def test_open_clip_encoder_applies_and_records_the_normalize_option(tiny_open_clip_config: Path) -> None:
    model = str(tiny_open_clip_config)
    explicit = create_encoder(EncoderConfig(model=model, pretrained="none", normalize={"mean": [0.5] * 3, "std": [0.25] * 3}))
    openai = create_encoder(EncoderConfig(model=model, pretrained="none", normalize="openai"))
    own = create_encoder(EncoderConfig(model=model, pretrained="none"))
    side = own.info["preprocess"]["size"][0]
    image = Image.fromarray(_pattern(30, 30, seed=2))
    torch.testing.assert_close(explicit.preprocess(image), _official_pipeline(side, (0.5,) * 3, (0.25,) * 3)(image))
    torch.testing.assert_close(openai.preprocess(image), _official_pipeline(side, OFFICIAL_OPENAI_MEAN, OFFICIAL_OPENAI_STD)(image))
    assert explicit.info["preprocess"]["normalize"] == "explicit"
    assert explicit.info["preprocess"]["mean"] == [0.5] * 3 and explicit.info["preprocess"]["std"] == [0.25] * 3
    assert openai.info["preprocess"]["normalize"] == "openai"
    assert tuple(openai.info["preprocess"]["mean"]) == OFFICIAL_OPENAI_MEAN
    assert tuple(openai.info["preprocess"]["std"]) == OFFICIAL_OPENAI_STD
    assert own.info["preprocess"]["normalize"] == "model"
    assert encoder_identity(explicit.info) != encoder_identity(own.info)
    # an index written before the option existed normalised with the model's own constants
    legacy = {**own.info, "preprocess": {k: v for k, v in own.info["preprocess"].items() if k != "normalize"}}
    assert encoder_identity(legacy) == encoder_identity(own.info)


def test_hf_encoder_openai_normalize_overrides_the_processors_constants(tiny_hf_clip_dir: Path) -> None:
    from transformers import CLIPImageProcessor

    encoder = create_encoder(EncoderConfig(backend="hf", model=str(tiny_hf_clip_dir),
                                           normalize={"mean": [0.5] * 3, "std": [0.5] * 3}))
    image = Image.fromarray(_pattern(40, 40, seed=4))
    independent = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    expected = independent(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(encoder.preprocess(image), expected)
    assert encoder.info["preprocess"]["image_mean"] == [0.5] * 3 and encoder.info["preprocess"]["normalize"] == "explicit"
    default = create_encoder(EncoderConfig(backend="hf", model=str(tiny_hf_clip_dir)))
    assert default.info["preprocess"]["image_mean"] != [0.5] * 3  # the loaded processor was not changed


@pytest.mark.parametrize("bad", [{"mean": [0.5, 0.5], "std": [0.5] * 3}, {"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]},
                                 "imagenet", {"mean": [0.5] * 3}])
def test_normalize_rejects_malformed_values_with_a_config_error(bad) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="normalize"):
        EncoderConfig(normalize=bad)


def test_check_compatible_refuses_an_index_with_other_normalisation(tiny_open_clip_config: Path) -> None:
    model = str(tiny_open_clip_config)
    own = create_encoder(EncoderConfig(model=model, pretrained="none"))
    openai = create_encoder(EncoderConfig(model=model, pretrained="none", normalize="openai"))
    check_compatible(EncoderConfig(model=model, pretrained="none", normalize="openai"), openai.info)
    # explicit values equal to OpenAI's are the openai option
    check_compatible(EncoderConfig(model=model, pretrained="none",
                                   normalize={"mean": list(OFFICIAL_OPENAI_MEAN), "std": list(OFFICIAL_OPENAI_STD)}),
                     openai.info)
    with pytest.raises(EncoderMismatchError, match="differ in normalize") as caught:
        check_compatible(EncoderConfig(model=model, pretrained="none", normalize="openai"), own.info)
    assert "--normalize openai`" in str(caught.value)
    with pytest.raises(EncoderMismatchError, match="differ in normalize"):
        check_compatible(openai.info, own.info)


def test_recipe_with_openai_normalize_is_refused_on_a_model_normalised_index(tiny_open_clip_config: Path) -> None:
    from types import SimpleNamespace

    from agent_cir.config import Recipe
    from agent_cir.index import encoder_config_from_meta
    from agent_cir.encoders.recipe_identity import check_recipe_encoder

    model = str(tiny_open_clip_config)
    own = create_encoder(EncoderConfig(model=model, pretrained="none"))
    openai = create_encoder(EncoderConfig(model=model, pretrained="none", normalize="openai"))
    assert encoder_config_from_meta({"encoder": openai.info}).normalize == "openai"
    recipe = Recipe.model_validate({"name": "r", "encoder": {"model": model, "pretrained": "none", "normalize": "openai"}})
    check_recipe_encoder(recipe, SimpleNamespace(meta={"encoder": openai.info}, directory="idx"))
    with pytest.raises(AgentCirError, match=r"differs in: normalize"):  # pipeline's own EncoderMismatchError
        check_recipe_encoder(recipe, SimpleNamespace(meta={"encoder": own.info}, directory="idx"))


@pytest.mark.parametrize("name", ["cirevl", "weimocir"])
def test_cirevl_and_weimocir_recipes_normalise_like_the_official_code(name: str) -> None:
    from agent_cir.config import load_recipe
    from agent_cir.encoders.preprocessing import normalize_constants

    recipe = load_recipe(name)
    assert recipe.encoder.normalize == "openai"
    assert normalize_constants(recipe.encoder.normalize) == (OFFICIAL_OPENAI_MEAN, OFFICIAL_OPENAI_STD)


def test_index_command_builds_an_openai_normalised_index(image_folder: Path, tmp_path: Path, tiny_open_clip_config: Path) -> None:
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app
    from agent_cir.index import GalleryIndex, encoder_config_from_meta

    _register()
    out = tmp_path / "index"
    result = CliRunner().invoke(app, ["index", str(image_folder), "--out", str(out), "--model", str(tiny_open_clip_config),
                                      "--pretrained", "none", "--normalize", "openai", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    meta = GalleryIndex.load(out).meta
    assert tuple(meta["encoder"]["preprocess"]["mean"]) == OFFICIAL_OPENAI_MEAN
    assert encoder_config_from_meta(meta).normalize == "openai"
    bad = CliRunner().invoke(app, ["index", str(image_folder), "--out", str(tmp_path / "x"), "--normalize", "imagenet"])
    assert bad.exit_code != 0 and "--normalize must be model or openai" in bad.output
