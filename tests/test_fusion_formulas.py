"""The published query formulas, each checked against an independent implementation written here from the
paper's / official code's equations (plain numpy, elementwise, no call into agent_cir.fusion helpers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent_cir.config import GalleryCaptionsConfig, RetrieveConfig
from agent_cir.errors import AgentCirError
from agent_cir.fusion import mean_score_query, pdv_fused, pdv_image, pdv_text, sqaf_query, weimocir_query
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.stages.retrieve import RetrieveStage
from agent_cir.types import Query, QueryState

DIM = 6
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)
vectors = arrays(np.float32, DIM, elements=finite).filter(lambda v: float(np.linalg.norm(v)) > 1e-2)
weights = st.floats(0.0, 1.0)
scales = st.floats(-3.0, 3.0)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / math.sqrt(sum(x * x for x in v))


def cosine(a, b):
    return float(np.dot(unit(a), unit(b)))


@settings(max_examples=60, deadline=None)
@given(vectors, vectors, weights)
def test_weimocir_fuses_raw_projections_then_normalises(image, text, alpha):
    # official src/utils.py:274-282: F.normalize((1 - alpha) * image + alpha * text), inputs NOT normalised
    expected = unit([(1 - alpha) * i + alpha * t for i, t in zip(image.astype(np.float64), text.astype(np.float64))]) \
        if np.linalg.norm((1 - alpha) * image + alpha * text) > 1e-4 else None
    got = weimocir_query(image, text, alpha)
    if expected is not None:
        np.testing.assert_allclose(got, expected, atol=2e-4)
    assert np.isfinite(got).all()


def test_weimocir_raw_and_unit_inputs_differ_when_norms_differ():
    image, text = np.array([3.0, 0, 0, 0, 0, 0]), np.array([0, 1.0, 0, 0, 0, 0])
    raw = weimocir_query(image, text, 0.5)
    assert raw[0] == pytest.approx(3 / math.sqrt(10), abs=1e-6)  # the bigger raw image norm dominates
    assert weimocir_query(unit(image), unit(text), 0.5)[0] == pytest.approx(1 / math.sqrt(2), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(vectors, vectors, vectors, scales, scales, weights, arrays(np.float32, (4, DIM), elements=finite))
def test_pdv_branches_and_fused_query(image, reference_text, composed_text, alpha_t, alpha_i, beta, gallery):
    gallery = [row for row in gallery if np.linalg.norm(row) > 1e-2]
    # PDV (official pseudo-code, neouyghur/PDV README): inputs L2-normalised; delta = txt(composed) - txt(ref);
    # PDV-I = img + alpha_I delta; PDV-T = txt(ref) + alpha_T delta; PDV-F = normalise((1-beta) PDV-I + beta PDV-T)
    img, ref, comp = unit(image), unit(reference_text), unit(composed_text)
    delta = [c - r for c, r in zip(comp, ref)]
    text_branch = np.array([r + alpha_t * d for r, d in zip(ref, delta)])
    image_branch = np.array([i + alpha_i * d for i, d in zip(img, delta)])
    np.testing.assert_allclose(pdv_text(reference_text, composed_text, alpha_t), text_branch, atol=2e-4)
    np.testing.assert_allclose(pdv_image(image, reference_text, composed_text, alpha_i), image_branch, atol=2e-4)
    mix = (1 - beta) * image_branch + beta * text_branch
    if np.linalg.norm(mix) < 1e-3:
        return  # a degenerate direction: the normalised query is undefined
    fused = pdv_fused(image, reference_text, composed_text, alpha_t, alpha_i, beta)
    np.testing.assert_allclose(fused, mix / np.linalg.norm(mix), atol=5e-4)
    for row in gallery:  # what retrieval sees: the cosine with the fused query
        assert float(fused @ unit(row)) == pytest.approx(cosine(mix, row), abs=5e-4)


def test_pdv_text_with_alpha_one_is_the_composed_text():
    rng = np.random.default_rng(3)
    reference, composed = rng.standard_normal(DIM), rng.standard_normal(DIM)
    np.testing.assert_allclose(pdv_text(reference, composed, 1.0), unit(composed), atol=1e-6)
    np.testing.assert_allclose(pdv_text(reference, composed, 0.0), unit(reference), atol=1e-6)
    # beta = 1: PDV-F is PDV-T alone; beta = 0: PDV-I alone
    image = rng.standard_normal(DIM)
    np.testing.assert_allclose(pdv_fused(image, reference, composed, 1.0, 1.0, 1.0), unit(composed), atol=1e-6)
    np.testing.assert_allclose(pdv_fused(image, reference, composed, 0.5, 0.0, 0.0), unit(image), atol=1e-6)


def test_renamed_pdv_fields_name_their_replacements():
    with pytest.raises(ValueError, match="pdv_alpha_t and pdv_alpha_i"):
        RetrieveConfig(pdv_a=1.0)
    with pytest.raises(ValueError, match="pdv_beta"):
        RetrieveConfig.model_validate({"pdv_b": 0.5})


# ---------- ImageScope through the stage ----------
class TableEncoder:
    """Texts map to fixed vectors from a table (unknown texts are an error, so nothing is embedded by accident)."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = {key: np.asarray(value, dtype=np.float32) for key, value in table.items()}
        self.dim = len(next(iter(self.table.values())))
        self.info = {"backend": "test-table", "model": f"table-{len(table)}-{hash(tuple(sorted(table)))}"}
        self.text_calls: list[list[str]] = []

    def encode_texts(self, texts, batch_size=None):
        self.text_calls.append(list(texts))
        rows = [self.table[text] for text in texts]
        return np.stack([row / np.linalg.norm(row) for row in rows]).astype(np.float32)

    def encode_images(self, images, batch_size=None):  # pragma: no cover - references come from the gallery
        raise AssertionError("no image should be encoded in these tests")


