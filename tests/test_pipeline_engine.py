"""The stage-major engine: stage order within chunks, per-query failure isolation, results handed over as they
finish, run == run_batch([q]), encoder identity and the recipe/index encoder check, hostile text."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_cir.errors import AgentCirError
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.encoders.recipe_identity import EncoderMismatchError, encoder_record
from agent_cir.pipeline import Pipeline, QueryFailedError
from agent_cir.query_text import repair_text
from agent_cir.stages.retrieve_plan import QueryInputError
from agent_cir.trace.io import TraceWriter, read_traces
from agent_cir.types import Query
from tests.fixtures.chat import fake_model

CAPTIONS = {
    "red_car": "a red car parked on a street",
    "blue_car": "a blue car parked on a street",
    "cat_sofa": "a grey cat sleeping on a sofa",
    "dog_grass": "a brown dog running on grass",
}

RECIPE = {
    "name": "engine",
    "models": {"vlm": {"spec": "fake:vlm"}, "llm": {"spec": "fake:llm"}},
    "caption": {"enabled": True, "model": "vlm"},
    "rewrite": {"enabled": True, "model": "llm"},
    "retrieve": {"k": 3},
    "cache": {"enabled": False},
}


class EventLog:
    """A thread-safe list of what happened, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, query_text: str) -> None:
        with self._lock:
            self.events.append((kind, query_text))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def _user_text(messages: Any) -> str:
    content = messages[-1].content
    if isinstance(content, list):
        return " ".join(block.get("text", "") for block in content if isinstance(block, dict))
    return str(content)


def _recording_models(log: EventLog) -> dict[str, Any]:
    def caption(messages: Any) -> str:
        text = _user_text(messages)
        log.add("caption", text)
        return "a red car parked on a street"

    def rewrite(messages: Any) -> str:
        text = _user_text(messages)
        log.add("rewrite", text)
        return json.dumps({"reasoning": "colour", "target_description": "a blue car parked on a street"})

    return {"vlm": fake_model(respond=caption, name="vlm"), "llm": fake_model(respond=rewrite, name="llm")}


@pytest.fixture
def references(tmp_path: Path) -> list[Path]:
    paths = []
    for index in range(7):
        path = tmp_path / f"ref{index}.png"
        Image.new("RGB", (16, 16), (30 * index, 10, 200)).save(path)
        paths.append(path)
    return paths


def _queries(references: list[Path]) -> list[Query]:
    return [Query(id=f"q{i}", text=f"make it blue number {i}", image=str(path)) for i, path in enumerate(references)]


class RecordingBatchRetrieve:
    """Stands in front of the real retrieve stage with a ``run_batch``: records each chunk it is given."""

    name = "retrieve"

    def __init__(self, inner: Any, log: EventLog) -> None:
        self.inner = inner
        self.log = log
        self.chunks: list[list[str]] = []

    def run(self, state):  # the engine must prefer run_batch
        raise AssertionError("run_batch exists: run must not be called")

    def run_batch(self, states):
        self.chunks.append([s.query.id for s in states])
        for state in states:
            self.log.add("retrieve", state.query.id)
        return [self.inner.run(state) for state in states]


def test_each_stage_serves_the_whole_chunk_before_the_next_and_results_leave_as_they_finish(
    bow_encoder, references
) -> None:
    log = EventLog()
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=_recording_models(log))
    retrieve_index = [s.name for s in pipe.stages].index("retrieve")
    batch_retrieve = RecordingBatchRetrieve(pipe.stages[retrieve_index], log)
    pipe.stages[retrieve_index] = batch_retrieve
    results = pipe.run_batch(
        _queries(references), max_concurrency=4, progress=False, chunk_size=3,
        on_result=lambda result: log.add("result", result.query_id),
    )
    assert [r.query_id for r in results] == [f"q{i}" for i in range(7)]
    # chunks of 3, 3, 1: captions, then rewrites, then one retrieval call, then the results, chunk after chunk
    expected: list[str] = []
    for size in (3, 3, 1):
        expected += ["caption"] * size + ["rewrite"] * size + ["retrieve"] * size + ["result"] * size
    assert log.kinds() == expected
    assert batch_retrieve.chunks == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["q6"]]
    retrieve_record = results[0].trace.stage("retrieve")
    assert any("amortised" in note and "over 3 queries" in note for note in retrieve_record.notes)
    assert results[0].candidates[0].id == "blue_car"


