"""CIRR's reference rule: the official evaluation removes the reference by name only (SEARLE validate.py:198-202);
`agent-cir search` removes every byte-identical copy too. A copy under another name must survive in benchmarks
(it may be an img_set member the subset metric needs)."""

import numpy as np

from agent_cir.config import RetrieveConfig, load_recipe
from agent_cir.eval.benchmarks import BENCHMARKS
from agent_cir.fusion import normalise
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.stages.retrieve import RetrieveStage
from agent_cir.types import Query, QueryState


def _gallery():
    rng = np.random.default_rng(0)
    images = normalise(rng.standard_normal((4, 8)).astype(np.float32))
    images[1] = images[0]  # "copy.png" is a byte-identical copy of "ref.png"
    return RetrievalGallery(ids=["ref.png", "copy.png", "x.png", "y.png"], paths=[None] * 4,
                            hashes=["h0", "h0", "h2", "h3"], image_embeddings=images)


def _ids(rule):
    stage = RetrieveStage(RetrieveConfig(mode="image", k=4, exclude_reference_by=rule), encoder=None, gallery=_gallery())
    state = QueryState(query=Query(id="q", text="", reference_id="ref.png"))
    record = stage.run(state)
    return [c.id for c in state.candidates], record.output.excluded


def test_search_removes_every_copy_but_benchmarks_remove_the_reference_by_id_only():
    ids, excluded = _ids("id+copies")
    assert sorted(excluded) == ["copy.png", "ref.png"] and "copy.png" not in ids
    ids, excluded = _ids("id")
    assert excluded == ["ref.png"] and ids[0] == "copy.png"


def test_the_cirr_protocol_sets_the_id_rule_and_circo_keeps_the_reference():
    recipe = load_recipe("image_only")
    assert BENCHMARKS["cirr"].retrieve_overrides(recipe, [])["retrieve"]["exclude_reference_by"] == "id"
    assert "exclude_reference_by" not in BENCHMARKS["circo"].retrieve_overrides(recipe, []).get("retrieve", {})


def test_genecis_focus_attribute_queries_are_averaged_with_the_reference_as_cirevl_does(bow_encoder):
    from agent_cir.eval.datasets.genecis import reference_averaged_query

    gallery = _gallery()
    rng = np.random.default_rng(1)
    encoder = type("E", (), {"encode_texts": staticmethod(lambda texts: rng.standard_normal((len(texts), 8)))})()
    config = RetrieveConfig(mode="text", k=4, text_source="modification", exclude_reference=False,
                            reference_average_tasks=["focus_attribute"])
    stage = RetrieveStage(config, encoder=encoder, gallery=gallery)
    plans = {}
    for task in ("focus_attribute", "change_object"):
        state = QueryState(query=Query(id=task, text="the colour", reference_id="x.png", meta={"task": task}))
        plan = stage._plan(state)
        text = {"the colour": np.asarray(rng.standard_normal(8), dtype=np.float32)}
        vector, extra = stage._query_vector(plan, text)
        plans[task] = (vector, extra, text["the colour"])
    vector, extra, text = plans["focus_attribute"]
    expected = reference_averaged_query(normalise(text), gallery.image_embeddings[2])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    assert extra["reference_averaged"] is True
    vector, extra, text = plans["change_object"]
    np.testing.assert_allclose(vector, normalise(text), atol=1e-6)
    assert "reference_averaged" not in extra
    assert load_recipe("cirevl").for_dataset("genecis").retrieve.reference_average_tasks == ["focus_attribute"]
