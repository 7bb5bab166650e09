"""Tiny random-weight chat models of the architectures the embedded recipes name, built offline and saved
with ``save_pretrained`` so that they load by path exactly like downloaded ones (``hf:DIR`` / ``hf-vlm:DIR``).

Kinds (``TINY_KINDS``):
  ``qwen2``       Qwen2ForCausalLM (Qwen2.5-Instruct's architecture), ChatML template             -> ``hf:``
  ``llama``       LlamaForCausalLM (SmolLM2's architecture)                                         -> ``hf:``
  ``idefics3``    Idefics3ForConditionalGeneration + Idefics3Processor (SmolVLM-256M/500M-Instruct) -> ``hf-vlm:``
  ``qwen2_vl``    Qwen2VLForConditionalGeneration + Qwen2VLProcessor (Qwen2-VL-Instruct)            -> ``hf-vlm:``
  ``qwen2_5_vl``  Qwen2_5_VLForConditionalGeneration + its processor (Qwen2.5-VL-Instruct)          -> ``hf-vlm:``
  ``blip2``       Blip2ForConditionalGeneration with a T5 (FlanT5) language model + Blip2Processor  -> ``hf-vlm:``

Tokenizers are byte-level BPEs trained here on a few sentences (deterministic, no download), with each
family's special tokens; chat templates are short ChatML / SmolVLM-style templates. Weights are seeded: the
same kind always gives the same answers. Images are resized to a few patches, so every image costs 4 tokens.
torch / transformers / tokenizers are imported inside the builders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_KINDS = ("qwen2", "llama", "idefics3", "qwen2_vl", "qwen2_5_vl", "blip2")
TEXT_KINDS = frozenset({"qwen2", "llama"})
IMAGE_TOKENS = 4
"""Image tokens a square image becomes in every tiny VLM (Qwen-VL keeps the aspect ratio: elongated images
take a few more or fewer)."""

_CORPUS = [
    "a photo of a dog on a sofa", "a red car parked near a tree", "two cats sleeping on a bed",
    "the same scene but at night with lights", "replace the dog with a cat", "a woman holding an umbrella",
    "a plate of food on a wooden table", "make the shirt blue and remove the hat", "yes", "no",
    "Target description: a black cat on a grey sofa.", "Ranking: 3, 1, 2", "caption the image in one sentence",
    "you rewrite captions", "describe the image", "The answer is 1.", "0123456789 ,.:;!?()[]{}'\"-",
]

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SMOLVLM = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def byte_level_tokenizer(special_tokens: list[str], eos: str, pad: str, bos: str | None = None) -> Any:
    """A byte-level BPE (the kind Qwen2 and SmolLM use) trained offline on ``_CORPUS``; any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer)
    extra = [t for t in special_tokens if t not in (eos, pad, bos)]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=pad, bos_token=bos, additional_special_tokens=extra,
        model_max_length=2048,
    )


def _text_config(kind: str, vocab_size: int, **ids: Any) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, **ids,
    )


def _seeded(build: Callable[[], Any]) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


def _qwen_tokenizer(vision: bool) -> Any:
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if vision:
        special += ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = byte_level_tokenizer(special, eos="<|im_end|>", pad="<|endoftext|>")
    tokenizer.chat_template = _CHATML
    return tokenizer


def _build_text(kind: str, folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = _qwen_tokenizer(vision=False)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"))
    if kind == "qwen2":
        model = _seeded(lambda: Qwen2ForCausalLM(Qwen2Config(**_text_config(kind, len(tokenizer), **ids))))
    else:
        model = _seeded(lambda: LlamaForCausalLM(LlamaConfig(**_text_config(kind, len(tokenizer), **ids))))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_idefics3(folder: Path) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"],
        eos="<end_of_utterance>", pad="<|endoftext|>", bos="<|im_start|>",
    )
    image_size, patch_size, scale_factor = 32, 8, 2  # (32 / 8)^2 = 16 patches, pixel-shuffled by 2 -> 4 tokens
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
        ),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_TOKENS,
        chat_template=_SMOLVLM,
    )
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        text_config=_text_config("llama", len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _seeded(lambda: Idefics3ForConditionalGeneration(config))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _build_qwen_vl(kind: str, folder: Path) -> None:
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = _qwen_tokenizer(vision=True)
    patch, merge = 14, 2
    side = patch * merge * 2  # 56 x 56 pixels -> 4 x 4 patches -> merged 2 x 2 = 4 tokens
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch, merge_size=merge, temporal_patch_size=2, min_pixels=side * side, max_pixels=side * side,
    )
    # the processor insists on a video processor; these tests send images only
    video_processor = Qwen2VLVideoProcessor(patch_size=patch, merge_size=merge, temporal_patch_size=2)
    ids = dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    # head_dim 8 -> 4 rotary frequencies, split over (time, height, width) as [1, 1, 2]
    text = _text_config(kind, len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"))
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    if kind == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        config = Qwen2VLConfig(
            text_config=text,
            vision_config=dict(depth=1, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=2, patch_size=patch,
                               spatial_merge_size=merge, temporal_patch_size=2),
            **ids,
        )
        model = _seeded(lambda: Qwen2VLForConditionalGeneration(config))
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     video_processor=video_processor, chat_template=_CHATML)
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=37, num_heads=2, out_hidden_size=32,
                               patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[1]),
            **ids,
        )
        model = _seeded(lambda: Qwen2_5_VLForConditionalGeneration(config))
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=video_processor, chat_template=_CHATML)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _build_blip2(folder: Path) -> None:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tokenizer = byte_level_tokenizer(["<pad>", "</s>", "<image>"], eos="</s>", pad="<pad>")
    tokenizer.image_token = "<image>"  # Blip2Processor reads it (else it adds its own)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 30, "width": 30}), tokenizer=tokenizer,
        num_query_tokens=IMAGE_TOKENS,
    )
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=30, patch_size=15),
        qformer_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=64),
        text_config=dict(model_type="t5", vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=1,
                         num_decoder_layers=1, num_heads=4, is_encoder_decoder=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=False),
        num_query_tokens=IMAGE_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = _seeded(lambda: Blip2ForConditionalGeneration(config))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build_tiny_model(kind: str, folder: Path) -> Path:
    """Build the tiny ``kind`` model into ``folder`` (created) and return it."""
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; one of {', '.join(TINY_KINDS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind in TEXT_KINDS:
        _build_text(kind, folder)
    elif kind == "idefics3":
        _build_idefics3(folder)
    elif kind in ("qwen2_vl", "qwen2_5_vl"):
        _build_qwen_vl(kind, folder)
    else:
        _build_blip2(folder)
    return folder


def spec_for(kind: str, folder: Path) -> str:
    return f"{'hf' if kind in TEXT_KINDS else 'hf-vlm'}:{folder}"