def test_imagescope_score_is_the_mean_over_descriptions_of_each_descriptions_mixed_score():
    rng = np.random.default_rng(7)
    descriptions = ["core", "enhanced", "comprehensive"]
    captions = {f"g{i}": [f"caption {i}"] for i in range(6)}
    table = {text: rng.standard_normal(8) for text in [*descriptions, *(c[0] for c in captions.values())]}
    encoder = TableEncoder(table)
    images = rng.standard_normal((6, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    gallery = RetrievalGallery(ids=list(captions), paths=[None] * 6, hashes=[None] * 6, image_embeddings=images)
    gallery.with_captions(captions, encoder)
    tau = 0.15
    config = RetrieveConfig(mode="text", k=6, description_scoring="mean_score", max_descriptions=3,
                            gallery_captions=GalleryCaptionsConfig(weight=tau))
    state = QueryState(query=Query(id="q", text="make it so"))
    state.target_descriptions = [*descriptions, "a fourth one that max_descriptions drops"]
    RetrieveStage(config, encoder, gallery).run(state)
    # official utils/inference_entrypoint_ray.py:548-571: per description (1 - tau) cos(d, img) + tau cos(d, cap),
    # summed over descriptions, divided by their number
    expected = {}
    for position, gallery_id in enumerate(captions):
        per_description = [
            (1 - tau) * cosine(table[d], images[position]) + tau * cosine(table[d], table[captions[gallery_id][0]])
            for d in descriptions
        ]
        expected[gallery_id] = sum(per_description) / 3
    got = {c.id: c.score for c in state.candidates}
    assert got == pytest.approx(expected, abs=1e-5)
    assert [c.id for c in state.candidates] == sorted(expected, key=lambda key: -expected[key])


# ---------- WeiMoCIR's caption pairing, computed by hand ----------
E = np.eye(4, dtype=np.float32)


def _weimocir_gallery():
    # Three items; image embeddings e1, e2, e3; two MLLM captions each.
    captions = {"A": ["a zero", "a one"], "B": ["b zero", "b one"], "C": ["c zero", "c one"]}
    table = {"a zero": E[0], "a one": E[3], "b zero": E[3], "b one": E[1], "c zero": E[2], "c one": E[2],
             "make it blue": E[1]}
    encoder = TableEncoder(table)
    gallery = RetrievalGallery(ids=["A", "B", "C"], paths=[None] * 3, hashes=["ha", "hb", "hc"],
                               image_embeddings=E[:3].copy())
    gallery.with_captions(captions, encoder)
    return gallery, encoder


def test_weimocir_caption_pairing_on_three_images_by_hand():
    gallery, encoder = _weimocir_gallery()
    config = RetrieveConfig(mode="weimocir", alpha=0.5, k=3, exclude_reference=False, text_source="modification",
                            gallery_captions=GalleryCaptionsConfig(weight=0.5))
    state = QueryState(query=Query(id="q", text="make it blue", reference_id="A"))
    record = RetrieveStage(config, encoder, gallery).run(state)
    r = 1 / math.sqrt(2)
    # image branch: q = (e1 + e2)/sqrt2 -> A: r, B: r, C: 0
    # caption slot 0: q0 = norm(0.5 a0 + 0.5 m) = (e1 + e2)/sqrt2 vs caption 0 of each: A e1 -> r, B e4 -> 0, C e3 -> 0
    # caption slot 1: q1 = norm(0.5 a1 + 0.5 m) = (e4 + e2)/sqrt2 vs caption 1: A e4 -> r, B e2 -> r, C e3 -> 0
    # caption branch = mean over slots: A r, B r/2, C 0;  final = 0.5 image + 0.5 caption
    expected = {"A": 0.5 * r + 0.5 * r, "B": 0.5 * r + 0.5 * (r / 2), "C": 0.0}
    assert [c.id for c in state.candidates] == ["A", "B", "C"]
    assert {c.id: c.score for c in state.candidates} == pytest.approx(expected, abs=1e-6)
    assert record.output.pairing == "paired" and record.output.captions_per_item == 2
    # Scoring every caption against the image-fused query (the old behaviour) would tie A and B: 0.75 r each.
    unpaired = RetrieveConfig(mode="fusion", alpha=0.5, k=3, exclude_reference=False, text_source="modification",
                              gallery_captions=GalleryCaptionsConfig(weight=0.5))
    old = QueryState(query=Query(id="q", text="make it blue", reference_id="A"))
    RetrieveStage(unpaired, encoder, gallery).run(old)
    assert {c.id: c.score for c in old.candidates}["A"] == pytest.approx(0.75 * r, abs=1e-6)
    assert {c.id: c.score for c in old.candidates}["B"] == pytest.approx(0.75 * r, abs=1e-6)


def test_weimocir_excludes_the_reference_and_needs_gallery_captions():
    gallery, encoder = _weimocir_gallery()
    config = RetrieveConfig(mode="weimocir", alpha=0.5, k=3, text_source="modification",
                            gallery_captions=GalleryCaptionsConfig(weight=0.1))
    state = QueryState(query=Query(id="q", text="make it blue", reference_id="A"))
    RetrieveStage(config, encoder, gallery).run(state)
    assert [c.id for c in state.candidates] == ["B", "C"]
    with pytest.raises(AgentCirError, match="gallery_captions"):
        RetrieveStage(RetrieveConfig(mode="weimocir"), encoder, gallery)


def test_weimocir_fuses_unit_vectors_the_declared_difference(tmp_path):
    """The official code fuses raw projections; ours normalises each side first (recipes/weimocir.yaml
    ``differences``), whatever norms the encoder's rows have, and the record says raw_projections: false."""
    gallery, base = _weimocir_gallery()
    table = {"make it blue": 0.5 * E[1], "a blue thing": 4.0 * E[0] + E[3]}  # norms 0.5 and 4.1: not unit
    encoder = TableEncoder({**base.table, **table})
    encoder.info = dict(base.info)  # the gallery's caption embeddings stay valid
    image = 3.0 * E[0] + 1.0 * E[2]
    encoder.encode_images = lambda images: np.stack([image for _ in images])
    from PIL import Image

    path = tmp_path / "ref.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    alpha, beta = 0.8, 0.1
    config = RetrieveConfig(mode="weimocir", alpha=alpha, k=3, text_source="modification",
                            gallery_captions=GalleryCaptionsConfig(weight=beta))
    state = QueryState(query=Query(id="q", text="make it blue", image=str(path), reference_caption="a blue thing"))
    record = RetrieveStage(config, encoder, gallery).run(state)
    assert record.output.raw_projections is False
    m, c = unit(table["make it blue"]), unit(table["a blue thing"])
    q_img = unit((1 - alpha) * unit(image) + alpha * m)
    q_cap = unit((1 - alpha) * c + alpha * m)  # one reference caption: it fills both slots
    slots = {"A": [E[0], E[3]], "B": [E[3], E[1]], "C": [E[2], E[2]]}
    images = {"A": E[0], "B": E[1], "C": E[2]}
    expected = {key: (1 - beta) * float(q_img @ images[key]) + beta * np.mean([float(q_cap @ s) for s in slots[key]])
                for key in slots}
    assert {cand.id: cand.score for cand in state.candidates} == pytest.approx(expected, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=30))
def test_any_modification_text_either_retrieves_or_fails_clearly_and_never_embeds_a_blank(text):
    from tests.fixtures.pipeline import BagOfWordsEncoder
    from agent_cir.stages.retrieve_plan import QueryInputError

    encoder = BagOfWordsEncoder()
    seen: list[str] = []
    original = encoder.encode_texts
    encoder.encode_texts = lambda texts, batch_size=None: (seen.extend(texts), original(texts))[1]
    gallery = RetrievalGallery.from_captions({"x": ["a red car"], "y": ["a blue dog"]}, encoder)
    stage = RetrieveStage(RetrieveConfig(mode="text", k=2, text_source="modification"), encoder, gallery)
    seen.clear()
    outcome = stage.run_batch([QueryState(query=Query(id="q", text=text))])[0]
    if text.strip():
        assert not isinstance(outcome, BaseException) and len(outcome.output.candidates) == 2
    else:
        assert isinstance(outcome, QueryInputError)
    assert all(s.strip() for s in seen)
