"""Gallery scoring, the retrieve stage and the pipeline around it, with a deterministic bag-of-words encoder."""

import json

import numpy as np
import pytest
from PIL import Image

from agent_cir.config import RetrieveConfig
from agent_cir.errors import AgentCirError
from agent_cir.fusion import normalise, weighted_fusion
from agent_cir.retrieval.gallery import GalleryError, RetrievalGallery, load_gallery_captions
from agent_cir.pipeline import Pipeline
from agent_cir.stages.retrieve import RetrieveStage
from agent_cir.trace.model import TRACE_SCHEMA_VERSION
from agent_cir.types import Query, QueryState

CAPTIONS = {
    "red_car": ["a red car parked on a street", "a shiny red sports car"],
    "blue_car": ["a blue car parked on a street"],
    "dog_grass": ["a brown dog running on green grass"],
    "cat_sofa": ["a grey cat sleeping on a sofa", "a cat on a couch"],
}


def test_caption_file_formats_are_equivalent(tmp_path):
    as_list = [{"candidate": key, "captions": value} for key, value in CAPTIONS.items()]
    path = tmp_path / "caps.json"
    path.write_text(json.dumps(as_list))
    assert load_gallery_captions(path) == CAPTIONS
    assert load_gallery_captions({"x": "one caption", "y": ["", "two"]}) == {"x": ["one caption"], "y": ["two"]}
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"captions\": [\"no id\"]}]")
    with pytest.raises(GalleryError, match="entry 0 needs an id"):
        load_gallery_captions(bad)


def test_caption_score_is_mean_cosine_over_an_items_captions(bow_encoder):
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    query = normalise(bow_encoder.encode_texts(["a red car"])[0])
    scores = gallery.caption_scores(query)
    for position, gallery_id in enumerate(gallery.ids):
        expected = np.mean([bow_encoder.encode_texts([c])[0] @ query for c in CAPTIONS[gallery_id]])
        assert scores[position] == pytest.approx(expected, abs=1e-5)
    assert gallery.top_k(query, 1)[0].id == "red_car"


def test_mixed_score_weights_image_and_caption_similarity(bow_encoder):
    rng = np.random.default_rng(0)
    ids = list(CAPTIONS)
    images = normalise(rng.standard_normal((len(ids), bow_encoder.dim)))
    gallery = RetrievalGallery(ids=ids, paths=[None] * 4, hashes=[None] * 4, image_embeddings=images)
    gallery.with_captions(CAPTIONS, bow_encoder)
    query = normalise(rng.standard_normal(bow_encoder.dim))
    g = 0.3
    expected = (1 - g) * (images @ query) + g * gallery.caption_scores(query)
    np.testing.assert_allclose(gallery.scores(query, caption_weight=g), expected, rtol=1e-5)


def test_top_k_excludes_and_breaks_ties_by_position():
    ids = ["a", "b", "c", "d"]
    embeddings = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    gallery = RetrievalGallery(ids=ids, paths=[None] * 4, hashes=[None] * 4, image_embeddings=embeddings)
    top = gallery.top_k(np.array([1, 0], dtype=np.float32), k=3, exclude=[1])
    assert [c.id for c in top] == ["a", "d", "c"]
    assert [c.rank for c in top] == [1, 2, 3]
    assert len(gallery.top_k(np.array([1, 0], dtype=np.float32), k=10, exclude=[0])) == 3


def _state(**query_fields):
    return QueryState(query=Query(id=query_fields.pop("id", "q1"), **query_fields))


@pytest.mark.parametrize(
    "text_source, expected",
    [
        ("modification", ["make it blue"]),
        ("caption", ["a red car on a street."]),
        ("caption+modification", ["a red car on a street. make it blue"]),
        ("target+modification", ["a blue car on a street", "make it blue"]),
    ],
)
def test_no_llm_text_sources(bow_encoder, text_source, expected):
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    stage = RetrieveStage(RetrieveConfig(text_source=text_source, k=2), bow_encoder, gallery)
    state = _state(text="make it blue", reference_caption="a red car on a street.", reference_id="red_car")
    state.captions = [state.query.reference_caption]
    state.target_descriptions = ["a blue car on a street"]
    record = stage.run(state)
    assert record.output.query_texts == expected
    assert "red_car" not in [c.id for c in state.candidates], "the reference must be excluded"
    assert record.output.excluded == ["red_car"]


def test_target_descriptions_are_ensembled_and_missing_ones_fall_back(bow_encoder):
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    stage = RetrieveStage(RetrieveConfig(k=4), bow_encoder, gallery)
    state = _state(text="now a cat")
    state.target_descriptions = ["a cat sleeping on a sofa", "a grey cat on a couch"]
    stage.run(state)
    assert state.candidates[0].id == "cat_sofa"
    empty = _state(text="a brown dog on grass")
    record = stage.run(empty)
    assert empty.description_source == "modification" and record.notes
    assert empty.candidates[0].id == "dog_grass"


