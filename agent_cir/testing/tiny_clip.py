"""Tiny random CLIP encoders, built offline: a tiny ViT in open_clip's JSON config format
(``write_tiny_open_clip_config``) and a transformers CLIPModel + CLIPProcessor (``build_tiny_hf_clip``) on a
character-level BPE (``tiny_clip_vocab``). torch / transformers are imported inside the builders.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

# A byte-level BPE vocabulary with no merges: every character is a token. Enough for a working CLIPTokenizer.
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _bytes_to_unicode() -> list[str]:
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = visible[:]
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def tiny_clip_vocab() -> dict[str, int]:
    """A character-level CLIP BPE vocabulary (no merges needed): every byte, as a word piece and a word end."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + _SPECIAL
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_open_clip_config(path: Path) -> Path:
    """A tiny ViT + tiny text transformer in open_clip's model-config JSON format (random init)."""
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG), encoding="utf-8")
    return path


def build_tiny_hf_clip(folder: Path) -> Path:
    """A tiny random transformers CLIPModel + CLIPProcessor saved with save_pretrained, built offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = tiny_clip_vocab()
    vocab_size = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=24)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 24,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
