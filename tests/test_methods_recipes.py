"""The imagescope, cotrr and cotmr recipes as shipped, end to end offline: their models swapped for scripted
fakes that answer from what they are shown (images decoded from the messages), every stage in the typed trace."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import BaseMessage
from PIL import Image

from agent_cir.config import load_recipe
from agent_cir.hashing import content_hash
from agent_cir.pipeline import Pipeline
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.types import Query
from tests.fixtures.chat import fake_model
from tests.fixtures.rerank import images_in

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20),
           "black": (5, 5, 5), "white": (250, 250, 250), "purple": (140, 20, 160), "orange": (240, 130, 10),
           "grey": (128, 128, 128), "cyan": (20, 220, 220), "pink": (250, 160, 190), "brown": (120, 70, 20)}


def _colour_name(image: Image.Image) -> str:
    pixel = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.abs(pixel - np.asarray(COLOURS[name])).sum()))


def _text(messages: list[BaseMessage]) -> str:
    parts = []
    for message in messages:
        content = message.content
        for block in content if isinstance(content, list) else [content]:
            parts.append(block if isinstance(block, str) else str(block.get("text", "")))
    return "\n".join(parts)


def _image_gallery(folder: Path, names: list[str], encoder: Any) -> RetrievalGallery:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        Image.new("RGB", (40, 32), COLOURS[name]).save(path)
        paths.append(path)
    # embeddings from each item's caption, so that the bag-of-words texts retrieve a known order
    embeddings = encoder.encode_texts([f"a {name} square" for name in names])
    return RetrievalGallery(ids=[p.stem for p in paths], paths=[str(p) for p in paths],
                            hashes=[content_hash(p) for p in paths], image_embeddings=embeddings)


# ------------------------------------------------------------------------------------------------ imagescope


def test_the_imagescope_recipe_runs_its_three_stages_offline(tmp_path, bow_encoder) -> None:
    names = ["red", "green", "blue", "yellow", "black", "white"]
    gallery = _image_gallery(tmp_path / "gallery", names, bow_encoder)
    gallery = gallery.with_captions({name: [f"a {name} square"] for name in names}, bow_encoder)
    reference = tmp_path / "reference.png"
    Image.new("RGB", (40, 32), COLOURS["purple"]).save(reference)
    recipe = load_recipe("imagescope", {"cache": {"enabled": False}, "predicates": {"k": 5}})
    # retrieval ranks red, green, blue, yellow ... (the descriptions name them in that order of weight)
    rewrite = json.dumps({"reasoning": "r", "target_descriptions": ["a red square", "a red square", "a red square"]})
    propositions = json.dumps({"statements": ["the square is blue", "there is no red"],
                               "questions": [["Is the square blue?", "True"], ["Is there anything red?", "False"],
                                             ["not a pair"], ["Bad answer?", "maybe"]]})
    llm_prompts: list[str] = []

    def llm(messages: list[BaseMessage]) -> str:
        text = _text(messages)
        llm_prompts.append(text)
        return f"Here you go:\n```json\n{propositions}\n```" if "yes/no checks" in text else rewrite

    def verifier(messages: list[BaseMessage]) -> str:
        colour = _colour_name(images_in(messages)[0])
        text = _text(messages)
        if "blue" in text:
            return "Yes." if colour in ("blue", "green") else "No."
        return "yes, there is" if colour == "red" else "no"

    evaluations: list[str] = []

    def evaluator(messages: list[BaseMessage]) -> str:
        pair = images_in(messages)
        assert len(pair) == 1  # ONE image: reference | candidate side by side
        left = pair[0].crop((0, 0, 100, 100))
        right = pair[0].crop((pair[0].width - 100, 0, pair[0].width, 100))
        assert _colour_name(left) == "purple"
        evaluations.append(_colour_name(right))
        return "answer: **Yes**\nit is blue" if _colour_name(right) == "blue" else "ANSWER: No\nnot it"

    models = {"vlm": fake_model(["a purple square"]), "llm": fake_model(respond=llm),
              "verifier": fake_model(respond=verifier), "evaluator": fake_model(respond=evaluator)}
    pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder, models=models, use_index_encoder=True)
    result = pipe.run(Query(id="is", text="make it blue", image=str(reference)))
    trace = result.trace
    assert [s.stage for s in trace.stages] == ["caption", "rewrite", "retrieve", "predicates", "rerank"]
    retrieved = [c.id for c in trace.stage("retrieve").output.candidates][:5]
    predicates = trace.stage("predicates")
    assert [(p.question, p.expected) for p in predicates.output.propositions] == [
        ("Is the square blue?", True), ("Is there anything red?", False)]
    assert predicates.output.dropped == 2 and predicates.parse_status == "repaired"
    satisfied = {c.id: c.satisfied for c in predicates.output.candidates}
    expected_scores = {"blue": 2, "green": 2, "red": 0}
    assert all(satisfied[name] == expected_scores.get(name, 1) for name in retrieved)
    # stable sort by matches: the two-match candidates first, in their retrieval order, red last
    by_score = sorted(retrieved, key=lambda name: -expected_scores.get(name, 1))
    assert predicates.output.final_order == by_score
    assert len(predicates.calls) == 1 + 5 * 2  # one proposition call, then 5 candidates x 2 questions
    assert "make it blue" in llm_prompts[-1]  # the modification verbatim
    # stage 3: the top 3 in order until the first yes; blue (second) moves to rank 1, nothing after it is asked
    assert by_score[:2] == ["green", "blue"]
    rerank = trace.stage("rerank")
    assert rerank.output.judge == "pairwise" and len(rerank.calls) == 2 and evaluations == ["green", "blue"]
    assert [c.id for c in result.candidates[:5]] == ["blue", "green"] + by_score[2:5]
    assert "Is the square blue?" in _report_text(tmp_path, result.trace)


def _report_text(tmp_path: Path, trace: dict[str, Any]) -> str:
    """All HTML of the report built from this one trace (the stages appear there like the built-in ones)."""
    from agent_cir.report.build import build_report
    from agent_cir.trace.io import TraceWriter

    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        writer.write(trace)
    out = build_report(traces, tmp_path / "report").parent
    return "\n".join(page.read_text() for page in out.rglob("*.html"))


# ------------------------------------------------------------------------------------------------ cotrr


def test_the_cotrr_recipe_shows_labelled_separate_images_and_follows_the_listwise_answer(tmp_path, bow_encoder):
    names = list(COLOURS)[:11]
    gallery = _image_gallery(tmp_path / "gallery", names, bow_encoder)
    reference = tmp_path / "ref.png"
    Image.new("RGB", (40, 32), COLOURS["brown"]).save(reference)
    recipe = load_recipe("cotrr", {"cache": {"enabled": False}})
    seen: list[list[Any]] = []

    def judge(messages: list[BaseMessage]) -> str:
        blocks = messages[-1].content
        seen.append(blocks)
        images = images_in(messages)
        colours = [_colour_name(image) for image in images]
        assert colours[0] == "brown"  # the reference first
        shown = colours[1:]
        wanted = ["pink", "white", "green"]
        order = [shown.index(c) + 1 for c in wanted] + [99, 1]  # out of range and repeated: repaired
        return "1. Reference: a square.\n2. ...\nFinal Answer:\n" + json.dumps({"ranking": order, "CoT": "pink best"})

    models = {"vlm": fake_model(["a brown square"]),
              "llm": fake_model([json.dumps({"reasoning": "r", "target_description": "a red square"})]),
              "judge": fake_model(respond=judge)}
    pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder, models=models, use_index_encoder=True)
    result = pipe.run(Query(id="c", text="make it pink", image=str(reference)))
    trace = result.trace
    assert [s.stage for s in trace.stages] == ["caption", "rewrite", "retrieve", "rerank"]
    rerank = trace.stage("rerank")
    assert rerank.output.judge == "cotrr" and len(rerank.calls) == 1 and rerank.output.k == 10
    blocks = seen[0]
    texts = [b["text"] for b in blocks if b.get("type") == "text"]
    kinds = [b.get("type") for b in blocks]
    # prompt text first, then "Reference Image:" + image, then "Candidate Images:\nImage 1:" + image, "Image 2:" ...
    assert kinds[0] == "text" and "make it pink" in texts[0]
    assert kinds[1:] == ["text", "image_url"] * 11
    assert texts[1] == "Reference Image:" and texts[2] == "Candidate Images:\nImage 1:" and texts[3] == "Image 2:"
    head = [c.id for c in trace.stage("retrieve").output.candidates][:10]
    top = [c.id for c in result.candidates[:10]]
    assert top[:3] == [n for n in ["pink", "white", "green"] if n in head]
    first = head[0]
    assert top[3] == (first if first not in top[:3] else top[3])
    assert sorted(top) == sorted(head) and result.ordered_by == "judge"
    assert rerank.parse_status == "repaired"


# ------------------------------------------------------------------------------------------------ cotmr


def _independent_mgs(caption: np.ndarray, present: list[np.ndarray], absent: list[np.ndarray],
                     image: np.ndarray, w_present: float, w_absent: float) -> float:
    """S(v) = cos(t, v) + w+ * (1/|O+|) sum cos(o, v) - w- * (1/|O-|) sum cos(o, v), written term by term."""
    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(sum(x * y for x, y in zip(a, b)) / (np.sqrt(sum(x * x for x in a)) * np.sqrt(sum(y * y for y in b))))

    score = cos(caption, image)
    if present:
        score += w_present * sum(cos(o, image) for o in present) / len(present)
    if absent:
        score -= w_absent * sum(cos(o, image) for o in absent) / len(absent)
    return score


@pytest.mark.parametrize("chunk", [8192, 2])
def test_the_cotmr_recipe_scores_the_ranking_with_caption_and_objects(tmp_path, bow_encoder, monkeypatch,
                                                                       chunk) -> None:
    monkeypatch.setattr("agent_cir.stages.multigrain.SCORE_CHUNK", chunk)  # scored in slices: the same result
    items = {"dog_grass": "a dog on green grass", "dog_cat_grass": "a dog and a cat on green grass",
             "cat_sofa": "a cat on a sofa", "dog_sofa": "a dog on a sofa", "grass": "green grass in a park"}
    ids = list(items)
    gallery = RetrievalGallery(ids=ids, paths=[None] * len(ids), hashes=[f"h{i}" for i in range(len(ids))],
                               image_embeddings=bow_encoder.encode_texts([items[i] for i in ids]))
    reference = tmp_path / "ref.png"
    Image.new("RGB", (40, 32), COLOURS["grey"]).save(reference)
    answer = ('Reasoning first. {"reasoning": "the cat becomes a dog", "target_description": "a dog and a cat on '
              'green grass", "present_objects": ["dog", " grass\\u0007 ", "dog"], "absent_objects": "cat, sofa"}')
    lvlm = fake_model([answer])
    recipe = load_recipe("cotmr", {"cache": {"enabled": False}})
    pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder, models={"lvlm": lvlm},
                                use_index_encoder=True)
    result = pipe.run(Query(id="m", text="replace the cat with a dog on grass", image=str(reference)))
    trace = result.trace
    assert [s.stage for s in trace.stages] == ["one_stage", "retrieve", "multigrain"]
    output = trace.stage("multigrain").output
    assert output.present_objects == ["dog", "grass"] and output.absent_objects == ["cat", "sofa"]
    # the caption alone prefers the item that also has the cat; the objects demote it
    assert trace.stage("retrieve").output.candidates[0].id == "dog_cat_grass"
    encode = bow_encoder.encode_texts
    caption = encode(["a dog and a cat on green grass"])[0]
    present, absent = list(encode(["dog", "grass"])), list(encode(["cat", "sofa"]))
    expected = {i: _independent_mgs(caption, present, absent, v, 1.0, 1.0)
                for i, v in zip(ids, gallery.image_embeddings)}
    assert [c.id for c in result.candidates] == sorted(ids, key=lambda i: -expected[i])
    assert result.candidates[0].id == "dog_grass"
    assert all(abs(c.score - expected[c.id]) < 1e-6 for c in result.candidates)
    report = _report_text(tmp_path, result.trace)
    assert "absent_objects" in report and "cat, sofa" in report


def test_cotmr_without_objects_in_the_answer_scores_the_caption_alone(bow_encoder, tmp_path) -> None:
    items = {"a": "a dog on grass", "b": "a cat on a sofa", "c": "a dog on a sofa"}
    gallery = RetrievalGallery(ids=list(items), paths=[None] * 3, hashes=["h0", "h1", "h2"],
                               image_embeddings=bow_encoder.encode_texts(list(items.values())))
    reference = tmp_path / "ref.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(reference)
    recipe = load_recipe("cotmr", {"cache": {"enabled": False}})
    pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder, use_index_encoder=True,
                                models={"lvlm": fake_model(['{"target_description": "a dog on a sofa"}'])})
    result = pipe.run(Query(id="m", text="make it a dog", image=str(reference)))
    record = result.trace.stage("multigrain")
    assert record.parse_status == "fallback" and record.output.present_objects == []
    retrieve = result.trace.stage("retrieve").output.candidates
    assert [c.id for c in result.candidates] == [c.id for c in retrieve]


@pytest.mark.parametrize("name", ["imagescope", "cotrr", "cotmr"])
def test_recipe_describes_its_source_and_differences(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.mirrors and recipe.differences and "PROTOCOLS.md" in recipe.differences
    protocols = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOLS.md").read_text()
    assert re.search(rf"^### {name} — ", protocols, re.MULTILINE), f"docs/PROTOCOLS.md has no section for {name}"