def test_image_modes_need_image_embeddings_or_a_reference(bow_encoder, tmp_path):
    captions_only = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    with pytest.raises(AgentCirError, match="needs image embeddings"):
        RetrieveStage(RetrieveConfig(mode="fusion"), bow_encoder, captions_only)
    ids = ["red", "green", "blue"]
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    embeddings = bow_encoder.encode_images([Image.new("RGB", (4, 4), c) for c in colours])
    gallery = RetrievalGallery(ids=ids, paths=[None] * 3, hashes=["h0", "h1", "h2"], image_embeddings=embeddings)
    stage = RetrieveStage(RetrieveConfig(mode="image", k=3, exclude_reference=False), bow_encoder, gallery)
    with pytest.raises(AgentCirError, match="needs a reference image"):
        stage.run(_state(text="x"))
    reference = tmp_path / "ref.png"
    Image.new("RGB", (8, 8), (0, 240, 10)).save(reference)
    state = _state(text="x", image=str(reference))
    stage.run(state)
    assert state.candidates[0].id == "green"
    by_hash = _state(text="x")
    by_hash.image_hash = "h2"  # the reference is a gallery item: its stored embedding is reused, and excluded
    RetrieveStage(RetrieveConfig(mode="image", k=3), bow_encoder, gallery).run(by_hash)
    assert [c.id for c in by_hash.candidates][0] != "blue" and len(by_hash.candidates) == 2


def test_fusion_query_vector_matches_the_formula():
    # PDV's old one-weight form (pdv_fusion) is gone: PDV-T / PDV-I / PDV-F are tested against the paper's
    # equations in tests/test_fusion_formulas.py.
    rng = np.random.default_rng(1)
    img, txt = (rng.standard_normal(8).astype(np.float32) for _ in range(2))
    alpha = 0.8
    expected = (1 - alpha) * img / np.linalg.norm(img) + alpha * txt / np.linalg.norm(txt)
    np.testing.assert_allclose(weighted_fusion(img, txt, alpha), expected / np.linalg.norm(expected), rtol=1e-5)


def test_pipeline_runs_caption_gallery_and_writes_a_complete_trace(bow_encoder):
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    recipe = {"name": "t", "retrieve": {"k": 3, "text_source": "caption+modification"}}
    pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder)
    result = pipe.run(Query(id="q/1", text="but blue", reference_caption="a red car", reference_id="red_car"))
    trace = result.trace.to_json_dict()  # what the writer writes
    assert trace["schema_version"] == TRACE_SCHEMA_VERSION
    assert trace["query"]["reference_caption"] == "a red car" and trace["captions"] == ["a red car"]
    assert [s["stage"] for s in trace["stages"]] == ["retrieve"]
    assert [r["id"] for r in trace["results"]] == [c.id for c in result.candidates]
    assert result.candidates[0].id == "blue_car"
    assert trace["totals"]["model_calls"] == 0 and pipe.stats == {"model_calls": 0, "cache_hits": 0}
    json.dumps(trace)  # JSON-ready


def test_manual_target_text_is_recorded_as_an_intervention(bow_encoder):
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config({"name": "t"}, gallery=gallery, encoder=bow_encoder)
    result = pipe.run(Query(id="q", text="make it a dog", target_text="a grey cat on a sofa"))
    assert result.trace.description_source == "manual"
    assert result.trace.target_descriptions == ["a grey cat on a sofa"]
    assert result.candidates[0].id == "cat_sofa"


def test_run_batch_skips_and_reports_bad_queries(bow_encoder, tmp_path):
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config({"name": "t"}, gallery=gallery, encoder=bow_encoder)
    queries = [
        Query(id="ok1", text="a dog"),
        Query(id="bad", text="x", image=str(tmp_path / "missing.png")),
        Query(id="ok2", text="a cat"),
    ]
    seen, errors = [], []
    results = pipe.run_batch(
        queries, max_concurrency=2, progress=False, on_result=lambda r: seen.append(r.query_id),
        on_error=lambda q, e: errors.append((q.id, str(e))),
    )
    assert [r.query_id for r in results] == ["ok1", "ok2"]
    assert sorted(seen) == ["ok1", "ok2"]
    assert errors and errors[0][0] == "bad" and "missing.png" in errors[0][1]
    assert pipe.failures == [{"query_id": "bad", "error": errors[0][1]}]


def test_pipeline_without_a_gallery_explains_what_to_pass(bow_encoder):
    with pytest.raises(AgentCirError, match="--index"):
        Pipeline.from_config({"name": "t"}, encoder=bow_encoder)


def test_candidate_ids_restrict_the_ranking_to_a_per_query_gallery(bow_encoder):
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    stage = RetrieveStage(RetrieveConfig(k=10), bow_encoder, gallery)
    state = _state(text="a red car", candidate_ids=["dog_grass", "cat_sofa", "unknown_id"])
    record = stage.run(state)
    assert sorted(c.id for c in state.candidates) == ["cat_sofa", "dog_grass"]
    assert record.output.restricted_to == 2
    assert any("unknown_id" in note for note in record.notes)
    unrestricted = _state(text="a red car")
    stage.run(unrestricted)
    assert unrestricted.candidates[0].id == "red_car" and len(unrestricted.candidates) == 4
