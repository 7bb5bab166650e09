"""The imagine stage's diffusers backend on tiny random pipelines of the real classes, built offline here.

``save_tiny_pipeline`` builds UNet2DConditionModel + AutoencoderKL + CLIPTextModel (tiny configs, random init),
a DDIM scheduler and a CLIPTokenizer from a character vocabulary written in the test, and saves them as a
StableDiffusionInstructPix2PixPipeline (edit), StableDiffusionImg2ImgPipeline or StableDiffusionPipeline
(text-to-image) folder that ``diffusers:PATH`` loads. 32 px, 2 steps: an edit takes well under a second on CPU.
Other tests (dual, twins, pipeline) import these builders.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.backends.image_edit import EditRequest, ImageEditError, create_image_editor, parse_edit_spec
from agent_cir.backends.image_edit.cached import edit_image, images_folder
from agent_cir.cache import ModelCache
from agent_cir.config import ImagineConfig
from agent_cir.hashing import bytes_hash
from tests.fixtures.encoders import tiny_clip_vocab

diffusers = pytest.importorskip("diffusers")

TINY_SIZE = 32


def save_tiny_pipeline(folder: Path, kind: str = "pix2pix", seed: int = 0) -> Path:
    """A tiny random pipeline of the real diffusers classes, saved with save_pretrained (offline)."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline,
                           StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = tiny_clip_vocab()
    tokenizer_dir = folder.parent / f"{folder.name}-tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=32)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=TINY_SIZE // 4,
        in_channels=8 if kind == "pix2pix" else 4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=TINY_SIZE)
    end = vocab["<|endoftext|>"]
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end,
        projection_dim=16))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    cls = {"pix2pix": StableDiffusionInstructPix2PixPipeline, "img2img": StableDiffusionImg2ImgPipeline,
           "text2img": StableDiffusionPipeline}[kind]
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def tiny_imagine_config(folder: Path, **changes) -> ImagineConfig:
    settings = {"enabled": True, "model": f"diffusers:{folder}", "steps": 2, "guidance": 2.0, "size": TINY_SIZE,
                "device": "cpu", **changes}
    return ImagineConfig(**settings)


def png_of(color: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_pix2pix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("diffusers") / "pix2pix", "pix2pix")


@pytest.fixture(scope="session")
def tiny_text2img_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("diffusers") / "text2img", "text2img")


