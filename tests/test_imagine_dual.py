"""Dual-path retrieval: each fusion rule ranks as its formula says, checked against implementations written
here from the formulas (docs/PROTOCOLS.md, agent_cir/retrieval/dual.py), not from the code under test."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_cir.config import RetrieveConfig, recipe_from_dict, ConfigError
from agent_cir.errors import AgentCirError
from agent_cir.retrieval.dual import rrf_fuse, twin_vectors, wiser_fusion
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.retrieval.ranking import Ranking
from agent_cir.stages.imagine import EditedImage
from agent_cir.stages.retrieve import RetrieveStage
from agent_cir.types import Query, QueryState
from tests.fixtures.pipeline import BagOfWordsEncoder

COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 10), (10, 200, 200), (200, 10, 200),
           (120, 120, 120), (250, 250, 250)]
WORDS = ["red apple", "green field", "blue sea", "yellow car", "cyan sky", "purple flower", "grey stone", "white snow"]


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _gallery(encoder: BagOfWordsEncoder, tmp_path: Path | None = None) -> RetrievalGallery:
    # Gallery vectors mix a word direction and a colour direction, so both paths matter.
    text = encoder.encode_texts(WORDS)
    images = encoder.encode_images([Image.new("RGB", (8, 8), c) for c in COLOURS])
    vectors = text + images
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item{i}.png" for i in range(len(WORDS))]
    paths: list[str | None] = [None] * len(ids)
    if tmp_path is not None:
        for i, colour in enumerate(COLOURS):
            (tmp_path / ids[i]).write_bytes(_png(colour))
        paths = [str(tmp_path / i) for i in ids]
    return RetrievalGallery(ids=ids, paths=paths, hashes=[None] * len(ids), image_embeddings=vectors.astype(np.float32))


def _state(description: str, colour: tuple[int, int, int]) -> QueryState:
    state = QueryState(query=Query(id="q", text="change it"))
    state.target_descriptions = [description]
    state.description_source = "rewrite"
    png = _png(colour)
    state.edited_image = EditedImage(png=png, sha256="x")
    return state


def _independent_scores(encoder, gallery, description, colour):
    t = encoder.encode_texts([description])[0]
    i = encoder.encode_images([Image.open(io.BytesIO(_png(colour))).convert("RGB")])[0]
    t, i = t / np.linalg.norm(t), i / np.linalg.norm(i)
    cos = lambda q: [float(np.dot(q, g) / np.linalg.norm(g)) for g in gallery.image_embeddings]  # noqa: E731
    return cos(t), cos(i)


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_mix_ranks_by_the_weighted_sum_of_the_two_cosines(weight: float) -> None:
    encoder = BagOfWordsEncoder()
    gallery = _gallery(encoder)
    stage = RetrieveStage(RetrieveConfig(mode="dual", dual_weight=weight, k=8, exclude_reference=False), encoder, gallery)
    state = _state("blue sea", (250, 10, 10))
    record = stage.run(state)
    text_cos, image_cos = _independent_scores(encoder, gallery, "blue sea", (250, 10, 10))
    expected = {gallery.ids[n]: (1 - weight) * text_cos[n] + weight * image_cos[n] for n in range(len(gallery.ids))}
    order = sorted(expected, key=lambda g: (-expected[g], gallery.ids.index(g)))
    got = [row.id for row in record.output.candidates]
    assert got == order
    for row in record.output.candidates:
        assert row.score == pytest.approx(expected[row.id], abs=1e-5)
    assert record.output.mode == "dual" and record.output.dual_weight == weight


def test_the_image_path_moves_the_ranking_towards_the_edited_picture() -> None:
    encoder = BagOfWordsEncoder()
    gallery = _gallery(encoder)
    text_only = RetrieveStage(RetrieveConfig(mode="dual", dual_weight=0.0, k=8), encoder, gallery).run(
        _state("blue sea", (250, 10, 10)))
    image_only = RetrieveStage(RetrieveConfig(mode="dual", dual_weight=1.0, k=8), encoder, gallery).run(
        _state("blue sea", (250, 10, 10)))
    assert text_only.output.candidates[0].id == "item2.png"  # the words
    assert image_only.output.candidates[0].id == "item0.png"  # the red picture


def _rrf_independent(text_ids, image_ids, weight, k):
    scores: dict[str, float] = {}
    for ids, share in ((text_ids, 1 - weight), (image_ids, weight)):
        for rank, gallery_id in enumerate(ids, start=1):
            scores[gallery_id] = scores.get(gallery_id, 0.0) + share / (k + rank)
    best = {g: min([r for r, x in enumerate(text_ids, 1) if x == g] + [r for r, x in enumerate(image_ids, 1) if x == g])
            for g in scores}
    return sorted(scores, key=lambda g: (-scores[g], best[g], int(g[4:-4]))), scores


def test_rrf_through_the_stage_matches_the_formula() -> None:
    encoder = BagOfWordsEncoder()
    gallery = _gallery(encoder)
    k = 4
    record = RetrieveStage(RetrieveConfig(mode="dual", dual_fusion="rrf", dual_weight=0.7, dual_rrf_k=10, k=k),
                           encoder, gallery).run(_state("blue sea", (250, 10, 10)))
    text_cos, image_cos = _independent_scores(encoder, gallery, "blue sea", (250, 10, 10))
    top = lambda cos: [gallery.ids[n] for n in sorted(range(8), key=lambda n: (-cos[n], n))[:k]]  # noqa: E731
    order, scores = _rrf_independent(top(text_cos), top(image_cos), 0.7, 10)
    assert [row.id for row in record.output.candidates] == order
    assert record.output.paths == {"text": top(text_cos), "image": top(image_cos)}
    for row in record.output.candidates:
        assert row.score == pytest.approx(scores[row.id], abs=1e-6)


def _ranking(ids: list[str], universe: list[str]) -> Ranking:
    where = {g: n for n, g in enumerate(universe)}
    return Ranking.from_arrays(np.asarray([where[g] for g in ids]), np.zeros(len(ids)), universe, [None] * len(universe),
                               where.get)


UNIVERSE = [f"item{n}.png" for n in range(12)]
ranked_ids = st.lists(st.sampled_from(UNIVERSE), unique=True, max_size=12)


@settings(max_examples=150, deadline=None)
@given(ranked_ids, ranked_ids, st.floats(0, 1), st.integers(0, 100))
def test_rrf_fuse_matches_the_formula_on_any_two_lists(text_ids, image_ids, weight, k) -> None:
    fused = rrf_fuse(_ranking(text_ids, UNIVERSE), _ranking(image_ids, UNIVERSE), weight, k)
    order, scores = _rrf_independent(text_ids, image_ids, weight, k)
    assert fused.head_ids() == order
    assert np.allclose(fused.retrieval, [scores[g] for g in order])


def _wiser_independent(text: dict[str, float], image: dict[str, float]) -> list[str]:
    # WISER: sum of the two paths' confidences (0 where a path did not retrieve the item), then the larger
    # confidence, then the text path's, then the name.
    names = set(text) | set(image)
    return sorted(names, key=lambda n: (-(text.get(n, 0.0) + image.get(n, 0.0)),
                                        -max(text.get(n, 0.0), image.get(n, 0.0)), -text.get(n, 0.0), n))


confidences = st.dictionaries(st.sampled_from(UNIVERSE), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), max_size=8)


@settings(max_examples=150, deadline=None)
@given(confidences, confidences)
def test_wiser_fusion_orders_one_round_as_wiser_sums_the_paths(text: dict, image: dict) -> None:
    # One round: the verifier judged the pool (union); each id's confidence is the same in both paths.
    pool = list(dict.fromkeys([*text, *image]))
    confidence = {g: text.get(g, image.get(g)) for g in pool}
    items = [(g, confidence[g], 0.0) for g in pool]
    fused = wiser_fusion([items], [{"text": list(text), "image": list(image)}])
    expected = _wiser_independent({g: confidence[g] for g in text}, {g: confidence[g] for g in image})
    assert [item.id for item in fused] == expected


def test_wiser_fusion_keeps_each_paths_best_confidence_over_rounds() -> None:
    rounds = [[("a", 0.2, 0.9), ("b", 0.6, 0.8)], [("a", 0.9, 0.7), ("c", 0.5, 0.6)]]
    paths = [{"text": ["a"], "image": ["b"]}, {"text": ["c"], "image": ["a"]}]
    fused = wiser_fusion(rounds, paths)
    # a: text 0.2 + image 0.9 = 1.1; b: image 0.6; c: text 0.5
    assert [(item.id, round(item.score, 6)) for item in fused] == [("a", 1.1), ("b", 0.6), ("c", 0.5)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 9), st.integers(0, 10_000))
def test_twin_vectors_are_the_normalised_sum_of_the_normalised_pair(rows: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    real, synthetic = rng.normal(size=(rows, dim)) * 3, rng.normal(size=(rows, dim)) * 0.1
    combined = twin_vectors(real, synthetic)
    for n in range(rows):
        total = real[n] / np.linalg.norm(real[n]) + synthetic[n] / np.linalg.norm(synthetic[n])
        assert np.allclose(combined[n], total / np.linalg.norm(total), atol=1e-5)


def test_dual_without_an_edited_image_retrieves_with_the_text_and_says_so() -> None:
    encoder = BagOfWordsEncoder()
    gallery = _gallery(encoder)
    state = _state("blue sea", (250, 10, 10))
    state.edited_image = None
    record = RetrieveStage(RetrieveConfig(mode="dual", k=3), encoder, gallery).run(state)
    assert record.output.mode == "text" and any("no edited image" in note for note in record.notes)


def test_dual_refuses_caption_only_galleries() -> None:
    encoder = BagOfWordsEncoder()
    gallery = RetrievalGallery.from_captions({"a": "a red apple", "b": "a blue sea"}, encoder)
    with pytest.raises(AgentCirError, match="captions only"):
        RetrieveStage(RetrieveConfig(mode="dual"), encoder, gallery)


@pytest.mark.parametrize("recipe, message", [
    ({"retrieve": {"mode": "dual"}}, "enable the imagine stage"),
    ({"retrieve": {"mode": "dual", "dual_fusion": "wiser"}, "imagine": {"enabled": True}}, "enable verify"),
    ({"retrieve": {"dual_weight": 1.5}}, "dual_weight"),
    ({"imagine": {"enabled": True, "describe_model": "vlm"}}, "describe_model"),
])
def test_incomplete_dual_recipes_are_refused_at_load(recipe: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(recipe)


def test_the_imagine_stage_runs_between_the_description_stages_and_retrieval() -> None:
    recipe = recipe_from_dict({"models": {"llm": {"spec": "fake:x"}}, "rewrite": {"enabled": True},
                               "imagine": {"enabled": True}, "retrieve": {"mode": "dual"}})
    assert recipe.enabled_stages() == ["rewrite", "imagine", "retrieve"]
