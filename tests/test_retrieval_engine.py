"""The faiss retrieval engine through the retrieve stage: HNSW and IVF-PQ indexes searched by the pipeline's
stage, every copy of the reference excluded, exact restriction, batched == one at a time, EXIF-rotated
references decoded like gallery images, empty modification texts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agent_cir.config import GalleryCaptionsConfig, RetrieveConfig
from agent_cir.retrieval import search_index
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.index import GalleryIndex
from agent_cir.index.gallery_index import encode_image_file
from agent_cir.pipeline import Pipeline
from agent_cir.stages.retrieve import RetrieveStage
from agent_cir.stages.retrieve_plan import QueryInputError
from agent_cir.types import Query, QueryState

COUNT = 64


@pytest.fixture(scope="module")
def pattern_folder(tmp_path_factory):
    """64 distinct small pictures plus two byte-identical copies of picture 0."""
    root = tmp_path_factory.mktemp("patterns")
    rng = np.random.default_rng(11)
    for i in range(COUNT):
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"p{i:02d}.png")
    data = (root / "p00.png").read_bytes()
    (root / "copy_a.png").write_bytes(data)
    (root / "sub").mkdir()
    (root / "sub" / "copy_b.png").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def built(pattern_folder, tmp_path_factory, tiny_open_clip_encoder):
    indexes = {}
    for factory in ("Flat", "HNSW32", "IVF4,PQ8x4"):
        out = tmp_path_factory.mktemp(factory.replace(",", "_"))
        indexes[factory] = GalleryIndex.build(pattern_folder, out, tiny_open_clip_encoder, index_type=factory,
                                              progress=False, workers=0)
    return indexes


def _state(**fields):
    return QueryState(query=Query(id=fields.pop("id", "q"), text=fields.pop("text", ""), **fields))


def _exact(index, vector, excluded=()):
    scores = np.asarray(index.embeddings, dtype=np.float32) @ vector
    order = [i for i in np.lexsort((np.arange(len(scores)), -scores)) if index.ids[i] not in excluded]
    return [index.ids[i] for i in order], scores


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,PQ8x4"])
def test_the_stage_searches_the_index_faiss_structure(built, tiny_open_clip_encoder, pattern_folder, factory):
    index = built[factory]
    gallery = RetrievalGallery.from_index(index)
    config = RetrieveConfig(mode="image", k=10, exclude_reference=False, nprobe=4 if "IVF" in factory else None,
                            ef_search=64 if "HNSW" in factory else None)
    stage = RetrieveStage(config, tiny_open_clip_encoder, gallery)
    state = _state(image=str(pattern_folder / "p05.png"))
    record = stage.run(state)
    assert factory in record.output.search
    assert record.output.search_settings == ({"nprobe": 4} if "IVF" in factory else {"efSearch": 64})
    query = encode_image_file(tiny_open_clip_encoder, pattern_folder / "p05.png")
    faiss_scores, faiss_rows = index.faiss_index.search(query[None, :].astype(np.float32), 10)
    # the scores are the faiss structure's own (PQ scores are approximations of the exact dot products)
    assert [c.score for c in state.candidates] == pytest.approx(faiss_scores[0].tolist(), abs=1e-5)
    assert {c.id for c in state.candidates} == {index.ids[r] for r in faiss_rows[0]}
    if "PQ" in factory:
        exact = np.asarray(index.embeddings, dtype=np.float32)[faiss_rows[0]] @ query
        assert not np.allclose(exact, faiss_scores[0], atol=1e-4), "IVF-PQ must not be an exact scan"


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,PQ8x4"])
def test_every_copy_of_the_reference_is_excluded_and_k_results_come_back(built, tiny_open_clip_encoder,
                                                                         pattern_folder, factory):
    index = built[factory]
    gallery = RetrievalGallery.from_index(index)
    stage = RetrieveStage(RetrieveConfig(mode="image", k=len(index) - 3), tiny_open_clip_encoder, gallery)
    for how in ("file", "id"):
        state = _state(image=str(pattern_folder / "copy_a.png")) if how == "file" else _state(reference_id="p00.png")
        if how == "file":
            from agent_cir.hashing import content_hash

            state.image_hash = content_hash(pattern_folder / "copy_a.png")
        record = stage.run(state)
        ids = [c.id for c in state.candidates]
        assert not {"p00.png", "copy_a.png", "sub/copy_b.png"} & set(ids)
        assert sorted(record.output.excluded) == ["copy_a.png", "p00.png", "sub/copy_b.png"]
        assert len(ids) == len(index) - 3 and len(set(ids)) == len(ids)
    # GalleryIndex.search (the Python API) goes through the same engine and agrees
    api = search_index(index, tiny_open_clip_encoder, image=pattern_folder / "copy_a.png", mode="image", k=5)
    assert not {"p00.png", "copy_a.png", "sub/copy_b.png"} & {c.id for c in api}


def test_an_ann_index_short_of_results_still_returns_k(tmp_path, pattern_folder, tiny_open_clip_encoder):
    index = GalleryIndex.build(pattern_folder, tmp_path / "ivf", tiny_open_clip_encoder, index_type="IVF8,Flat",
                               progress=False, workers=0)
    gallery = RetrievalGallery.from_index(index)
    stage = RetrieveStage(RetrieveConfig(mode="image", k=40, nprobe=1), tiny_open_clip_encoder, gallery)
    state = _state(reference_id="p07.png")
    stage.run(state)
    ids = [c.id for c in state.candidates]
    assert len(ids) == 40 and "p07.png" not in ids
    expected, _ = _exact(index, np.asarray(index.embeddings[index.ids.index("p07.png")]), excluded={"p07.png"})
    assert ids == expected[:40], "a query the ANN left short falls back to the exact ranking"


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,PQ8x4"])
def test_restriction_to_candidates_is_exact(built, tiny_open_clip_encoder, factory):
    index = built[factory]
    gallery = RetrievalGallery.from_index(index)
    stage = RetrieveStage(RetrieveConfig(mode="image", k=50), tiny_open_clip_encoder, gallery)
    candidates = [f"p{i:02d}.png" for i in range(20, 35)]
    state = _state(reference_id="p03.png", candidate_ids=[*candidates, "p03.png"])
    record = stage.run(state)
    vector = np.asarray(index.embeddings[index.ids.index("p03.png")], dtype=np.float32)
    order, scores = _exact(index, vector, excluded={"p03.png"})
    expected = [i for i in order if i in candidates]
    assert [c.id for c in state.candidates] == expected
    assert [c.score for c in state.candidates] == pytest.approx([float(scores[index.ids.index(i)]) for i in expected])
    assert record.output.restricted_to == 16


def test_batched_results_equal_one_at_a_time_with_one_encoder_call_each(bow_encoder, tmp_path):
    captions = {f"g{i}": [f"a {c} {o} on a {p}", f"the {o} is {c}"] for i, (c, o, p) in enumerate(
        [(c, o, p) for c in ("red", "blue", "green") for o in ("car", "dog", "cat") for p in ("street", "sofa")])}
    ids = list(captions)
    colours = np.random.default_rng(2).integers(0, 255, (len(ids), 3))
    images = bow_encoder.encode_images([Image.new("RGB", (4, 4), tuple(int(x) for x in c)) for c in colours])
    gallery = RetrievalGallery(ids=ids, paths=[None] * len(ids), hashes=[f"h{i}" for i in range(len(ids))],
                               image_embeddings=images)
    gallery.with_captions(captions, bow_encoder)
    reference = tmp_path / "ref.png"
    Image.new("RGB", (6, 6), (10, 200, 30)).save(reference)
    states_fields = [
        {"text": "make it a blue dog", "reference_id": "g3"},
        {"text": "a cat on a sofa", "image": str(reference), "reference_caption": "a green car on a street"},
        {"text": "now green", "reference_id": "g0", "candidate_ids": ids[:7]},
        {"text": "a red car", "reference_id": "g9"},
    ]
    for config in (
        RetrieveConfig(mode="fusion", k=5, gallery_captions=GalleryCaptionsConfig(weight=0.3)),
        RetrieveConfig(mode="weimocir", k=5, text_source="modification", gallery_captions=GalleryCaptionsConfig(weight=0.1)),
        RetrieveConfig(mode="text", k=5, text_source="modification", gallery_captions=GalleryCaptionsConfig(weight=0.5)),
    ):
        stage = RetrieveStage(config, bow_encoder, gallery)
        alone = []
        for fields in states_fields:
            state = _state(id=fields["text"], **fields)
            stage.run(state)
            alone.append([(c.id, round(c.score, 5)) for c in state.candidates])
        bow_encoder.text_calls = bow_encoder.image_calls = 0
        batch = [_state(id=f["text"], **f) for f in states_fields]
        records = stage.run_batch(batch)
        assert all(not isinstance(r, BaseException) for r in records)
        assert [[(c.id, round(c.score, 5)) for c in s.candidates] for s in batch] == alone
        assert bow_encoder.text_calls == 1, "all query texts of the batch in one encoder call"
        assert bow_encoder.image_calls == (1 if config.mode != "text" else 0)


def test_a_bad_query_fails_alone_in_a_batch(bow_encoder, tmp_path):
    gallery = RetrievalGallery.from_captions({"x": ["a red car"], "y": ["a blue car"]}, bow_encoder)
    stage = RetrieveStage(RetrieveConfig(mode="text", k=2, text_source="modification"), bow_encoder, gallery)
    states = [_state(id="ok", text="a blue car"), _state(id="empty", text="   "), _state(id="ok2", text="red")]
    outcomes = stage.run_batch(states)
    assert isinstance(outcomes[1], QueryInputError) and "no text to retrieve with" in str(outcomes[1])
    assert states[0].candidates[0].id == "y" and states[2].candidates[0].id == "x"


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_an_empty_modification_with_an_image_retrieves_by_image_never_by_an_empty_text(bow_encoder, blank):
    images = bow_encoder.encode_images([Image.new("RGB", (4, 4), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]])
    gallery = RetrievalGallery(ids=["r", "g", "b"], paths=[None] * 3, hashes=["h0", "h1", "h2"], image_embeddings=images)
    seen = []
    original = bow_encoder.encode_texts
    bow_encoder.encode_texts = lambda texts, batch_size=None: (seen.extend(texts), original(texts))[1]
    stage = RetrieveStage(RetrieveConfig(mode="fusion", k=2, text_source="modification"), bow_encoder, gallery)
    state = _state(text=blank, reference_id="g")
    record = stage.run(state)
    assert record.output.mode == "image" and any("empty" in n for n in record.notes)
    assert seen == [], "no embedding of an empty text"
    with pytest.raises(QueryInputError, match="no text"):
        RetrieveStage(RetrieveConfig(mode="text", k=2, text_source="modification"), bow_encoder,
                      RetrievalGallery.from_captions({"x": ["a"]}, bow_encoder)).run(_state(text=blank))


def test_an_exif_rotated_reference_is_decoded_like_gallery_images(tmp_path, tiny_open_clip_encoder, built):
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :8] = (250, 20, 20)  # asymmetric: rotation changes the picture
    picture = Image.fromarray(pixels)
    exif = picture.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    picture.save(path, exif=exif.tobytes())
    index = built["Flat"]
    stage = RetrieveStage(RetrieveConfig(mode="image", k=5), tiny_open_clip_encoder, RetrievalGallery.from_index(index))
    state = _state(image=str(path))
    stage.run(state)
    expected = encode_image_file(tiny_open_clip_encoder, path)  # the indexer's decoding (EXIF applied)
    unrotated = tiny_open_clip_encoder.encode_images([Image.open(path).convert("RGB")])[0]
    assert not np.allclose(expected, unrotated, atol=1e-4), "the test image must depend on EXIF"
    exact = np.asarray(index.embeddings, dtype=np.float32) @ expected
    assert [c.score for c in state.candidates] == pytest.approx(sorted(exact.tolist(), reverse=True)[:5], abs=1e-5)


def test_pipeline_over_an_hnsw_index_uses_the_engine(built, tiny_open_clip_encoder, pattern_folder):
    pipe = Pipeline.from_config({"name": "t", "retrieve": {"mode": "image", "k": 4}}, index=built["HNSW32"],
                                encoder=tiny_open_clip_encoder)
    result = pipe.run(Query(id="q", text="", image=str(pattern_folder / "sub" / "copy_b.png")))
    retrieve = result.trace.stages[-1].output
    assert "HNSW32" in retrieve.search
    assert sorted(retrieve.excluded) == ["copy_a.png", "p00.png", "sub/copy_b.png"]
    assert len(result.candidates) == 4


def test_refine_rescores_the_compressed_short_list_with_exact_vectors(tmp_path, tiny_open_clip_config, pattern_folder):
    """`agent-cir index --refine`: an IVF-PQ index whose short list (4 x k) is re-scored exactly (faiss RFlat)."""
    import faiss
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    _register()

    out = tmp_path / "refined"
    result = CliRunner().invoke(app, ["index", str(pattern_folder), "-o", str(out), "--model", str(tiny_open_clip_config),
                                      "--pretrained", "none", "--index-type", "IVF4,PQ8x4", "--refine", "-q"])
    assert result.exit_code == 0, result.output
    index = GalleryIndex.load(out)
    structure = faiss.downcast_index(index.faiss_index)
    assert type(structure).__name__ == "IndexRefineFlat" and structure.k_factor == 4
    encoder = index.load_encoder()
    query = encode_image_file(encoder, pattern_folder / "p05.png")
    found = search_index(index, encoder, image=pattern_folder / "p05.png", mode="image", k=5,
                                exclude_reference=False)
    exact = np.asarray(index.embeddings, dtype=np.float32) @ query
    # refined scores are exact dot products (the codes alone would only approximate them)
    assert [c.score for c in found] == pytest.approx([float(exact[index.ids.index(c.id)]) for c in found], abs=1e-5)
