"""In-process models (``hf:``, ``hf-vlm:``) of every architecture the embedded recipes name, as tiny random
models saved to a folder and loaded by path: text + image in, text out, and batched generation (LangChain
``batch``: one padded generate per ``batch_size`` conversations) giving the one-at-a-time answers under
greedy decoding. The real SmolLM2-135M GGUF checks the same equality on a trained model."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from PIL import Image

from agent_cir.backends import create_chat_model
from agent_cir.backends.errors import LocalModelError
from agent_cir.config import ModelConfig
from tests.fixtures.tiny_models import IMAGE_TOKENS, spec_for

VLM_KINDS = ("idefics3", "qwen2_vl", "qwen2_5_vl", "blip2")
ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "idefics3": "Idefics3ForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "blip2": "Blip2ForConditionalGeneration",
}


def _image_block(color: tuple[int, int, int], size: tuple[int, int]) -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}


COLOURS = [((220, 10, 10), (64, 48)), ((10, 10, 220), (30, 50)), ((10, 200, 10), (80, 80)), ((240, 240, 240), (40, 40)),
           ((120, 0, 120), (50, 30)), ((0, 0, 0), (45, 45))]
PROMPTS = ["describe the image", "caption the image in one sentence", "a red car parked near a tree, make it blue",
           "yes or no: is there a dog", "Ranking: 3, 1, 2", "replace the dog with a cat and make the scene at night"]


def _vision_conversations() -> list[list[BaseMessage]]:
    """Six conversations of different lengths, each with one image of its own."""
    return [[HumanMessage(content=[_image_block(*COLOURS[i]), {"type": "text", "text": PROMPTS[i]}])] for i in range(6)]


def _text_conversations() -> list[list[BaseMessage]]:
    return [[SystemMessage(content="you rewrite captions"), HumanMessage(content=text)] for text in PROMPTS]


class _CountGenerate:
    """Wraps a model's ``generate`` to record the batch size of every call."""

    def __init__(self, model: Any) -> None:
        self.model, self.original, self.rows = model, model.generate, []

    def __enter__(self) -> list[int]:
        def counting(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids")
            self.rows.append(int(ids.shape[0]) if ids is not None else int(kwargs["pixel_values"].shape[0]))
            return self.original(*args, **kwargs)

        self.model.generate = counting
        return self.rows

    def __exit__(self, *exc: Any) -> None:
        del self.model.generate  # back to the class method


def _assert_batched_equals_single(handle: Any, conversations: list[list[BaseMessage]]) -> list[Any]:
    single = [handle.chat.invoke(messages) for messages in conversations]
    with _CountGenerate(handle.chat.weights.model) as rows:
        batched = handle.chat.batch(conversations)
    assert [m.content for m in batched] == [m.content for m in single]
    assert [m.usage_metadata for m in batched] == [m.usage_metadata for m in single]
    assert all(m.content for m in single)  # the random model says something
    batch_size = handle.config.batch_size
    assert sorted(rows, reverse=True) == rows and sum(rows) == len(conversations)
    assert rows[0] == min(batch_size, len(conversations)) and len(rows) == -(-len(conversations) // batch_size)
    return batched


# ------------------------------------------------------------------------------------------- text: hf


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_tiny_text_model_by_path_batched_equals_single(kind: str, tiny_model_dir) -> None:
    folder = tiny_model_dir(kind)
    handle = create_chat_model(ModelConfig(spec=spec_for(kind, folder), max_tokens=6, batch_size=4))
    assert handle.backend == "hf" and handle.batches_natively and handle.chat.batch_size == 4
    assert type(handle.chat.weights.model).__name__ == ARCHITECTURES[kind]
    inputs = handle.chat.prepare_inputs(_text_conversations()[0])
    prompt = handle.chat.weights.processor.decode(inputs["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\nyou rewrite captions<|im_end|>") and prompt.endswith("assistant\n")
    _assert_batched_equals_single(handle, _text_conversations())


def test_batch_takes_langchain_inputs_and_sampling_is_reproducible(tiny_model_dir) -> None:
    folder = tiny_model_dir("qwen2")
    greedy = create_chat_model(ModelConfig(spec=f"hf:{folder}", max_tokens=5))
    as_strings = greedy.chat.batch(PROMPTS[:3])  # plain strings are user messages, as for invoke
    assert [m.content for m in as_strings] == [greedy.chat.invoke(p).content for p in PROMPTS[:3]]
    hot = create_chat_model(ModelConfig(spec=f"hf:{folder}", max_tokens=5, temperature=5.0, seed=11))
    first, second = hot.chat.batch(PROMPTS), hot.chat.batch(PROMPTS)
    assert [m.content for m in first] == [m.content for m in second]
    assert len({m.content for m in first}) > 1


def test_a_bad_conversation_fails_alone(tiny_model_dir) -> None:
    handle = create_chat_model(ModelConfig(spec=f"hf:{tiny_model_dir('qwen2')}", max_tokens=4, batch_size=8))
    image_to_text_model = [HumanMessage(content=[_image_block((1, 2, 3), (8, 8)), {"type": "text", "text": "hi"}])]
    conversations = [_text_conversations()[0], image_to_text_model, _text_conversations()[1]]
    answers = handle.chat.batch(conversations, return_exceptions=True)
    assert isinstance(answers[1], LocalModelError) and "text-only" in str(answers[1])
    assert answers[0].content == handle.chat.invoke(conversations[0]).content
    assert answers[2].content == handle.chat.invoke(conversations[2]).content
    with pytest.raises(LocalModelError, match="text-only"):
        handle.chat.batch(conversations)


def test_batch_reports_one_run_per_conversation_to_callbacks(tiny_model_dir) -> None:
    class Runs(BaseCallbackHandler):
        def __init__(self) -> None:
            self.started, self.ended = 0, []

        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            self.started += len(messages)

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            self.ended.append(response.generations[0][0].text)

    handle = create_chat_model(ModelConfig(spec=f"hf:{tiny_model_dir('qwen2')}", max_tokens=3))
    runs = Runs()
    answers = handle.chat.batch(PROMPTS[:4], config={"callbacks": [runs]})
    assert runs.started == 4 and runs.ended == [m.content for m in answers]


# ---------------------------------------------------------------------------------------- vision: hf-vlm


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_tiny_vlm_reads_the_image_and_batched_equals_single(kind: str, tiny_model_dir) -> None:
    folder = tiny_model_dir(kind)
    handle = create_chat_model(ModelConfig(spec=spec_for(kind, folder), max_tokens=6, batch_size=4))
    assert handle.backend == "hf-vlm" and type(handle.chat.weights.model).__name__ == ARCHITECTURES[kind]
    conversations = _vision_conversations()
    inputs = handle.chat.prepare_inputs(conversations[0])
    image_token = handle.chat.weights.model.config.image_token_id
    assert int((inputs["input_ids"] == image_token).sum()) == IMAGE_TOKENS
    # the pixels reach the model: two images under the same text give different next-token logits
    same_text = [[HumanMessage(content=[_image_block(*COLOURS[i]), {"type": "text", "text": "describe"}])] for i in (0, 1)]
    with torch.inference_mode():
        model = handle.chat.weights.model
        if kind == "blip2":  # encoder-decoder: score the first decoder position
            start = torch.tensor([[model.config.text_config.decoder_start_token_id]])
            logits = [model(**handle.chat.prepare_inputs(c), decoder_input_ids=start).logits[0, -1] for c in same_text]
        else:
            logits = [model(**handle.chat.prepare_inputs(c)).logits[0, -1] for c in same_text]
    assert not torch.allclose(logits[0], logits[1])
    answers = _assert_batched_equals_single(handle, conversations)
    assert all(0 < m.usage_metadata["output_tokens"] <= 6 for m in answers)


def test_vlm_batch_keeps_conversations_with_and_without_images_apart(tiny_model_dir) -> None:
    handle = create_chat_model(ModelConfig(spec=spec_for("qwen2_vl", tiny_model_dir("qwen2_vl")), max_tokens=4))
    conversations = _vision_conversations()[:3] + [[HumanMessage(content=p)] for p in PROMPTS[:2]]
    single = [handle.chat.invoke(c).content for c in conversations]
    with _CountGenerate(handle.chat.weights.model) as rows:
        batched = [m.content for m in handle.chat.batch(conversations)]
    assert batched == single and rows == [3, 2]


def test_vlm_with_two_images_in_one_conversation(tiny_model_dir) -> None:
    for kind in ("idefics3", "qwen2_vl"):
        handle = create_chat_model(ModelConfig(spec=spec_for(kind, tiny_model_dir(kind)), max_tokens=4))
        squares = [_image_block(*COLOURS[2]), _image_block(*COLOURS[3])]  # Qwen-VL keeps the aspect ratio
        two = [HumanMessage(content=[*squares, {"type": "text", "text": "which?"}])]
        one = _vision_conversations()[0]
        inputs = handle.chat.prepare_inputs(two)
        assert int((inputs["input_ids"] == handle.chat.weights.model.config.image_token_id).sum()) == 2 * IMAGE_TOKENS
        assert [m.content for m in handle.chat.batch([two, one])] == [handle.chat.invoke(c).content for c in (two, one)]


def test_blip2_takes_a_plain_prompt_and_exactly_one_image(tiny_model_dir) -> None:
    """CIReVL's captioner (BLIP-2 FlanT5): no chat template; the processor puts the query tokens first."""
    handle = create_chat_model(ModelConfig(spec=spec_for("blip2", tiny_model_dir("blip2")), max_tokens=5))
    chat = handle.chat
    assert chat.weights.model.config.text_config.model_type == "t5" and chat._is_encoder_decoder()
    assert getattr(chat.weights.processor, "chat_template", None) is None
    conversation = [SystemMessage(content="You caption photos."),
                    HumanMessage(content=[_image_block(*COLOURS[0]), {"type": "text", "text": "a photo of"}])]
    inputs = chat.prepare_inputs(conversation)
    tokenizer = chat.weights.processor.tokenizer
    text_ids = [t for t in inputs["input_ids"][0].tolist() if t != chat.weights.model.config.image_token_id]
    assert tokenizer.decode(text_ids, skip_special_tokens=True) == "You caption photos.\na photo of"
    answer = chat.invoke(conversation)
    assert answer.content and 0 < answer.usage_metadata["output_tokens"] <= 5
    with pytest.raises(LocalModelError, match="exactly one image"):
        chat.invoke([HumanMessage(content="no picture")])
    with pytest.raises(LocalModelError, match="exactly one image"):
        chat.invoke([HumanMessage(content=[_image_block(*COLOURS[0]), _image_block(*COLOURS[1])])])


# ------------------------------------------------------------------------------------ real SmolLM2 GGUF


@pytest.mark.slow
def test_smollm2_batched_answers_equal_one_at_a_time(smollm2_gguf: Path) -> None:
    handle = create_chat_model(ModelConfig(spec=f"hf:{smollm2_gguf}", max_tokens=16, num_threads=1, batch_size=4))
    questions = ["What colour is the sky?", "Name a fruit.", "Rewrite: a dog on a sofa -> make it a cat.",
                 "Say hello in French, and nothing else please."]
    single = [handle.chat.invoke(q).content for q in questions]
    with _CountGenerate(handle.chat.weights.model) as rows:
        batched = [m.content for m in handle.chat.batch(questions)]
    assert rows == [4]
    assert batched == single
    assert sum(len(answer.split()) for answer in single) > 8  # a trained model answers in words


def test_concurrent_invokes_are_answered_in_shared_generate_calls(tiny_model_dir, monkeypatch) -> None:
    """The pipeline calls a model from several threads at once: those calls share padded generates."""
    from concurrent.futures import ThreadPoolExecutor

    handle = create_chat_model(ModelConfig(spec=f"hf:{tiny_model_dir('qwen2')}", max_tokens=5, batch_size=4))
    conversations = _text_conversations() * 2
    alone = [handle.chat.invoke(c).content for c in conversations]  # one at a time: one generate each
    rows_per_call: list[int] = []
    original = type(handle.chat)._run_generate

    def counting(self, inputs, *args, **kwargs):
        rows_per_call.append(int(inputs["input_ids"].shape[0]))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(type(handle.chat), "_run_generate", counting)
    import time

    handle.chat._leader.acquire()  # the model is "busy": every call queues up, as during a long generate
    with ThreadPoolExecutor(max_workers=len(conversations)) as pool:
        futures = [pool.submit(lambda c=c: handle.chat.invoke(c).content) for c in conversations]
        deadline = time.monotonic() + 30
        while len(handle.chat._waiting) < len(conversations) and time.monotonic() < deadline:
            time.sleep(0.01)
        handle.chat._leader.release()
        together = [future.result() for future in futures]
    assert together == alone  # greedy: the same answers whatever the batch
    count = len(conversations)
    assert rows_per_call == [4] * (count // 4) + ([count % 4] if count % 4 else [])  # all waited: full batches