def test_a_model_stage_runs_as_many_queries_at_once_as_its_model_takes(bow_encoder, references) -> None:
    together = threading.Barrier(3, timeout=20)  # breaks (and the calls fail) unless 3 calls overlap
    active = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def caption(messages: Any) -> str:
        with lock:
            active["now"] += 1
            active["peak"] = max(active["peak"], active["now"])
        together.wait()
        with lock:
            active["now"] -= 1
        return "a red car."

    models = _recording_models(EventLog())
    models["vlm"] = fake_model(respond=caption, name="vlm", max_concurrency=3)
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=models)
    results = pipe.run_batch(_queries(references)[:6], progress=False)
    assert pipe.failures == [] and len(results) == 6
    assert active["peak"] == 3, "the model's max_concurrency is both reached and never exceeded"


class FlakyBatchRetrieve:
    """A batched retrieve that marks one query failed with an exception object, or raises for the whole batch."""

    name = "retrieve"

    def __init__(self, inner: Any, fail_whole_batch: bool) -> None:
        self.inner = inner
        self.fail_whole_batch = fail_whole_batch

    def run(self, state):
        if state.query.id == "q1":
            raise ValueError("q1 cannot be searched")
        return self.inner.run(state)

    def run_batch(self, states):
        if self.fail_whole_batch:
            raise MemoryError("the chunk did not fit")
        return [ValueError("bad vector") if s.query.id == "q1" else self.inner.run(s) for s in states]


@pytest.mark.parametrize("fail_whole_batch", [False, True])
def test_a_batched_stage_fails_only_the_queries_it_marks(bow_encoder, fail_whole_batch: bool) -> None:
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config({"name": "t"}, gallery=gallery, encoder=bow_encoder)
    pipe.stages[-1] = FlakyBatchRetrieve(pipe.stages[-1], fail_whole_batch)
    queries = [Query(id=f"q{i}", text=text) for i, text in enumerate(["a red car", "a cat", "a brown dog"])]
    results = pipe.run_batch(queries, progress=False)
    assert [r.query_id for r in results] == ["q0", "q2"] and [f["query_id"] for f in pipe.failures] == ["q1"]
    assert "ValueError" in pipe.failures[0]["error"] and "retrieve" in pipe.failures[0]["error"]
    notes = results[0].trace.stages[-1].notes
    if fail_whole_batch:  # the chunk was retried one query at a time, and the trace says so
        assert any("MemoryError" in n and "on its own" in n for n in notes)
    else:
        assert any("amortised" in n for n in notes)


def test_a_query_raising_recursion_error_in_a_stage_fails_alone(bow_encoder, references) -> None:
    log = EventLog()
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=_recording_models(log))
    rewrite = next(s for s in pipe.stages if s.name == "rewrite")
    real_run = rewrite.run

    def run(state):
        if state.query.id == "q2":
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        return real_run(state)

    rewrite.run = run
    errors: list[tuple[str, Exception]] = []
    finished: list[str] = []
    results = pipe.run_batch(
        _queries(references)[:5], max_concurrency=3, progress=False, chunk_size=5,
        on_result=lambda r: finished.append(r.query_id), on_error=lambda q, e: errors.append((q.id, e)),
    )
    assert [r.query_id for r in results] == ["q0", "q1", "q3", "q4"]
    assert sorted(finished) == ["q0", "q1", "q3", "q4"]
    [(failed_id, error)] = errors
    assert failed_id == "q2" and isinstance(error, QueryFailedError)
    assert isinstance(error.__cause__, RecursionError), "the cause is kept"
    assert "q2" in str(error) and "rewrite" in str(error) and "RecursionError" in str(error)
    assert pipe.failures == [{"query_id": "q2", "error": str(error)}]
    # a single run raises the same recorded error instead of swallowing it
    with pytest.raises(QueryFailedError, match="RecursionError"):
        pipe.run(_queries(references)[2])


