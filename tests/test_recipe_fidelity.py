"""Paper recipes against their official code (issue 19): settings that change what a recipe computes."""

from __future__ import annotations

import pytest

from agent_cir.config import RewriteConfig, load_recipe
from agent_cir.stages.rewrite import RewriteStage
from agent_cir.types import Query, QueryState
from tests.fixtures.chat import fake_model

MODIFICATION = "make it two cats on the grass"


def _state(captions: list[str]) -> QueryState:
    state = QueryState(query=Query(id="q1", text=MODIFICATION))
    state.captions = list(captions)
    return state


@pytest.mark.parametrize("raw", ["I cannot help with that.", "", '{"target_descriptions": []}'])
def test_reference_caption_fallback_uses_the_reference_caption_like_imagescope(raw: str) -> None:
    """ImageScope (imagescope.py:290-304): no target description -> the reference image's description."""
    state = _state(["  a dog on a sofa.  ", "another caption"])
    record = RewriteStage(RewriteConfig(fallback="reference_caption"), fake_model([raw])).run(state)
    assert state.target_descriptions == ["a dog on a sofa."]
    assert state.description_source == "fallback" == record.parse_status
    assert any("reference caption" in note for note in record.notes)


def test_reference_caption_fallback_without_a_caption_keeps_the_modification() -> None:
    state = _state(["   "])
    RewriteStage(RewriteConfig(fallback="reference_caption"), fake_model(["no json"])).run(state)
    assert state.target_descriptions == [MODIFICATION]


def test_default_fallback_is_still_the_modification_text() -> None:
    state = _state(["a dog on a sofa."])
    RewriteStage(RewriteConfig(), fake_model(["no json"])).run(state)
    assert state.target_descriptions == [MODIFICATION]


def test_imagescope_recipe_uses_the_official_laion_weights_and_caption_fallback() -> None:
    recipe = load_recipe("imagescope")
    # ImageScope readme: laion/CLIP-ViT-L-14-laion2B-s32B-b82K
    assert (recipe.encoder.model, recipe.encoder.pretrained) == ("ViT-L-14", "laion2b_s32b_b82k")
    assert recipe.rewrite.fallback == "reference_caption"
    assert load_recipe("cirevl").rewrite.fallback == "modification"


def test_cirevl_captioner_decodes_with_lavis_blip2_t5_defaults() -> None:
    vlm = load_recipe("cirevl").models["vlm"]
    # LAVIS blip2_t5.generate: num_beams=5, max_length=30 passed as max_new_tokens
    assert (vlm.num_beams, vlm.max_tokens) == (5, 30)


def test_hf_vlm_num_beams_reaches_generate_and_gives_the_beam_search_answer(tiny_model_dir, monkeypatch) -> None:
    import base64
    import io

    import torch
    from langchain_core.messages import HumanMessage
    from PIL import Image

    from agent_cir.backends import create_chat_model
    from agent_cir.config import ModelConfig
    from tests.fixtures.tiny_models import spec_for

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    block = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}
    conversation = [HumanMessage(content=[block, {"type": "text", "text": "a photo of"}])]
    handle = create_chat_model(ModelConfig(spec=spec_for("blip2", tiny_model_dir("blip2")), num_beams=3, max_tokens=6))
    model = handle.chat.weights.model
    seen: list[dict] = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or original(**kw))
    answer = handle.chat.invoke(conversation).content
    assert seen[-1]["num_beams"] == 3 and seen[-1]["max_new_tokens"] == 6 and seen[-1]["do_sample"] is False
    inputs = handle.chat.prepare_inputs(conversation)
    with torch.no_grad():
        expected_ids = original(**inputs, num_beams=3, max_new_tokens=6, do_sample=False)
    expected = handle.chat.weights.processor.tokenizer.decode(expected_ids[0], skip_special_tokens=True)
    assert answer == expected.strip()
    # beam search is part of the cache identity, so greedy answers are never reused for it
    greedy = create_chat_model(ModelConfig(spec=spec_for("blip2", tiny_model_dir("blip2")), max_tokens=6))
    assert handle.fingerprint.get("num_beams") == 3 and "num_beams" not in greedy.fingerprint
