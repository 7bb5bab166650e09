"""CIRR's reference rule: the official evaluation removes the reference by name only (SEARLE validate.py:198-202);
`agent-cir search` removes every byte-identical copy too. A copy under another name must survive in benchmarks
(it may be an img_set member the subset metric needs)."""

import numpy as np

from agent_cir.config import RetrieveConfig, load_recipe
from agent_cir.eval.benchmarks import BENCHMARKS
from agent_cir.fusion import normalise
from agent_cir.gallery import RetrievalGallery
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
    return [c.id for c in state.candidates], record.output["excluded"]


def test_search_removes_every_copy_but_benchmarks_remove_the_reference_by_id_only():
    ids, excluded = _ids("id+copies")
    assert sorted(excluded) == ["copy.png", "ref.png"] and "copy.png" not in ids
    ids, excluded = _ids("id")
    assert excluded == ["ref.png"] and ids[0] == "copy.png"


def test_the_cirr_protocol_sets_the_id_rule_and_circo_keeps_the_reference():
    recipe = load_recipe("image_only")
    assert BENCHMARKS["cirr"].retrieve_overrides(recipe, [])["retrieve"]["exclude_reference_by"] == "id"
    assert "exclude_reference_by" not in BENCHMARKS["circo"].retrieve_overrides(recipe, []).get("retrieve", {})
