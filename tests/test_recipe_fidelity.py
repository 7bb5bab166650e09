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
