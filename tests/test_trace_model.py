"""The typed trace (agent_cir.trace): stages return typed outputs, ``Result.trace`` is a ``Trace``, 1.0 and 2.0
records load, stage records are typed by kind, a stage writing a wrong type is caught when the trace is built,
unknown keys survive, the writer's JSON layout is the one of the dict traces, and readers get clear errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_cir.config import OneStageConfig
from agent_cir.report.analyse import analyse
from agent_cir.stages.one_stage import OneStageStage
from agent_cir.trace.io import TraceWriter, read_typed_traces
from agent_cir.trace.build import build_trace
from agent_cir.trace.load import TraceFormatError, load_trace, salvage_trace
from agent_cir.trace.model import (
    CaptionRecord,
    OneStageRecord,
    OtherStageRecord,
    RerankRecord,
    RetrieveRecord,
    RewriteRecord,
    TRACE_SCHEMA_VERSION,
    Trace,
)
from agent_cir.trace.outputs import CaptionOutput, RerankOutput, RetrieveOutput, RewriteOutput
from agent_cir.types import Candidate, Query, QueryState, StageRecord
from tests.fixtures.chat import fake_model
from tests.fixtures.report import DEMO_MODIFICATION, DEMO_TARGET

# A 1.0 record written by hand, the way agent_cir 0.x wrote them: no encoder, no created, no totals.
HAND_WRITTEN_1_0 = {
    "schema_version": "1.0",
    "query_id": "dev-42",
    "query": {"id": "dev-42", "text": "make it red", "image_path": "ref.jpg", "image_hash": "ab" * 32,
              "reference_id": "ref.jpg", "reference_caption": None, "target_text": None, "candidate_ids": None,
              "meta": {"ground_truth": ["b.jpg"]}},
    "recipe": {"name": "two-stage", "hash": "cd" * 32},
    "captions": ["a blue car"],
    "reasoning": "blue becomes red",
    "target_descriptions": ["a red car"],
    "description_source": "rewrite",
    "stages": [
        {"stage": "caption", "output": {"captions": ["a blue car"]}, "parse_status": "ok", "notes": [],
         "seconds": 0.4, "skipped": None, "model_calls": 1, "cache_hits": 0,
         "calls": [{"backend": "openai", "model": "gpt-4o", "prompt_name": "caption", "prompt_hash": "ef" * 32,
                    "raw": "a blue car", "cache": "miss", "seconds": 0.4, "usage": None, "parse_status": "ok"}]},
        {"stage": "rewrite", "output": {"target_descriptions": ["a red car"], "reasoning": "blue becomes red",
                                        "description_source": "rewrite"}, "parse_status": "ok"},
        {"stage": "retrieve", "output": {"mode": "text", "k": 3, "query_texts": ["a red car"],
                                         "candidates": [{"rank": 1, "id": "b.jpg", "score": 0.31},
                                                        {"rank": 2, "id": 7, "score": 0.30}]}},
    ],
    "results": [{"rank": 1, "id": "b.jpg", "path": "/g/b.jpg", "score": 0.31},
                {"rank": 2, "id": "7", "path": None, "score": 0.30}],
}


@pytest.fixture
def pipeline_trace(demo_pipeline, tmp_path) -> dict:
    """A trace the current code writes (caption -> rewrite -> retrieve -> grid rerank, real stages), as the JSON
    record the writer put in the file."""
    result = demo_pipeline.run(Query(id="q-demo", text=DEMO_MODIFICATION, image=demo_pipeline.gallery.paths[3]))
    path = tmp_path / "written.jsonl"
    with TraceWriter(path, mode="w") as writer:
        writer.write(result.trace)
    return json.loads(path.read_text(encoding="utf-8"))


def _one_stage_trace(tmp_path: Path) -> dict:
    from PIL import Image

    image = tmp_path / "ref.png"
    Image.new("RGB", (8, 8), "blue").save(image)
    answer = {"reference_description": "a blue square", "reasoning": "blue -> red", "target_description": "a red square"}
    state = QueryState(query=Query(id="q1", text="make it red", image=str(image)))
    state.records.append(OneStageStage(OneStageConfig(enabled=True), fake_model([json.dumps(answer)])).run(state))
    return build_trace(state, "one-stage", "00" * 32, seconds=0.1)


# ------------------------------------------------------------------------------------------- reading


def test_a_hand_written_1_0_record_loads_with_defaults_for_what_it_lacks():
    trace = load_trace(HAND_WRITTEN_1_0)
    assert trace.schema_version == "1.0" and trace.encoder is None and trace.created is None
    assert trace.totals.model_calls == 0 and trace.eval is None
    caption, rewrite, retrieve = trace.stages
    assert isinstance(caption, CaptionRecord) and caption.calls[0].cache == "miss"
    assert isinstance(rewrite, RewriteRecord) and rewrite.output.description_source == "rewrite"
    assert rewrite.calls == [] and rewrite.skipped is None  # absent in the record: defaults
    assert isinstance(retrieve, RetrieveRecord) and retrieve.output.k == 3
    # A numeric id written by another tool reads as its text, in rankings and results alike.
    assert [c.id for c in retrieve.output.candidates] == ["b.jpg", "7"] == [r.id for r in trace.results]
    assert trace.stage("rerank") is None


def test_a_trace_of_the_current_code_loads_as_1_0_2_0_and_3_0(pipeline_trace):
    assert pipeline_trace["schema_version"] == TRACE_SCHEMA_VERSION == "3.0"
    # 3.0: the final order says which score made it, and each reranked row carries that score.
    assert pipeline_trace["ordered_by"] == "judge" and pipeline_trace["rounds"] == []
    reranked = pipeline_trace["results"][:4]
    assert all("judge_score" in row and "final_score" in row for row in reranked)
    assert all("judge_score" not in row for row in pipeline_trace["results"][4:])
    for record in (pipeline_trace, {**pipeline_trace, "schema_version": "2.0"},
                   {**pipeline_trace, "schema_version": "1.0"}):
        trace = load_trace(record)
        assert [type(s) for s in trace.stages] == [CaptionRecord, RewriteRecord, RetrieveRecord, RerankRecord]
        retrieve = trace.stage("retrieve")
        assert retrieve.output.candidates[0].id == pipeline_trace["stages"][2]["output"]["candidates"][0]["id"]
        assert retrieve.output.mode == "fusion" and retrieve.output.k == 8
        rerank = trace.stage("rerank")
        assert rerank.output.method == "grid" and rerank.output.k == 4
        assert [s.id for s in rerank.output.scores] == rerank.output.final_order
        assert sorted(rerank.output.grids[0].cells.values()) == sorted(rerank.output.input_order)
        assert rerank.calls[0].prompt_name and rerank.model_calls == 1
        assert trace.stage("rewrite").output.target_descriptions == [DEMO_TARGET] == trace.target_descriptions
        assert [r.id for r in trace.results] == [c["id"] for c in pipeline_trace["results"]]


def test_3_0_round_trips_through_the_model_and_json(pipeline_trace, tmp_path):
    assert load_trace(pipeline_trace).to_dict() == pipeline_trace
    path = tmp_path / "traces.jsonl"
    with TraceWriter(path, mode="w") as writer:
        writer.write(pipeline_trace)
    [typed] = list(read_typed_traces(path))
    assert typed.to_dict() == json.loads(path.read_text())
    assert list(typed.to_dict()) == list(pipeline_trace), "the JSON layout (key order) is the one build_trace wrote"
    # The layout of the dict traces, key for key: readers of plain JSON keep working.
    assert list(pipeline_trace) == [
        "schema_version", "query_id", "query", "recipe", "encoder", "captions", "reasoning", "target_descriptions",
        "description_source", "stages", "results", "results_total", "ordered_by", "rounds", "totals",
        "artifacts_dir", "created"]
    assert all(list(stage) == ["stage", "output", "calls", "parse_status", "notes", "seconds", "skipped", "round",
                               "model_calls", "cache_hits"] for stage in pipeline_trace["stages"])
    assert list(pipeline_trace["stages"][0]["output"]) == ["captions"]
    assert list(pipeline_trace["results"][0]) == ["rank", "id", "path", "score", "judge_score", "final_score"]
    assert list(pipeline_trace["stages"][2]["output"]["candidates"][0]) == ["rank", "id", "score"]


def test_the_one_stage_record_is_typed(tmp_path):
    trace = load_trace(_one_stage_trace(tmp_path))
    record = trace.stage("one_stage")
    assert isinstance(record, OneStageRecord)
    assert record.output.reference_description == "a blue square"
    assert record.output.target_descriptions == ["a red square"] and record.output.description_source == "one_stage"


def test_unknown_keys_are_kept_at_every_level(pipeline_trace):
    record = copy.deepcopy(pipeline_trace)
    record["written_by"] = "agent_cir 3.1"
    record["stages"][2]["output"]["new_retrieval_field"] = {"nested": [1, 2]}
    record["stages"][2]["output"]["candidates"][0]["why"] = "a newer row field"
    record["stages"][3]["calls"][0]["latency_ms"] = 12
    record["stages"].append({"stage": "my_filter", "output": {"kept": 3}, "seconds": 0.1})
    trace = load_trace(record)
    assert trace.extra("written_by") == "agent_cir 3.1"
    assert trace.stage("retrieve").output.new_retrieval_field == {"nested": [1, 2]}
    assert trace.stage("retrieve").output.candidates[0].why == "a newer row field"
    other = trace.stage("my_filter")
    assert isinstance(other, OtherStageRecord) and other.output == {"kept": 3}
    assert trace.to_dict() == record


def test_records_that_are_not_traces_raise_clear_errors():
    with pytest.raises(TraceFormatError, match="JSON object; got list"):
        load_trace([1, 2])
    with pytest.raises(TraceFormatError, match=r"query_id: Field required"):
        load_trace({"schema_version": "2.0", "stages": []})
    with pytest.raises(TraceFormatError, match=r"schema_version '4\.0'.*1\.x, 2\.x, 3\.x"):
        load_trace({"schema_version": "4.0", "query_id": "x"})
    bad = copy.deepcopy(HAND_WRITTEN_1_0)
    bad["stages"][2]["output"]["k"] = "many"
    with pytest.raises(TraceFormatError, match=r"trace 'dev-42'.*stages\[2\]\.output\.k: .*integer.*'many'"):
        load_trace(bad)
    bad = copy.deepcopy(HAND_WRITTEN_1_0)
    bad["stages"][0]["calls"][0]["cache"] = "sometimes"
    with pytest.raises(TraceFormatError, match=r"stages\[0\]\.calls\[0\]\.cache"):
        load_trace(bad)


def test_read_typed_traces_names_the_line(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps(HAND_WRITTEN_1_0) + "\n" + json.dumps({"query_id": "x", "results": "no"}) + "\n")
    with pytest.raises(TraceFormatError, match=r"traces\.jsonl, line 2: .*results"):
        list(read_typed_traces(path))


# ------------------------------------------------------------------------------------------- writing


def _state_with(record: StageRecord) -> QueryState:
    state = QueryState(query=Query(id="q", text="make it red"))
    state.records.append(record)
    state.candidates = [Candidate(id="a.jpg", score=0.5, rank=1)]
    return state


@pytest.mark.parametrize(("output", "field", "found"), [
    ({"mode": "text", "k": "50"}, r"stages\[0\]\.output\.k", "'50'"),  # a number written as text
    ({"mode": "text", "candidates": [{"rank": 1, "id": "a.jpg", "score": "0.5"}]},
     r"stages\[0\]\.output\.candidates\[0\]\.score", "'0.5'"),
    ({"mode": "text", "query_texts": ("a red car",)}, r"stages\[0\]\.output\.query_texts", "a red car"),  # a tuple
])
def test_a_stage_writing_a_wrong_type_is_caught_when_the_trace_is_built(output, field, found):
    with pytest.raises(TraceFormatError, match=rf"query 'q': a stage wrote .*{field}: .*{found}"):
        build_trace(_state_with(StageRecord(stage="retrieve", output=output)), "r", "h", seconds=0.1)
    # The same keys with the right types are fine.
    build_trace(_state_with(StageRecord(stage="retrieve", output={"mode": "text", "k": 50})), "r", "h", 0.1)


def test_a_wrong_type_in_a_rerank_output_is_caught_too():
    record = StageRecord(stage="rerank", output={"scores": [{"id": "a.jpg", "judge": "high"}]})
    with pytest.raises(TraceFormatError, match=r"stages\[0\]\.output\.scores\[0\]\.judge"):
        build_trace(_state_with(record), "r", "h", seconds=0.1)


# ------------------------------------------------------------------------------------------- Result.stage


def test_result_trace_is_the_typed_trace_the_stages_built(demo_pipeline):
    result = demo_pipeline.run(Query(id="q-demo", text=DEMO_MODIFICATION, image=demo_pipeline.gallery.paths[3]))
    trace = result.trace
    assert isinstance(trace, Trace) and trace.query_id == "q-demo"
    # Each stage's own typed output is what the trace holds.
    assert [type(s.output) for s in trace.stages] == [CaptionOutput, RewriteOutput, RetrieveOutput, RerankOutput]
    retrieve = result.stage("retrieve")
    assert isinstance(retrieve, RetrieveRecord) and retrieve is trace.stages[2]
    assert [c.rank for c in retrieve.output.candidates] == list(range(1, len(retrieve.output.candidates) + 1))
    assert retrieve.output.candidates_total == len(result.ranking)
    rerank = result.stage("rerank")
    assert isinstance(rerank, RerankRecord) and rerank.output.final_order == [c.id for c in result.candidates[:4]]
    assert [r.id for r in trace.results[:4]] == rerank.output.final_order and trace.ordered_by == result.ordered_by
    assert trace.totals.model_calls == sum(s.model_calls for s in trace.stages) > 0
    assert result.stage("one_stage") is None


def test_a_stage_record_keeps_the_output_object_the_stage_built(tmp_path):
    from agent_cir.trace.outputs import OneStageOutput

    state = QueryState(query=Query(id="q1", text="make it red"))
    output = OneStageOutput(target_descriptions=["a red square"], reasoning="r", description_source="one_stage",
                            my_extra=3)
    state.records.append(StageRecord(stage="one_stage", output=output))
    trace = build_trace(state, "r", "h", seconds=0.1)
    assert trace.stage("one_stage").output is output, "validated where the stage built it, not copied again"
    assert trace.to_json_dict()["stages"][0]["output"] == {"target_descriptions": ["a red square"], "reasoning": "r",
                                                          "description_source": "one_stage", "my_extra": 3}
    # A user's own stage may still give a plain dict (kept as it is) or a model (kept as its data).
    state.records = [StageRecord(stage="my_filter", output={"kept": 3}),
                     StageRecord(stage="my_other", output=CaptionOutput(captions=["x"]))]
    trace = build_trace(state, "r", "h", seconds=0.1)
    assert [type(s) for s in trace.stages] == [OtherStageRecord, OtherStageRecord]
    assert [s.output for s in trace.stages] == [{"kept": 3}, {"captions": ["x"]}]


def test_a_typed_output_of_the_wrong_kind_is_refused():
    state = _state_with(StageRecord(stage="retrieve", output=CaptionOutput(captions=["x"])))
    with pytest.raises(TraceFormatError, match=r"query 'q': a stage wrote .*stages\[0\]\.output"):
        build_trace(state, "r", "h", seconds=0.1)


# ------------------------------------------------------------------------------------------- display (salvage)


def test_salvage_drops_only_the_bad_fields_and_names_them():
    bad = copy.deepcopy(HAND_WRITTEN_1_0)
    bad["stages"][2]["output"]["k"] = "many"
    bad["stages"][2]["output"]["candidates"].insert(0, {"rank": 1, "score": 0.9})  # a row without an id
    bad["captions"] = "not a list"
    trace, notes = salvage_trace(bad)
    assert trace.stage("retrieve").output.k is None and trace.captions == []
    assert [c.id for c in trace.stage("retrieve").output.candidates] == ["b.jpg", "7"]
    assert trace.target_descriptions == ["a red car"], "the rest of the record is kept"
    assert sorted(notes) == sorted([
        "trace 'dev-42': dropped captions: Input should be a valid list",
        "trace 'dev-42': dropped stages[2].output.candidates[0]: no id",
        "trace 'dev-42': dropped stages[2].output.k: Input should be a valid integer, unable to parse string as "
        "an integer",
    ])
    assert bad["captions"] == "not a list", "the caller's record is not changed"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
PATHS = [("captions",), ("query",), ("query", "meta"), ("results", 0), ("results", 0, "id"), ("stages",),
         ("stages", 0), ("stages", 0, "calls"), ("stages", 2, "output"), ("stages", 2, "output", "candidates", 1),
         ("stages", 2, "output", "candidates", 1, "rank"), ("totals",), ("encoder",), ("eval",)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replacements=st.lists(st.tuples(st.sampled_from(PATHS), JSON), min_size=1, max_size=4))
def test_any_value_in_any_field_is_shown_or_refused_never_a_crash(replacements):
    record = copy.deepcopy(HAND_WRITTEN_1_0)
    for path, value in replacements:
        node = record
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed the path
    trace, notes = salvage_trace(record)
    assert trace.query_id == "dev-42"
    # What was dropped is said; what was not touched is still there.
    assert all(note.startswith("trace 'dev-42': dropped ") for note in notes)
    assert trace.reasoning == "blue becomes red"
    view = analyse(record)  # the report on top of it
    assert view.query_id == "dev-42" and all(isinstance(row.id, str) for row in view.trace.results)


def test_the_report_says_which_records_and_fields_it_could_not_read(tmp_path):
    from agent_cir.report.load import load_traces

    bad_field = copy.deepcopy(HAND_WRITTEN_1_0)
    bad_field["stages"][2]["output"]["k"] = "many"
    future = {"schema_version": "4.0", "query_id": "from-the-future"}
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (bad_field, future)))
    traces, notes = load_traces(path)
    assert [t.query_id for t in traces] == ["dev-42"] and traces[0].retrieval.output.k is None
    assert traces[0].retrieval.output.rows[0].id == "b.jpg", "the rest of the retrieve record is shown"
    assert any("1 record(s) of traces.jsonl cannot be read" in n and "'4.0'" in n for n in notes)
    assert any("1 field(s) of the wrong type were left out" in n and "stages[2].output.k" in n for n in notes)


# ------------------------------------------------------------------------------------------- the one reader


def test_one_reader_strict_or_salvaging(tmp_path):
    path = tmp_path / "traces.jsonl"
    bad_field = copy.deepcopy(HAND_WRITTEN_1_0)
    bad_field["query_id"] = "bad-field"
    bad_field["captions"] = "not a list"
    path.write_bytes(json.dumps(HAND_WRITTEN_1_0).encode() + b"\n" + b'{"query_id": "x", "t": "\xff"}\n'
                     + json.dumps(bad_field).encode() + b"\n" + b'["not", "a", "trace"]\n' + b'{"query_id": "torn"')
    with pytest.raises(TraceFormatError, match=r"traces\.jsonl, line 2: not valid UTF-8"):
        list(read_typed_traces(path))  # strict (resume, compare): the file and the line, never a traceback
    notes: list[str] = []
    traces = list(read_typed_traces(path, salvage=True, notes=notes))
    assert [t.query_id for t in traces] == ["dev-42", "bad-field"] and traces[1].captions == []
    assert traces[1].target_descriptions == ["a red car"], "only the bad field is left out"
    assert any("not valid UTF-8" in n and "line 2" in n for n in notes)
    assert any("not complete JSON" in n and "line 5" in n for n in notes)
    assert any("not trace records" in n for n in notes)
    assert any("wrong type were left out" in n and "captions" in n for n in notes)


def test_the_partial_trace_of_a_running_query_is_built_in_trace_build():
    from agent_cir.trace.build import partial_trace

    state = QueryState(query=Query(id="q", text="make it red"))
    state.captions = ["a blue car"]
    state.records.append(StageRecord(stage="caption", output=CaptionOutput(captions=["a blue car"]), seconds=0.2))
    state.records.append(StageRecord(stage="retrieve", output={"mode": "text", "k": "many"}))  # a bad field
    trace, notes = partial_trace(state)
    assert isinstance(trace, Trace) and not trace.has_results and trace.captions == ["a blue car"]
    assert trace.stage("caption").output.captions == ["a blue car"]
    assert trace.stage("retrieve").output.mode == "text" and trace.stage("retrieve").output.k is None
    assert notes == ["trace '': dropped stages[1].output.k: Input should be a valid integer, unable to parse string "
                     "as an integer"]


def test_the_derived_values_the_report_shows():
    record = copy.deepcopy(HAND_WRITTEN_1_0)
    record["query"]["meta"] = {"ground_truth": "b.jpg", "subset": [7, "c.jpg"], "note": "x"}
    record["stages"][2]["output"]["candidates"] = [{"id": "z", "score": 0.1, "rank": 2}, {"id": "y", "score": 0.2}]
    record["stages"].append({"stage": "rerank", "output": {
        "grids": [{"path": None, "cells": {"10": "j", "9": "i", "1": "a"}}],
        "repairs": ["an old plain line", {"window": 0, "pass": 1, "repairs": []},
                    {"window": 1, "item": 2, "repairs": ["appended_missing"], "appended": [3]}]}})
    trace = load_trace(record)
    assert trace.ground_truth == ["b.jpg"] and trace.subset == ["7", "c.jpg"] and trace.other_meta == {"note": "x"}
    # a row without a rank takes its position; the retrieval head is shown in rank order
    assert [(r.rank, r.id) for r in trace.retrieval.output.rows] == [(2, "z"), (2, "y")], "a stable sort"
    assert trace.retrieval.output.ranked == 2 and trace.retrieval.output.candidates[1].rank == 0, "not changed"
    rerank = trace.rerank
    assert rerank.output.grids[0].ordered_cells == [("1", "a"), ("9", "i"), ("10", "j")]
    assert rerank.output.repair_lines == ["an old plain line", "window 1, item 2: appended_missing (appended: [3])"]
    assert trace.final_order_by == "judge" and trace.ordered_by is None, "a 1.0 trace: judge after a rerank"
    assert trace.has_results and trace.error is None


def test_rounds_and_the_refine_that_started_each():
    record = {"schema_version": "3.0", "query_id": "q", "stages": [
        # the engine stamps a record with the state's round after the stage ran: refine has started round 1
        {"stage": "refine", "round": 1, "output": {"previous_description": "a car",
                                                   "target_descriptions": ["a red car"], "findings": ["not red"]}}],
        "rounds": [{"round": 0, "head": ["a", "b"], "confidences": [0.2, None], "decision": "refine"},
                   {"round": 1, "head": ["c"], "confidences": [0.9], "decision": "accept"}]}
    trace = load_trace(record)
    assert trace.rounds[0].head_confidences == [("a", 0.2), ("b", None)]
    assert trace.refine_before(1).findings == ["not red"] and trace.refine_before(0) is None