def test_a_deeply_nested_model_answer_never_stops_the_run(bow_encoder, references) -> None:
    nested = "[" * 5000 + "]" * 5000

    def rewrite(messages: Any) -> str:
        return nested if "number 1" in _user_text(messages) else json.dumps({"target_description": "a blue car"})

    models = {"vlm": fake_model(["a red car."], name="vlm"), "llm": fake_model(respond=rewrite, name="llm")}
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=models)
    results = pipe.run_batch(_queries(references)[:3], progress=False)
    by_id = {r.query_id: r for r in results}
    assert {"q0", "q2"} <= set(by_id)
    # the hostile answer either parses to a fallback (the modification) or is q1's recorded failure
    if "q1" in by_id:
        assert by_id["q1"].trace.description_source == "fallback"
        assert by_id["q1"].trace.target_descriptions == ["make it blue number 1"]
    else:
        assert [f["query_id"] for f in pipe.failures] == ["q1"]


def test_keyboard_interrupt_stops_the_run(bow_encoder, references) -> None:
    log = EventLog()
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=_recording_models(log))
    caption = next(s for s in pipe.stages if s.name == "caption")
    real_run = caption.run

    def run(state):
        if state.query.id == "q4":
            raise KeyboardInterrupt
        return real_run(state)

    caption.run = run
    finished: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        pipe.run_batch(_queries(references), max_concurrency=2, progress=False, chunk_size=3,
                       on_result=lambda r: finished.append(r.query_id))
    assert sorted(finished) == ["q0", "q1", "q2"], "the first chunk was handed over; nothing after the interrupt"


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "created")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_run_equals_a_batch_of_one(bow_encoder, references) -> None:
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=_recording_models(EventLog()))
    query = _queries(references)[0]
    single = pipe.run(query)
    (batched,) = pipe.run_batch([query], progress=False)
    assert _without_timings(single.trace.to_json_dict()) == _without_timings(batched.trace.to_json_dict())
    assert [s.stage for s in single.trace.stages] == ["caption", "rewrite", "retrieve"]
    assert single.trace.totals.seconds == pytest.approx(sum(s.seconds for s in single.trace.stages))


def test_on_stage_reports_each_stage_of_a_single_run(bow_encoder, references) -> None:
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=_recording_models(EventLog()))
    seen: list[tuple[str, int]] = []
    pipe.run(_queries(references)[0], on_stage=lambda record, state: seen.append((record.stage, len(state.records))))
    assert seen == [("caption", 1), ("rewrite", 2), ("retrieve", 3)]


def test_unparsable_rewrite_falls_back_to_the_modification_in_the_trace(bow_encoder, references) -> None:
    models = {"vlm": fake_model(["a red car."], name="vlm"), "llm": fake_model(["I cannot help with that."], name="llm")}
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config(RECIPE, gallery=gallery, encoder=bow_encoder, models=models)
    trace = pipe.run(Query(id="q", text="a blue car parked on a street", image=str(references[0]))).trace
    assert trace.description_source == "fallback"
    assert trace.target_descriptions == ["a blue car parked on a street"]
    rewrite = trace.stage("rewrite")
    assert rewrite.parse_status == "fallback" and any("modification text alone" in n for n in rewrite.notes)
    assert rewrite.output.description_source == "fallback"
    assert trace.stage("retrieve").output.query_texts == ["a blue car parked on a street"]


def test_the_pipeline_owns_the_hand_over_to_retrieval(bow_encoder, references) -> None:
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    # no description stage: the modification is the target, and the pipeline (not retrieve) says so
    pipe = Pipeline.from_config({"name": "t"}, gallery=gallery, encoder=bow_encoder)
    trace = pipe.run(Query(id="q", text="a brown dog running")).trace
    assert trace.description_source == "modification" and trace.target_descriptions == ["a brown dog running"]
    # one_stage's reference description becomes the caption only through the pipeline's hand-over
    answer = {"reference_description": "a red car.", "reasoning": "r", "target_description": "a blue car on a street"}
    recipe = {"name": "one", "models": {"vlm": {"spec": "fake:vlm"}}, "one_stage": {"enabled": True},
              "cache": {"enabled": False}}
    one = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder,
                               models={"vlm": fake_model([json.dumps(answer)])})
    trace = one.run(Query(id="q", text="make it blue", image=str(references[0]))).trace
    assert trace.captions == ["a red car."] and trace.description_source == "one_stage"
    assert trace.stage("one_stage").output.reference_description == "a red car."


