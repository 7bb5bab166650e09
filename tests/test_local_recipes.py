"""The in-process recipes `local` and `local-gpu`, run offline through every stage with only the weights
swapped: each hub model is replaced by a tiny random model of the SAME architecture (Idefics3 for SmolVLM,
Qwen2.5-VL, Qwen2), built here with a byte-level tokenizer and the real processor classes, and the
encoder keeps its architecture with random init. Every other recipe setting (prompts, device_map, dtype,
max_tokens, retrieval, grid) is the recipe's own.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from agent_cir.config import load_recipe, recipe_from_dict
from agent_cir.quickstart import example_gallery, example_queries

# What each hub model of the recipes is, as its config.json says (model_type): the tiny stand-in must match.
ARCHITECTURE_OF = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": "idefics3",
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2",
}

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}{% if m['content'] is string %}: "
    "{{ m['content'] }}{% else %}{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def byte_level_tokenizer(special: list[str], chat_template: str, eos: str, pad: str, bos: str | None = None):
    """A byte-level BPE tokenizer with no merges (every byte is a token) plus the model's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=pad, bos_token=bos,
        additional_special_tokens=[token for token in special if token not in (eos, pad, bos)],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_qwen2(folder: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_level_tokenizer(["<|im_start|>", "<|im_end|>", "<|endoftext|>"], QWEN_TEMPLATE,
                                     eos="<|im_end|>", pad="<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_qwen2_5_vl(folder: Path) -> Path:
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    special = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = byte_level_tokenizer(special, QWEN_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")
    # 28x28-pixel units (patch 14, merged 2x2): 4 to 16 of them per image, so any picture is a few tokens
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16, "patch_size": 14, "merge_size": 2,
              "temporal_patch_size": 2}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer, chat_template=QWEN_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}, "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
            "fullatt_block_indexes": [0], "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_idefics3(folder: Path) -> Path:
    """SmolVLM's architecture (Idefics3: SigLIP-style vision tower, pixel-shuffle connector, Llama text model)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tiles = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    special = ["<|im_start|>", "<end_of_utterance>", "<|endoftext|>", "<fake_token_around_image>", "<image>",
               "<global-img>"] + tiles
    tokenizer = byte_level_tokenizer(special, SMOLVLM_TEMPLATE, eos="<end_of_utterance>", pad="<|endoftext|>",
                                     bos="<|im_start|>")
    # 32-pixel tiles of 8-pixel patches, pixel-shuffled by 2: (32/8)^2 / 2^2 = 4 image tokens per tile
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                               do_image_splitting=True),
        tokenizer=tokenizer, image_seq_len=4, chat_template=SMOLVLM_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id},
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"idefics3": build_tiny_idefics3, "qwen2": build_tiny_qwen2, "qwen2_5_vl": build_tiny_qwen2_5_vl}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Architecture name -> folder of a tiny random model of it, built lazily once per module."""
    built: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, architecture: str) -> Path:
            folder = BUILDERS[architecture](tmp_path_factory.mktemp(f"tiny_{architecture}"))
            self[architecture] = folder
            return folder

    return Lazy(built)


def swap_weights(recipe_name: str, tiny_models: dict[str, Path]) -> tuple[dict, dict]:
    """The packaged recipe and a copy in which only weights changed: each hub id -> a tiny model of its
    architecture, the encoder's pretrained tag -> none. Returns (original, swapped) as plain dicts."""
    original = load_recipe(recipe_name).model_dump(mode="json")
    swapped = copy.deepcopy(original)
    for entry in swapped["models"].values():
        backend, _, hub_id = entry["spec"].partition(":")
        entry["spec"] = f"{backend}:{tiny_models[ARCHITECTURE_OF[hub_id]]}"
    swapped["encoder"]["pretrained"] = "none"
    return original, swapped


def _only_weights_differ(original: dict, swapped: dict) -> None:
    strip = copy.deepcopy(swapped)
    for name, entry in strip["models"].items():
        assert entry["spec"].split(":")[0] == original["models"][name]["spec"].split(":")[0], "same backend"
        entry["spec"] = original["models"][name]["spec"]
    strip["encoder"]["pretrained"] = original["encoder"]["pretrained"]
    strip["encoder"]["device"], strip["encoder"]["precision"] = original["encoder"]["device"], original["encoder"]["precision"]
    assert strip == original