class CountingEditor:
    """Wraps an editor and counts the edits that reached it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.calls = 0

    @property
    def info(self):
        return self.inner.info

    def edit(self, request):
        self.calls += 1
        return self.inner.edit(request)


# ------------------------------------------------------------------------------------------------ tests


def test_an_edit_runs_through_the_real_pipeline_class_and_returns_a_png(tiny_pix2pix_dir: Path) -> None:
    editor = create_image_editor(tiny_imagine_config(tiny_pix2pix_dir))
    png = editor.edit(EditRequest("make it blue", png_of((200, 10, 10)), steps=2, guidance=2.0, image_guidance=1.5,
                                  size=TINY_SIZE))
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG" and picture.size == (TINY_SIZE, TINY_SIZE)
    assert type(editor._pipe).__name__ == "StableDiffusionInstructPix2PixPipeline"
    assert editor.loads == 1


def test_an_edit_is_deterministic_per_seed_and_changes_with_it(tiny_pix2pix_dir: Path) -> None:
    editor = create_image_editor(tiny_imagine_config(tiny_pix2pix_dir))
    reference = png_of((30, 160, 40))
    first = editor.edit(EditRequest("make it red", reference, seed=7, steps=2, size=TINY_SIZE))
    again = editor.edit(EditRequest("make it red", reference, seed=7, steps=2, size=TINY_SIZE))
    other = editor.edit(EditRequest("make it red", reference, seed=8, steps=2, size=TINY_SIZE))
    pixels = lambda data: np.asarray(Image.open(io.BytesIO(data)))  # noqa: E731
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_the_cache_serves_a_repeated_edit_with_no_model_call(tiny_pix2pix_dir: Path, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache.sqlite")
    editor = CountingEditor(create_image_editor(tiny_imagine_config(tiny_pix2pix_dir)))
    request = EditRequest("make it blue", png_of((200, 10, 10)), seed=1, steps=2, size=TINY_SIZE)
    first = edit_image(editor, request, prompt_name="imagine", prompt_hash="p1", cache=cache)
    second = edit_image(editor, request, prompt_name="imagine", prompt_hash="p1", cache=cache)
    assert editor.calls == 1
    assert (first.call.cache, second.call.cache) == ("miss", "hit")
    assert second.png == first.png and second.sha256 == bytes_hash(first.png)
    stored = images_folder(cache) / f"{first.sha256}.png"
    assert stored.read_bytes() == first.png
    assert not [p for p in stored.parent.iterdir() if p.name.endswith(".part")]
    # Every part of the key matters: another seed, prompt hash or reference is a new edit.
    edit_image(editor, EditRequest("make it blue", png_of((200, 10, 10)), seed=2, steps=2, size=TINY_SIZE),
               prompt_name="imagine", prompt_hash="p1", cache=cache)
    edit_image(editor, request, prompt_name="imagine", prompt_hash="p2", cache=cache)
    edit_image(editor, EditRequest("make it blue", png_of((10, 10, 200)), seed=1, steps=2, size=TINY_SIZE),
               prompt_name="imagine", prompt_hash="p1", cache=cache)
    assert editor.calls == 4


def test_a_damaged_cached_picture_is_a_miss_and_is_made_again(tiny_pix2pix_dir: Path, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache.sqlite")
    editor = CountingEditor(create_image_editor(tiny_imagine_config(tiny_pix2pix_dir)))
    request = EditRequest("make it blue", png_of((200, 10, 10)), steps=2, size=TINY_SIZE)
    first = edit_image(editor, request, prompt_name="imagine", prompt_hash="p", cache=cache)
    (images_folder(cache) / f"{first.sha256}.png").write_bytes(b"not the picture")
    again = edit_image(editor, request, prompt_name="imagine", prompt_hash="p", cache=cache)
    assert editor.calls == 2 and again.call.cache == "miss" and again.png == first.png
    assert cache.damaged == 1


def test_call_arguments_follow_the_pipeline_signature(tiny_pix2pix_dir: Path) -> None:
    editor = create_image_editor(tiny_imagine_config(tiny_pix2pix_dir))
    pipe = editor._pipeline(text_only=False)
    call = editor._arguments(pipe, EditRequest("x", png_of((1, 2, 3)), steps=3, guidance=4.0, image_guidance=1.2,
                                               strength=0.5, size=TINY_SIZE))
    assert call["image_guidance_scale"] == 1.2 and call["guidance_scale"] == 4.0
    assert "strength" not in call and "true_cfg_scale" not in call  # InstructPix2Pix takes neither
    assert call["image"].size == (TINY_SIZE, TINY_SIZE)
    with pytest.raises(ImageEditError, match="does not take"):
        editor._arguments(pipe, EditRequest("x", png_of((1, 2, 3)), extra={"no_such_argument": 1}))


def test_text_only_requests_use_the_text_to_image_form(tiny_text2img_dir: Path, tiny_pix2pix_dir: Path) -> None:
    text2img = create_image_editor(tiny_imagine_config(tiny_text2img_dir))
    png = text2img.edit(EditRequest("a red circle", None, steps=2, size=TINY_SIZE))
    assert Image.open(io.BytesIO(png)).size == (TINY_SIZE, TINY_SIZE)
    pix2pix = create_image_editor(tiny_imagine_config(tiny_pix2pix_dir))
    with pytest.raises(ImageEditError, match="text-to-image"):
        pix2pix.edit(EditRequest("a red circle", None, steps=2, size=TINY_SIZE))


@pytest.mark.parametrize("spec", ["", "diffusers", "diffusers:", "dalle:x", "pix2pix"])
def test_bad_specs_say_what_is_accepted(spec: str) -> None:
    with pytest.raises(ImageEditError, match="diffusers:MODEL"):
        parse_edit_spec(spec)


def test_a_model_folder_that_does_not_exist_is_one_clear_error(tmp_path: Path) -> None:
    editor = create_image_editor(tiny_imagine_config(tmp_path / "missing"))
    with pytest.raises(ImageEditError, match="cannot be loaded.*model_index.json"):
        editor.edit(EditRequest("x", png_of((1, 2, 3)), steps=1, size=TINY_SIZE))
