"""P(yes) of a local model for many questions in one padded forward: the same numbers as one question per forward
(left padding, attention mask, each row's own last token and positions), and exactly one forward per batch."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image

from agent_cir.backends import create_chat_model
from agent_cir.backends.logit_scoring import supports_yes_probability, yes_probabilities
from agent_cir.config import ModelConfig, RefineConfig, VerifyConfig
from agent_cir.prompts import load_prompt
from agent_cir.rerank.yes_no import ask_yes_no_many
from agent_cir.stages.verify import VerifyStage
from agent_cir.types import Candidate, Query, QueryState
from tests.fixtures.tiny_models import spec_for

CAPTIONS = ["a dog", "two red apples on a wooden table in the morning light", "a cat sleeping on a very old sofa",
            "snow", "a man riding a bicycle down a long empty road next to the sea at sunset, seen from above",
            "a blue car", "three birds on a wire", "an empty room", "a child holding a kite on a beach",
            "a bowl of soup"]


class _CountForward:
    """Counts forward passes of a torch module and the rows of each."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.rows = model, []

    def __enter__(self) -> list[int]:
        def hook(_module: Any, args: Any, kwargs: Any) -> None:
            ids = kwargs.get("input_ids")
            self.rows.append(int(ids.shape[0]) if ids is not None else -1)

        self.handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        return self.rows

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


def _questions(n: int) -> list[list[tuple[str, str]]]:
    prompt = load_prompt("verify_caption")
    return [prompt.render_messages(modification="make it a dog on grass", reference_caption="a cat",
                                   candidate_captions=[CAPTIONS[i % len(CAPTIONS)] * (1 + i % 3)]) for i in range(n)]


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_twenty_questions_in_one_forward_score_as_twenty_single_forwards(kind: str, share_prefix: bool,
                                                                         tiny_model_dir) -> None:
    """One padded forward of the 20 rows (share_prefix off), or the rows' common prefix once and one padded
    forward of their 20 suffixes (on): the same P(yes) as 20 single forwards, to 1e-4."""
    handle = create_chat_model(ModelConfig(spec=spec_for(kind, tiny_model_dir(kind)), batch_size=20))
    assert supports_yes_probability(handle)
    prompt = load_prompt("verify_caption")
    questions = _questions(20)
    model = handle.chat.weights.model
    with _CountForward(model) as single_rows:
        single = [yes_probabilities(handle, [q], prompt=prompt, batch_size=1)[0][1] for q in questions]
    with _CountForward(model) as batched_rows:
        scored = yes_probabilities(handle, questions, prompt=prompt, share_prefix=share_prefix)
    batched = [p for _, p in scored]
    assert single_rows == [1] * 20 and batched_rows == ([1, 20] if share_prefix else [20])
    assert max(abs(a - b) for a, b in zip(single, batched)) < 1e-4
    assert len({round(p, 6) for p in batched}) > 1  # the random model tells the questions apart
    assert all(call.params["batch_rows"] == 20 for call, _ in scored)


def test_padding_really_happens_and_is_on_the_left(tiny_model_dir) -> None:
    handle = create_chat_model(ModelConfig(spec=spec_for("llama", tiny_model_dir("llama")), batch_size=20))
    from agent_cir.backends.messages import to_langchain_messages

    inputs = handle.chat.prepare_inputs_many([to_langchain_messages(q) for q in _questions(3)])
    mask = inputs["attention_mask"]
    assert mask.shape[0] == 3 and (mask.sum(dim=1) < mask.shape[1]).any()  # rows of different lengths
    assert bool(mask[:, -1].all())  # every row ends at the last column: the padding is on the left


def test_each_row_is_read_at_its_own_last_token_whatever_the_padding_side(tiny_model_dir) -> None:
    """Right padding (a tokenizer someone changed): reading column -1 would read padding; our reader does not."""
    from agent_cir.backends.logit_scoring import last_token_logits
    from agent_cir.backends.messages import to_langchain_messages

    handle = create_chat_model(ModelConfig(spec=spec_for("llama", tiny_model_dir("llama")), batch_size=20))
    model, tokenizer = handle.chat.weights.model, handle.chat.weights.processor
    questions = [to_langchain_messages(q) for q in _questions(4)]
    alone = [last_token_logits(model, handle.chat.prepare_inputs_many([q]))[0] for q in questions]
    tokenizer.padding_side = "right"
    try:
        inputs = handle.chat.prepare_inputs_many(questions)
        with torch.inference_mode():
            naive = model(**inputs).logits[:, -1].float()
        ours = last_token_logits(model, handle.chat.prepare_inputs_many(questions))
    finally:
        tokenizer.padding_side = "left"
    short = int(inputs["attention_mask"].sum(dim=1).argmin())
    assert float((naive[short] - alone[short]).abs().max()) > 1e-3  # the naive read is wrong ...
    assert max(float((ours[i] - alone[i]).abs().max()) for i in range(4)) < 1e-4  # ... ours is not


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_vlm_candidates_with_images_batched_equal_single(tiny_model_dir, tmp_path) -> None:
    handle = create_chat_model(ModelConfig(spec=spec_for("idefics3", tiny_model_dir("idefics3")), batch_size=8))
    assert handle.backend == "hf-vlm" and supports_yes_probability(handle)
    prompt = load_prompt("verify_image")
    paths = []
    for i, (color, size) in enumerate([((200, 0, 0), (32, 40)), ((0, 0, 200), (48, 32)), ((0, 200, 0), (40, 40))]):
        path = tmp_path / f"c{i}.png"
        path.write_bytes(_png(color, size))
        paths.append(str(path))
    questions = [prompt.render_messages(modification="make it " + "very " * i + "green", reference_caption=None,
                                        has_reference=False) for i in range(3)]
    images = [[p] for p in paths]
    model = handle.chat.weights.model
    single = [yes_probabilities(handle, [q], prompt=prompt, images=[i], batch_size=1)[0][1]
              for q, i in zip(questions, images)]
    with _CountForward(model) as rows:
        batched = [p for _, p in yes_probabilities(handle, questions, prompt=prompt, images=images)]
    assert len(rows) == 1
    assert max(abs(a - b) for a, b in zip(single, batched)) < 1e-4


