"""The simulated-user protocol of benchmarks/dialogue.py with scripted models: the user sees only the target's
captions (never its id, the reference or the query), copied caption n-grams are stripped before the agent sees
an answer, and recall is counted per turn."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_cir.pipeline import Pipeline
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.types import Query
from tests.fixtures.chat import fake_model

ROOT = Path(__file__).resolve().parent.parent


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("dialogue_benchmark", ROOT / "benchmarks" / "dialogue.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("dialogue_benchmark", module)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()

CAPTIONS = {
    "dev-1-target": ["two brown dogs run across a sunny beach", "a pair of dogs on the sand by the sea"],
    "dev-2-ref": ["a brown dog sleeping on a sofa"],
    "dev-3-other": ["a cat sitting on a sunny window sill"],
    "dev-4-other": ["two dogs playing in the snow"],
}


def _text(messages) -> str:
    return "\n".join(str(m.content) for m in messages)


def _agent(messages) -> str:
    user = str(messages[-1].content)
    if "Requests so far" in user:
        return "Where are the dogs?"
    requests = re.findall(r"^- (?:asked \".*\", the user answered: )?(.*)$", user, re.M)
    return json.dumps({"reasoning": "x", "target_description": " ".join(requests)})


def _copying_user(messages) -> str:
    """Copies the target's first caption verbatim, plus a few words of its own."""
    described = str(messages[-1].content).split("looking for:")[-1].split("Question:")[0].strip()
    return f"on a beach, {described}"


def _setup(bow_encoder):
    recipe = {"name": "dialogue-bench-test", "models": {"llm": {"spec": "fake:llm"}},
              "rewrite": {"enabled": True, "model": "llm", "structured_output": False},
              "retrieve": {"mode": "text", "k": 4, "text_source": "target+modification"},
              "cache": {"enabled": False}, "session": {"rejected_per_turn": 0}}
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    agent = fake_model(respond=_agent)
    pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder, models={"llm": agent})
    return pipe, agent


def test_the_simulated_user_sees_only_the_target_captions_and_copies_are_stripped(bow_encoder):
    pipe, agent = _setup(bow_encoder)
    user_model = fake_model(respond=_copying_user, name="user")
    user = bench.SimulatedUser(user_model)
    query = Query(id="q7", text="two of them on a beach", reference_id="dev-2-ref",
                  reference_caption=CAPTIONS["dev-2-ref"][0])
    record = bench.run_dialogue(pipe, user, query, "dev-1-target", CAPTIONS["dev-1-target"], turns=2)

    assert len(record["ranks"]) == 3 and user.calls == 2
    for messages in user_model.chat.received:
        seen = _text(messages)
        assert "dev-1-target" not in seen and "q7" not in seen  # never the target id or the query id
        assert "sleeping on a sofa" not in seen and "two of them" not in seen  # nor the reference or the query
        assert "two brown dogs run across a sunny beach" in seen  # the target's captions are all it knows
    for exchange in record["exchanges"]:
        assert exchange["copied_share"] > 0.5
        assert bench.copied_share(exchange["answer"], CAPTIONS["dev-1-target"]) == 0.0
    # what the agent received from the user is the stripped answer, never the caption
    # (the question prompt may list the captions of the agent's own top results: that is the agent's knowledge)
    answered = [line for m in agent.chat.received for line in _text(m).splitlines() if "the user answered:" in line]
    assert answered and all(line.endswith("the user answered: on a beach,") for line in answered)


def test_recall_per_turn_counts_ranks_up_to_k():
    records = [{"ranks": [1, 1, 1]}, {"ranks": [12, 5, None]}, {"ranks": [None, 30, 2]}]
    rows = bench.recall_table(records, turns=2)
    assert [(r["R@1"], r["R@10"]) for r in rows] == [(33.33, 33.33), (33.33, 66.67), (33.33, 66.67)]


def test_an_answer_made_only_of_caption_words_is_skipped_not_sent(bow_encoder):
    pipe, agent = _setup(bow_encoder)
    user = bench.SimulatedUser(fake_model(responses=["two brown dogs run across a sunny beach"], name="parrot"))
    query = Query(id="q8", text="two of them on a beach", reference_id="dev-2-ref",
                  reference_caption=CAPTIONS["dev-2-ref"][0])
    record = bench.run_dialogue(pipe, user, query, "dev-1-target", CAPTIONS["dev-1-target"], turns=1)
    assert record["exchanges"][0]["skipped"] and record["ranks"][1] == record["ranks"][0]


words = st.sampled_from("a two dog dogs brown run on the beach sunny sand sea cat red".split())


@settings(max_examples=200, deadline=None)
@given(st.lists(words, max_size=25), st.lists(st.lists(words, min_size=1, max_size=12), min_size=1, max_size=3),
       st.integers(min_value=2, max_value=5))
def test_stripping_leaves_no_shared_ngram(answer, captions, n):
    caption_texts = [" ".join(c) for c in captions]
    stripped = bench.strip_copied(" ".join(answer), caption_texts, n)
    assert bench.copied_share(stripped, caption_texts, n) == 0.0
    assert set(stripped.split()) <= set(answer)