# ----------------------------------------------------------------------------------------- hostile text


def test_lone_surrogates_in_query_text_do_not_abort_the_run(bow_encoder, tmp_path: Path) -> None:
    gallery = RetrievalGallery.from_captions(CAPTIONS, bow_encoder)
    pipe = Pipeline.from_config({"name": "t"}, gallery=gallery, encoder=bow_encoder)
    # "\udcc3\udca9" is how Python hands over the bytes of "é" it could not decode (surrogateescape)
    queries = [Query(id="argv", text="a blue car caf\udcc3\udca9"), Query(id="json", text="a grey cat \ud800 sofa"),
               Query(id="ok", text="a brown dog", meta={"note": "raw \udfff in meta"})]
    with TraceWriter(tmp_path / "t.jsonl") as writer:
        results = pipe.run_batch(queries, progress=False, on_result=lambda r: writer.write(r.trace))
    assert [r.query_id for r in results] == ["argv", "json", "ok"] and pipe.failures == []
    assert results[0].trace.query.text == "a blue car café"
    assert results[1].trace.query.text == "a grey cat \ufffd sofa"
    raw = (tmp_path / "t.jsonl").read_bytes()
    raw.decode("utf-8")  # strict: the file is valid UTF-8
    traces = {t["query_id"]: t for t in read_traces(tmp_path / "t.jsonl")}
    assert sorted(traces) == ["argv", "json", "ok"]
    assert traces["ok"]["query"]["meta"]["note"] == "raw \udfff in meta", "written as a JSON escape, read back as is"
    assert results[1].candidates[0].id == "cat_sofa"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60))
def test_repair_text_always_gives_utf8_and_keeps_valid_text(text: str) -> None:
    repaired = repair_text(text)
    repaired.encode("utf-8")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        assert repaired != text
    else:
        assert repaired == text


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.text(alphabet=st.characters(min_codepoint=0), max_size=30), max_size=4))
def test_trace_writer_round_trips_any_text(tmp_path_factory, payload: dict[str, str]) -> None:
    path = tmp_path_factory.mktemp("tw") / "t.jsonl"
    with TraceWriter(path, mode="w") as writer:
        writer.write({"query_id": "q", "payload": payload})
    path.read_bytes().decode("utf-8")
    (record,) = read_traces(path)
    assert record["payload"] == payload