def _run_through_every_stage(recipe: dict, tmp_path: Path, images: int) -> dict:
    from agent_cir.encoders import create_encoder
    from agent_cir.index import GalleryIndex
    from agent_cir.pipeline import Pipeline
    from agent_cir.types import Query

    query = example_queries()[0]
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    names = sorted({query.reference, query.target} | {p.name for p in sorted(example_gallery().glob("*.jpg"))[:images]})
    for name in names:
        shutil.copy(example_gallery() / name, gallery / name)
    parsed = recipe_from_dict(recipe, source="swapped recipe")
    encoder = create_encoder(parsed.encoder)
    index = GalleryIndex.build(gallery, tmp_path / "index", encoder, workers=0, progress=False)
    pipeline = Pipeline.from_config(parsed, index=index, encoder=encoder, artifacts_dir=tmp_path / "artifacts")
    result = pipeline.run(Query(image=str(gallery / query.reference), text=query.text))
    trace = result.trace.to_json_dict()  # what the writer writes
    by_stage = {stage["stage"]: stage for stage in trace["stages"]}
    assert list(by_stage) == ["caption", "rewrite", "retrieve", "rerank"]
    assert all(stage["skipped"] is None for stage in trace["stages"])
    for name in ("caption", "rewrite", "rerank"):
        calls = by_stage[name]["calls"]
        spec = recipe["models"][parsed.__getattribute__(name).model]["spec"]
        backend, _, path = spec.partition(":")
        assert calls and all(call["backend"] == backend and call["model"] == path for call in calls), name
        assert all(call["cache"] != "hit" for call in calls)
    # the VLM saw the reference image; the judge saw the reference and one grid image
    assert len(by_stage["caption"]["calls"][0]["images"]) == 1
    assert len(by_stage["rerank"]["calls"][0]["images"]) == 2
    assert Path(by_stage["rerank"]["output"]["grids"][0]["path"]).is_file()
    assert len(result.candidates) == len(names) - 1, "every gallery image but the reference is ranked"
    assert query.reference not in [c.id for c in result.candidates]
    return trace


@pytest.mark.slow
def test_local_recipe_runs_every_stage_with_tiny_models_of_its_architectures(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_CIR_CACHE", str(tmp_path / "cache.sqlite"))
    original, swapped = swap_weights("local", tiny_models)
    _only_weights_differ(original, swapped)
    assert original["encoder"] == {**original["encoder"], "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    _run_through_every_stage(swapped, tmp_path, images=6)


@pytest.mark.slow
def test_local_gpu_recipe_runs_every_stage_with_tiny_models_of_its_architectures(tiny_models, tmp_path, monkeypatch):
    """device_map: auto and dtype: bfloat16 are kept (accelerate places the tiny models on the CPU here);
    only the encoder's device moves to the CPU, because this machine has no GPU."""
    monkeypatch.setenv("AGENT_CIR_CACHE", str(tmp_path / "cache.sqlite"))
    original, swapped = swap_weights("local-gpu", tiny_models)
    assert original["encoder"]["model"] == "ViT-L-14" and original["encoder"]["device"] == "cuda"
    assert {entry["device_map"] for entry in original["models"].values()} == {"auto"}
    import torch

    if not torch.cuda.is_available():
        swapped["encoder"].update(device="cpu", precision="fp32")
    _only_weights_differ(original, swapped)
    _run_through_every_stage(swapped, tmp_path, images=2)


def test_recipes_name_models_of_the_architectures_the_tests_build():
    """A recipe edit that names another model must come with a tiny stand-in of its architecture."""
    for name in ("local", "local-gpu"):
        for entry in load_recipe(name).models.values():
            backend, _, hub_id = entry.spec.partition(":")
            assert backend in ("hf", "hf-vlm") and ARCHITECTURE_OF[hub_id] in BUILDERS, entry.spec
