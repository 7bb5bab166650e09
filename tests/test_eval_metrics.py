"""Metrics against the official numbers and hand-made rankings; submission files in the servers' format."""

from __future__ import annotations

import json

import pytest

from agent_cir.eval import metrics as M
from agent_cir.eval.submission import SubmissionError, circo_submission, cirr_submissions


# ---------- CIRCO ----------
def test_circo_reproduces_the_official_evaluation_of_the_example_submission(benchmarks_dir):
    circo = benchmarks_dir / "circo"
    annotations = json.loads((circo / "annotations" / "val.json").read_text())
    submission = json.loads((circo / "submission_examples" / "submission_val.json").read_text())
    expected = json.loads((circo / "expected_metrics_submission_val.json").read_text())
    assert expected["values_are_percent"] is True
    ground_truth = {str(a["id"]): [str(i) for i in a["gt_img_ids"]] for a in annotations}
    targets = {str(a["id"]): str(a["target_img_id"]) for a in annotations}
    rankings = {q: [str(i) for i in ids] for q, ids in submission.items()}
    got = M.circo_metrics(rankings, ground_truth, targets)
    compared = [key for key in expected if key.startswith(("mAP@", "recall@"))]
    assert len(compared) == 8
    for key in compared:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_circo_map_divides_by_min_of_k_and_ground_truths():
    gt = {"q": ["a", "b", "c"]}
    # hits at ranks 1 and 3: precisions 1/1 and 2/3
    ranking = {"q": ["a", "x", "b", "y", "z"]}
    got = M.circo_metrics(ranking, gt, {"q": "b"}, ks=(1, 2, 5))
    assert got["mAP@1"] == pytest.approx(100.0)  # (1) / min(1, 3)
    assert got["mAP@2"] == pytest.approx(50.0)  # (1) / min(2, 3)
    assert got["mAP@5"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    # Recall@K only counts the annotated target, not every ground truth
    assert got["recall@1"] == 0.0 and got["recall@5"] == 100.0


def test_duplicates_in_a_ranking_are_an_error():
    with pytest.raises(M.MetricError, match="more than once"):
        M.circo_metrics({"q": ["a", "b", "a"]}, {"q": ["a"]}, {"q": "a"})
    with pytest.raises(M.MetricError, match="q7.*more than once"):
        M.fashioniq_metrics({"q7": ["t", "t"]}, {"q7": "t"})


def test_a_failed_query_counts_as_a_miss():
    got = M.fashioniq_metrics({"a": ["t"], "b": None}, {"a": "t", "b": "t"})
    assert got["recall@10"] == pytest.approx(50.0)


# ---------- CIRR ----------
def _cirr(ranking, reference="ref", target="tgt", members=("ref", "tgt", "m1", "m2", "m3", "m4")):
    return M.cirr_metrics({"q": ranking}, {"q": reference}, {"q": target}, {"q": list(members)})


def test_cirr_removes_the_reference_before_counting_ranks():
    others = [f"g{i}" for i in range(60)]
    # target at position 2 behind the reference: rank 1 once the reference is removed
    got = _cirr(["ref", "tgt", "m1", "m2", "m3", "m4", *others])
    assert got["recall@1"] == 100.0
    # target at position 51 with the reference above it: rank 50 -> a hit at 50
    ranking = ["ref", *others[:49], "tgt", "m1", "m2", "m3", "m4"]
    assert _cirr(ranking)["recall@50"] == 100.0
    # without the reference in the list the same target is at rank 50 as well, at 51 it is a miss
    assert _cirr([*others[:50], "tgt", "m1", "m2", "m3", "m4"])["recall@50"] == 0.0


def test_cirr_subset_ranks_only_the_other_members():
    others = [f"g{i}" for i in range(20)]
    # full-gallery rank of the target is poor, but among the 5 non-reference members it is second
    ranking = [*others, "m2", "ref", "tgt", "m1", "m3", "m4"]
    got = _cirr(ranking)
    assert got["recall@10"] == 0.0
    assert got["recall_subset@1"] == 0.0
    assert got["recall_subset@2"] == 100.0 and got["recall_subset@3"] == 100.0


def test_cirr_subset_needs_every_member_in_the_ranking():
    with pytest.raises(M.MetricError, match="lacks 1 of the 5"):
        _cirr(["tgt", "m1", "m2", "m3"])  # m4 missing (a truncated ranking)


def test_cirr_metric_keys():
    got = _cirr(["tgt", "m1", "m2", "m3", "m4"])
    assert list(got) == [f"recall@{k}" for k in (1, 5, 10, 50)] + [f"recall_subset@{k}" for k in (1, 2, 3)]


# ---------- FashionIQ ----------
def test_fashioniq_does_not_remove_the_reference():
    ranking = ["ref", *[f"g{i}" for i in range(9)], "tgt"]  # target 11th because the reference is kept
    got = M.fashioniq_metrics({"q": ranking}, {"q": "tgt"})
    assert got == {"recall@10": 0.0, "recall@50": 100.0}


def test_fashioniq_mean_over_categories():
    per_category = {
        "dress": {"recall@10": 10.0, "recall@50": 30.0},
        "shirt": {"recall@10": 20.0, "recall@50": 40.0},
        "toptee": {"recall@10": 30.0, "recall@50": 50.0},
    }
    mean = M.fashioniq_mean(per_category)
    assert mean == {"recall@10": 20.0, "recall@50": 40.0, "average": 30.0}


# ---------- GeneCIS ----------
def test_genecis_ranks_the_target_among_its_own_gallery():
    gallery = ["tgt", "d1", "d2", "d3"]
    ranking = ["x1", "d2", "x2", "tgt", "d1", "d3", "x3"]  # x* belong to other queries' galleries
    got = M.genecis_metrics({"q": ranking}, {"q": "tgt"}, {"q": gallery})
    assert got == {"recall@1": 0.0, "recall@2": 100.0, "recall@3": 100.0}
    with pytest.raises(M.MetricError, match="lacks"):
        M.genecis_metrics({"q": ["tgt", "d1"]}, {"q": "tgt"}, {"q": gallery})


def _target_rank(dataset: str, ids: list[str], meta: dict, reference_id: str | None) -> int | None:
    from agent_cir.eval.benchmarks import BENCHMARKS
    from agent_cir.retrieval.ranking import Ranking
    from agent_cir.types import Candidate, Query

    benchmark = BENCHMARKS[dataset]
    query = Query(id="q", text="t", reference_id=reference_id, meta=meta)
    ranking = Ranking.from_candidates([Candidate(id=i, score=1.0 - n / 10) for n, i in enumerate(ids)])
    return benchmark.target_rank(query, benchmark.scored_ranking(query, ranking))


def test_target_rank_follows_each_benchmarks_convention():
    ranking = ["ref", "a", "tgt", "b"]
    assert _target_rank("cirr", ranking, {"target": "tgt"}, "ref") == 2  # the reference is not ranked
    assert _target_rank("fashioniq", ranking, {"target": "tgt"}, "ref") == 3
    assert _target_rank("circo", ranking, {"target": "tgt"}, "ref") == 3
    # GeneCIS: the rank inside the official list (target first): "b" is below the target, so rank 1; above, 2
    assert _target_rank("genecis", ranking, {"target": "tgt", "gallery": ["tgt", "b"]}, None) == 1
    assert _target_rank("genecis", ["b", "tgt"], {"target": "tgt", "gallery": ["tgt", "b"]}, None) == 2
    assert _target_rank("genecis", ["b"], {"target": "tgt", "gallery": ["tgt", "b"]}, None) is None
    assert _target_rank("cirr", ["a"], {"target": "tgt"}, "ref") is None
    assert _target_rank("cirr", ["a"], {}, "ref") is None



# ---------- submissions ----------
def test_circo_submission_has_50_unique_integer_ids_per_query():
    ranking = [str(1000 + i) for i in range(60)]
    payload = circo_submission({"0": ranking, "1": ranking[::-1]}, query_ids=["0", "1"])
    assert set(payload) == {"0", "1"}
    assert payload["0"] == [1000 + i for i in range(50)]
    assert all(len(ids) == 50 and len(set(ids)) == 50 and all(isinstance(i, int) for i in ids) for ids in payload.values())
    with pytest.raises(SubmissionError, match="needs 50"):
        circo_submission({"0": ranking[:49]})
    with pytest.raises(SubmissionError, match="duplicate"):
        circo_submission({"0": ranking[:50] + ranking[:1]})
    with pytest.raises(SubmissionError, match="1 test queries have no ranking"):
        circo_submission({"0": ranking}, query_ids=["0", "1"])


def test_cirr_submissions_carry_version_and_metric_and_drop_the_reference():
    members = ["ref", "tgt", "m1", "m2", "m3", "m4"]
    ranking = ["ref", "m3", *[f"g{i}" for i in range(60)], "m1", "tgt", "m2", "m4"]
    recall, subset = cirr_submissions({"12063": ranking}, {"12063": "ref"}, {"12063": members})
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["version"] == "rc2" and subset["metric"] == "recall_subset"
    assert len(recall["12063"]) == 50 and "ref" not in recall["12063"] and recall["12063"][0] == "m3"
    assert subset["12063"] == ["m3", "m1", "tgt"]


# ---------- CIRCO per-semantic-aspect mAP@10 ----------
def _official_style_semantic_map10(rankings, ground_truth, aspects):
    """Written from the official evaluator's definition (CIRCO src/evaluation.py:54-58, 66-68, 78-80):
    precision at each hit, AP@10 = sum of the first 10 / min(#GT, 10), appended once per annotated aspect."""
    import numpy as np

    collected = {}
    for query_id, predictions in rankings.items():
        labels = np.isin(np.array(predictions, dtype=object), np.array(ground_truth[query_id], dtype=object))
        precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
        ap10 = float(np.sum(precisions[:10]) / min(len(ground_truth[query_id]), 10))
        for aspect in aspects[query_id]:
            collected.setdefault(aspect, []).append(ap10)
    return {aspect: 100 * float(np.mean(values)) for aspect, values in collected.items()}


def test_circo_semantic_map10_matches_the_official_definition_on_the_example_submission(benchmarks_dir):
    circo = benchmarks_dir / "circo"
    annotations = json.loads((circo / "annotations" / "val.json").read_text())
    submission = json.loads((circo / "submission_examples" / "submission_val.json").read_text())
    ground_truth = {str(a["id"]): [str(i) for i in a["gt_img_ids"]] for a in annotations}
    aspects = {str(a["id"]): list(a.get("semantic_aspects") or []) for a in annotations}
    rankings = {q: [str(i) for i in ids] for q, ids in submission.items()}
    got = M.circo_semantic_map10(rankings, ground_truth, aspects)
    expected = _official_style_semantic_map10(rankings, ground_truth, aspects)
    assert expected and set(got) == {f"semantic_mAP@10/{a}" for a in expected}
    for aspect, value in expected.items():
        assert got[f"semantic_mAP@10/{aspect}"] == pytest.approx(value, abs=1e-9), aspect
    assert set(expected) <= set(M.CIRCO_SEMANTIC_ASPECTS)


def test_circo_semantic_map10_by_hand():
    gt = {"q1": ["a", "b"], "q2": ["c"], "q3": ["d"]}
    rankings = {"q1": ["a", "x", "b"], "q2": ["x"] * 0 + ["y", "c"], "q3": ["d"]}
    aspects = {"q1": ["cardinality", "addition"], "q2": ["cardinality"], "q3": []}
    got = M.circo_semantic_map10(rankings, gt, aspects)
    # q1: (1 + 2/3) / 2; q2: (1/2) / 1; q3 carries no aspect
    assert got["semantic_mAP@10/cardinality"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.5) / 2)
    assert got["semantic_mAP@10/addition"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert set(got) == {"semantic_mAP@10/cardinality", "semantic_mAP@10/addition"}
    # hits past rank 10 do not count
    late = M.circo_semantic_map10({"q": [str(i) for i in range(10)] + ["t"]}, {"q": ["t"]}, {"q": ["negation"]})
    assert late == {"semantic_mAP@10/negation": 0.0}
    with pytest.raises(M.MetricError):
        M.circo_semantic_map10({"q": ["a", "a"]}, {"q": ["a"]}, {"q": ["negation"]})