class TextRecordingEncoder:
    """Wraps the bag-of-words encoder and records every text it embeds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.info = inner.info
        self.dim = inner.dim
        self.texts: list[str] = []

    def encode_texts(self, texts, batch_size=None):
        self.texts += list(texts)
        return self.inner.encode_texts(texts)

    def encode_images(self, images, batch_size=None):
        return self.inner.encode_images(images)


def _image_gallery(encoder: Any) -> RetrievalGallery:
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    embeddings = encoder.encode_images([Image.new("RGB", (4, 4), c) for c in colours])
    return RetrievalGallery(ids=["red", "green", "blue"], paths=[None] * 3, hashes=["h0", "h1", "h2"],
                            image_embeddings=embeddings)


def test_empty_modification_text_is_image_mode_with_an_image_and_an_error_without(bow_encoder, tmp_path) -> None:
    encoder = TextRecordingEncoder(bow_encoder)
    recipe = {"name": "fusion", "retrieve": {"mode": "fusion", "text_source": "modification", "k": 3,
                                             "exclude_reference": False}}
    pipe = Pipeline.from_config(recipe, gallery=_image_gallery(bow_encoder), encoder=encoder)
    reference = tmp_path / "ref.png"
    Image.new("RGB", (8, 8), (0, 240, 10)).save(reference)
    errors: list[tuple[str, Exception]] = []
    results = pipe.run_batch(
        [Query(id="image", text="  \n", image=str(reference)), Query(id="blank", text="   ")],
        progress=False, on_error=lambda q, e: errors.append((q.id, e)),
    )
    [result] = results
    assert result.query_id == "image" and result.candidates[0].id == "green"
    retrieve = result.trace.stage("retrieve").output
    assert retrieve.mode == "image" and retrieve.query_texts == []
    [(failed_id, error)] = errors
    assert failed_id == "blank" and isinstance(error, QueryInputError)
    assert "empty" in str(error) and "modification text" in str(error)
    assert all(text.strip() for text in encoder.texts), f"an empty text was embedded: {encoder.texts!r}"


def test_empty_text_in_a_captions_only_gallery_is_a_clear_error(bow_encoder, tmp_path) -> None:
    pipe = Pipeline.from_config({"name": "t"}, gallery=RetrievalGallery.from_captions(CAPTIONS, bow_encoder),
                                encoder=bow_encoder)
    reference = tmp_path / "ref.png"
    Image.new("RGB", (8, 8)).save(reference)
    with pytest.raises(QueryInputError, match="modification text is empty"):
        pipe.run(Query(id="q", text="", image=str(reference)))


# ----------------------------------------------------------------------------------------- encoders


@pytest.fixture
def tiny_index(tmp_path: Path, tiny_open_clip_encoder) -> Path:
    from agent_cir.index import GalleryIndex

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"img{index}.png")
    GalleryIndex.build(images, tmp_path / "index", tiny_open_clip_encoder, workers=0, progress=False)
    return tmp_path / "index"


def test_a_recipe_encoder_unlike_the_index_is_refused_with_what_to_do(tiny_index: Path) -> None:
    recipe = {"name": "big", "encoder": {"backend": "open_clip", "model": "ViT-L-14", "pretrained": "openai"}}
    with pytest.raises(EncoderMismatchError) as caught:
        Pipeline.from_config(recipe, index=tiny_index)  # refused before any model weights are looked for
    message = str(caught.value)
    assert "ViT-L-14" in message and "differs in: model, pretrained" in message
    assert "agent-cir index" in message and "--use-index-encoder" in message and "use_index_encoder=True" in message
    pipe = Pipeline.from_config(recipe, index=tiny_index, use_index_encoder=True)
    assert pipe.encoder_info["architecture"].endswith("tiny-vit.json")


def test_the_index_decides_when_the_recipe_sets_no_encoder_and_its_encoder_is_built_once(tiny_index: Path) -> None:
    from agent_cir.index import GalleryIndex

    index = GalleryIndex.load(tiny_index)
    first = Pipeline.from_config({"name": "a"}, index=index, overrides={"retrieve": {"k": 2}})
    # runtime settings are not an encoder choice
    second = Pipeline.from_config({"name": "b", "encoder": {"device": "cpu", "batch_size": 64}}, index=index)
    assert first.encoder is second.encoder
    encoder = first.run(Query(id="q", text="a photo")).trace.encoder
    assert encoder.backend == "open_clip" and encoder.pretrained == "none"
    assert encoder.random_weights is True and encoder.architecture.endswith("tiny-vit.json")
    assert encoder.weights.startswith("random-init")


def test_a_passed_encoder_must_be_the_index_s(tiny_index: Path, bow_encoder) -> None:
    with pytest.raises(AgentCirError, match="was built with encoder"):
        Pipeline.from_config({"name": "a"}, index=tiny_index, encoder=bow_encoder)


def test_encoder_record_marks_random_weights(bow_encoder) -> None:
    class Info:
        def __init__(self, **info):
            self.info = info

    assert encoder_record(Info(backend="open_clip", model="ViT-B-32", pretrained="none"))["random_weights"] is True
    real = encoder_record(Info(backend="sentence-transformers", model="m", pretrained=None, weights="sha256:ab"))
    assert real["random_weights"] is False and real["weights"] == "sha256:ab" and real["architecture"] == "m"
    assert encoder_record(bow_encoder)["backend"] == "test-bag-of-words"
