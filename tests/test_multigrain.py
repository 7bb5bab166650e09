"""CoTMR multi-grained scoring: the numpy version against a plain-loop reading of the formula, properties
that must hold for any inputs, and malformed inputs that must be refused with a clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent_cir.errors import AgentCirError
from agent_cir.retrieval.multigrain import MultigrainError, multigrain_scores


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _reference_score(captions, present, absent, image, w_present, w_absent, aggregate) -> float:
    """S(v) = mean_c cos(c,v) + w+ * agg_{o in O+} cos(o,v) - w- * agg_{o in O-} cos(o,v), term by term."""

    def agg(values: list[float]) -> float:
        if not values:
            return 0.0
        if aggregate == "mean":
            return sum(values) / len(values)
        if aggregate == "sum":
            return sum(values)
        best = values[0]
        for value in values[1:]:
            if value > best:
                best = value
        return best

    caption_similarities = [_cosine(c, image) for c in captions]
    score = sum(caption_similarities) / len(caption_similarities)
    score += w_present * agg([_cosine(o, image) for o in present])
    score -= w_absent * agg([_cosine(o, image) for o in absent])
    return score


def _unit_rows(raw: np.ndarray) -> np.ndarray:
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


_DIM = 4
_finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False, width=32)


def _unit_matrix(min_rows: int, max_rows: int):
    # Rows with norm at least 0.1 before normalising, so normalising is well conditioned.
    return (
        st.integers(min_rows, max_rows)
        .flatmap(lambda rows: arrays(np.float64, (rows, _DIM), elements=_finite))
        .filter(lambda m: m.shape[0] == 0 or bool((np.linalg.norm(m, axis=1) > 0.1).all()))
        .map(lambda m: _unit_rows(m) if m.shape[0] else np.zeros((0, _DIM)))
    )


_weights = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    captions=_unit_matrix(1, 3),
    present=_unit_matrix(0, 3),
    absent=_unit_matrix(0, 3),
    gallery=_unit_matrix(1, 5),
    w_present=_weights,
    w_absent=_weights,
    aggregate=st.sampled_from(["mean", "sum", "max"]),
)
def test_matches_plain_loop_reading_of_the_formula(captions, present, absent, gallery, w_present, w_absent, aggregate):
    got = multigrain_scores(
        captions, present, absent, gallery, present_weight=w_present, absent_weight=w_absent, aggregate=aggregate
    )
    want = [
        _reference_score(
            captions.tolist(), present.tolist(), absent.tolist(), image.tolist(), w_present, w_absent, aggregate
        )
        for image in gallery
    ]
    assert got.shape == (gallery.shape[0],)
    assert np.allclose(got, want, atol=1e-9)


def test_worked_example_by_hand():
    # Axis-aligned unit vectors make every cosine 0 or 1, so the scores can be written down.
    e = np.eye(3)
    scores = multigrain_scores(e[0], [e[1]], [e[2]], e, present_weight=0.5, absent_weight=2.0)
    # image 0 matches the caption (1), image 1 the must-have object (0.5), image 2 the must-not object (-2).
    assert scores.tolist() == [1.0, 0.5, -2.0]


@settings(max_examples=60, deadline=None)
@given(
    captions=_unit_matrix(1, 2),
    present=_unit_matrix(0, 2),
    absent=_unit_matrix(0, 3),
    gallery=_unit_matrix(1, 4),
    w_absent=st.floats(min_value=0.1, max_value=3.0),
    aggregate=st.sampled_from(["mean", "sum", "max"]),
    data=st.data(),
)
def test_a_must_not_object_that_matches_an_image_lowers_its_score(
    captions, present, absent, gallery, w_absent, aggregate, data
):
    target = data.draw(st.integers(0, gallery.shape[0] - 1))
    before = multigrain_scores(captions, present, absent, gallery, absent_weight=w_absent, aggregate=aggregate)
    with_object = np.vstack([absent, gallery[target]])
    after = multigrain_scores(captions, present, with_object, gallery, absent_weight=w_absent, aggregate=aggregate)
    # The penalty term can only grow: by 1 (sum), towards 1 (mean), or to 1 (max). It stays put only when
    # the previous mean/max is already 1, i.e. an equal must-not object was listed before.
    previous = absent @ gallery[target]
    saturation = {"sum": 0.0, "mean": previous.mean(), "max": previous.max()}[aggregate] if len(previous) else 0.0
    if saturation > 1 - 1e-6:
        assert after[target] == pytest.approx(before[target])
    else:
        assert after[target] < before[target]


@settings(max_examples=60, deadline=None)
@given(
    captions=_unit_matrix(1, 2),
    absent=_unit_matrix(0, 2),
    gallery=_unit_matrix(1, 4),
    w_present=st.floats(min_value=0.1, max_value=3.0),
    data=st.data(),
)
def test_a_must_have_object_that_matches_an_image_raises_it_from_none(captions, absent, gallery, w_present, data):
    target = data.draw(st.integers(0, gallery.shape[0] - 1))
    before = multigrain_scores(captions, [], absent, gallery, present_weight=w_present)
    after = multigrain_scores(captions, gallery[target], absent, gallery, present_weight=w_present)
    assert after[target] == pytest.approx(before[target] + w_present)


@settings(max_examples=40, deadline=None)
@given(
    captions=_unit_matrix(1, 2),
    present=_unit_matrix(0, 3),
    absent=_unit_matrix(0, 3),
    gallery=_unit_matrix(1, 4),
    seed=st.integers(0, 2**16),
)
def test_object_order_does_not_matter_and_zero_weights_leave_the_caption_score(captions, present, absent, gallery, seed):
    rng = np.random.default_rng(seed)
    shuffled = multigrain_scores(
        captions, present[rng.permutation(len(present))], absent[rng.permutation(len(absent))], gallery
    )
    assert np.allclose(shuffled, multigrain_scores(captions, present, absent, gallery))
    caption_only = multigrain_scores(captions, present, absent, gallery, present_weight=0.0, absent_weight=0.0)
    assert np.allclose(caption_only, (captions @ gallery.T).mean(axis=0))


def test_empty_gallery_gives_no_scores():
    assert multigrain_scores(np.eye(2)[0], [], [], []).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"caption_embeddings": [2.0, 0.0]}, "norm 2.0000, not 1"),
        ({"caption_embeddings": [[]]}, "empty"),
        ({"gallery_embeddings": [[1.0, 0.0, 0.0]]}, "dimension 3"),
        ({"absent_embeddings": [[float("nan"), 1.0]]}, "NaN"),
        ({"present_embeddings": np.zeros((1, 1, 2))}, "vector or a (count, dim) matrix"),
        ({"absent_weight": -1.0}, "absent_weight must be a finite number >= 0"),
        ({"present_weight": float("inf")}, "present_weight must be a finite number"),
        ({"aggregate": "median"}, "aggregate must be one of"),
    ],
)
def test_malformed_inputs_are_refused_with_a_clear_error(kwargs, message):
    arguments = {
        "caption_embeddings": [1.0, 0.0],
        "present_embeddings": [[0.0, 1.0]],
        "absent_embeddings": [],
        "gallery_embeddings": np.eye(2),
    }
    arguments.update(kwargs)
    with pytest.raises(MultigrainError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        multigrain_scores(**arguments)
    assert isinstance(caught.value, AgentCirError)