def test_verify_stage_scores_its_twenty_candidates_in_one_forward(tiny_model_dir) -> None:
    handle = create_chat_model(ModelConfig(spec=spec_for("llama", tiny_model_dir("llama")), batch_size=32))
    captions = {f"g{i}": [CAPTIONS[i % len(CAPTIONS)] + f" number {i}"] for i in range(20)}
    stage = VerifyStage(VerifyConfig(enabled=True, input="caption", k=20), handle, None,
                        refine=RefineConfig(enabled=False), candidate_captions=captions)
    state = QueryState(query=Query(id="q", text="make it a dog", reference_caption="a cat"))
    state.candidates = [Candidate(f"g{i}", 1.0 - i / 100, None, i + 1) for i in range(20)]
    with _CountForward(handle.chat.weights.model) as rows:
        record = stage.run(state)
    assert rows == [1, 20]  # the shared instructions once, then the 20 candidates' own tokens in one forward
    items = record.output.items
    assert len(items) == 20 and {item.source for item in items} == {"logits"}
    assert all(0.0 <= item.confidence <= 1.0 for item in items)
    # the same verdicts as one question at a time
    prompt = load_prompt("verify_caption")
    questions = [prompt.render_messages(modification="make it a dog", reference_caption="a cat",
                                        candidate_captions=captions[f"g{i}"]) for i in range(20)]
    alone = [v.confidence for v in ask_yes_no_many(handle, questions[:3], prompt=prompt)]
    assert [round(a, 4) for a in alone] == [round(item.confidence, 4) for item in items[:3]]


def test_predicates_with_auto_scoring_ask_every_candidate_and_question_in_one_forward(tiny_model_dir, tmp_path):
    """ImageScope's stage 2 on a local VLM: k candidates x n propositions as P(yes), one batched forward."""
    import json

    from agent_cir.config import PredicatesConfig
    from agent_cir.stages.predicates import PredicatesStage
    from tests.fixtures.chat import fake_model

    verifier = create_chat_model(ModelConfig(spec=spec_for("idefics3", tiny_model_dir("idefics3")), batch_size=16))
    reasoner = fake_model([json.dumps({"questions": [["Is it red?", "True"], ["Is there a dog?", "False"]]})])
    stage = PredicatesStage(PredicatesConfig(enabled=True, k=3, scoring="auto"), verifier, reasoner)
    candidates = []
    for i, colour in enumerate([(200, 0, 0), (0, 0, 200), (0, 200, 0)]):
        path = tmp_path / f"c{i}.png"
        path.write_bytes(_png(colour, (32, 32)))
        candidates.append(Candidate(f"c{i}", 1.0 - i / 10, str(path), i + 1))
    state = QueryState(query=Query(id="q", text="make it red"))
    state.candidates = candidates
    with _CountForward(verifier.chat.weights.model) as rows:
        record = stage.run(state)
    assert rows == [6]
    assert len(record.calls) == 1 + 6 and all(c.params.get("batch_rows") == 6 for c in record.calls[1:])
    output = record.output
    assert [len(c.answers) for c in output.candidates] == [2, 2, 2]
    assert sorted(output.final_order) == ["c0", "c1", "c2"]


def test_a_model_whose_cache_cannot_be_shared_gets_the_plain_batched_forward(tiny_model_dir, monkeypatch) -> None:
    import agent_cir.backends.logit_scoring as logit_scoring

    def cannot(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("this cache type cannot be repeated over rows")

    handle = create_chat_model(ModelConfig(spec=spec_for("llama", tiny_model_dir("llama")), batch_size=20))
    prompt = load_prompt("verify_caption")
    questions = _questions(5)
    expected = [p for _, p in yes_probabilities(handle, questions, prompt=prompt, share_prefix=False)]
    monkeypatch.setattr(logit_scoring, "shared_prefix_logits", cannot)
    with _CountForward(handle.chat.weights.model) as rows:
        got = [p for _, p in yes_probabilities(handle, questions, prompt=prompt)]
    assert rows == [5] and max(abs(a - b) for a, b in zip(got, expected)) < 1e-6
