"""The method parsers read hostile model output without raising: CoTMR's object lists, ImageScope's propositions
and its evaluator's answer line, CoTRR's labelled images at the message level."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_cir.backends.messages import to_langchain_messages
from agent_cir.rerank.cotrr import candidate_labels
from agent_cir.rerank.pairwise import evaluator_says_yes
from agent_cir.stages.multigrain import MAX_OBJECT_CHARS, parse_target_objects
from agent_cir.stages.predicates import MAX_PROPOSITIONS, answered_yes, parse_propositions

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=25,
)


def _check_objects(present: list[str], absent: list[str], limit: int) -> None:
    for phrases in (present, absent):
        assert isinstance(phrases, list) and len(phrases) <= limit
        assert all(isinstance(p, str) and p and len(p) <= MAX_OBJECT_CHARS for p in phrases)
        assert all(ch.isprintable() for p in phrases for ch in p)
        assert len({p.lower() for p in phrases}) == len(phrases)
    assert not {p.lower() for p in present} & {a.lower() for a in absent}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_any_text_gives_two_bounded_object_lists(raw: str) -> None:
    _check_objects(*parse_target_objects(raw, limit=5), limit=5)


@settings(max_examples=200, deadline=None)
@given(present=_json_values, absent=_json_values, noise=st.text(max_size=40), fenced=st.booleans())
def test_any_json_shape_under_the_object_keys_is_read_safely(present, absent, noise, fenced) -> None:
    body = json.dumps({"target_description": "x", "present_objects": present, "absent_objects": absent})
    raw = f"{noise}\n```json\n{body}\n```" if fenced else noise + body
    found_present, found_absent = parse_target_objects(raw, limit=4)
    _check_objects(found_present, found_absent, limit=4)
    if isinstance(present, list) and all(isinstance(p, str) and p.strip(" .,;:\"'`*-") and p.isprintable()
                                         and len(p) < 40 for p in present):
        # plain phrases come back (cleaned, deduplicated, at most the limit)
        expected = []
        for p in present:
            cleaned = " ".join(p.split()).strip(" .,;:\"'`*-")
            if cleaned and cleaned.lower() not in {e.lower() for e in expected}:
                expected.append(cleaned)
        assert found_present == expected[:4]


def test_objects_in_other_spellings_and_shapes() -> None:
    assert parse_target_objects('{"existent_objects": [{"name": "a red car"}], "nonexistent_objects": "tree, tree"}') \
        == (["a red car"], ["tree"])
    assert parse_target_objects('{"present_objects": ["Dog"], "absent_objects": ["dog", "cat"]}') == (["Dog"], ["cat"])
    assert parse_target_objects('{"present_objects": "none", "absent_objects": []}') == ([], [])
    assert parse_target_objects("no json at all") == ([], [])
    assert parse_target_objects(None) == ([], [])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_any_text_gives_bounded_propositions(raw: str) -> None:
    parsed = parse_propositions(raw)
    assert len(parsed.propositions) <= MAX_PROPOSITIONS and parsed.dropped >= 0
    assert all(p.question and isinstance(p.expected, bool) for p in parsed.propositions)


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(_json_values, max_size=12))
def test_any_question_list_keeps_exactly_the_valid_pairs(entries) -> None:
    parsed = parse_propositions(json.dumps({"step1": [], "questions": entries}))
    assert len(parsed.propositions) <= MAX_PROPOSITIONS
    assert len({p.question for p in parsed.propositions}) == len(parsed.propositions)
    for proposition in parsed.propositions:
        assert any(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                   and " ".join(e[0].split()) == proposition.question for e in entries)


def test_proposition_answers_in_the_forms_models_write() -> None:
    raw = ('```json\n{"step2": [["Is there a dog?", "True"], ["Is there a cat?", "False."], ["Q?", "(True)"], '
           '["Two?", true], ["Bad?", "perhaps"], ["only one"], {"question": "Red?", "answer": "no"}]}\n```')
    parsed = parse_propositions(raw)
    assert [(p.question, p.expected) for p in parsed.propositions] == [
        ("Is there a dog?", True), ("Is there a cat?", False), ("Q?", True), ("Two?", True), ("Red?", False)]
    assert parsed.dropped == 2


def test_imagescope_reads_yes_anywhere_in_a_predicate_answer_and_the_evaluator_line() -> None:
    assert answered_yes("Yes.") and answered_yes(" well, YES") and not answered_yes("No.") and not answered_yes(None)
    assert evaluator_says_yes("ANSWER: Yes\nbecause") is True
    assert evaluator_says_yes("answer: **no**\nthe dog is missing") is False
    assert evaluator_says_yes("Answer:[Yes]") is True
    assert evaluator_says_yes("I think yes") is None and evaluator_says_yes("") is None


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_any_evaluator_answer_is_yes_no_or_none(raw: str) -> None:
    assert evaluator_says_yes(raw) in (True, False, None)


def test_labelled_images_follow_their_labels_after_the_text() -> None:
    labels = ["Reference Image:"] + candidate_labels(2)
    messages = to_langchain_messages([("system", "s"), ("user", "the prompt")], ["u0", "u1", "u2"], labels)
    blocks = messages[-1].content
    assert [b["type"] for b in blocks] == ["text", "text", "image_url", "text", "image_url", "text", "image_url"]
    assert [b.get("text") or b["image_url"]["url"] for b in blocks] == [
        "the prompt", "Reference Image:", "u0", "Candidate Images:\nImage 1:", "u1", "Image 2:", "u2"]
    # without labels: as before, images first
    plain = to_langchain_messages([("user", "t")], ["u0"])[-1].content
    assert [b["type"] for b in plain] == ["image_url", "text"]
