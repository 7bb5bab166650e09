"""Benchmark runs: resume after a crash, refusal of another recipe, submissions, the CLI, compare, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from agent_cir.config import available_recipes, load_recipe
from agent_cir.eval.compare import compare_runs
from agent_cir.eval.datasets import MissingImagesError
from agent_cir.eval.resume import RunMismatchError, repair_torn_tail
from agent_cir.eval.runner import run_eval


def _surrogate_args(mini: dict, encoder, recipe: str = "surrogate_caption_mod") -> dict:
    return dict(
        dataset="cirr", split="val", images_root=None, recipe=recipe, gallery_captions=mini["captions"],
        annotations=mini["annotations"], encoder=encoder, progress=False, max_concurrency=2,
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_resume_after_a_crash_loses_no_query_and_matches_an_uninterrupted_run(mini_cirr, tmp_path, bow_encoder):
    args = _surrogate_args(mini_cirr, bow_encoder)
    uninterrupted = run_eval(out_dir=tmp_path / "full", **args)
    assert uninterrupted.metrics["queries"] == {"selected": 12, "evaluated": 12, "not_evaluated": 0}

    finished = []

    def crash_after_five(result):
        finished.append(result.query_id)
        if len(finished) == 5:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a run

    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_eval(out_dir=out, on_query=crash_after_five, **args)
    traces = out / "traces.jsonl"
    assert [t["query_id"] for t in _lines(traces)] == finished
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "metrics.json").exists()
    with open(traces, "a", encoding="utf-8") as handle:  # a writer killed mid-line
        handle.write('{"schema_version": "1.0", "query_id": "torn')

    rerun = []
    resumed = run_eval(out_dir=out, on_query=lambda result: rerun.append(result.query_id), **args)
    assert len(rerun) == 7 and not set(rerun) & set(finished)
    records = _lines(traces)  # every line parses: the torn one was cut, not glued to the next
    assert sorted(r["query_id"] for r in records) == sorted(t["query_id"] for t in _lines(tmp_path / "full" / "traces.jsonl"))
    reference = {r["query_id"]: r["eval"]["ranking"] for r in _lines(tmp_path / "full" / "traces.jsonl")}
    assert {r["query_id"]: r["eval"]["ranking"] for r in records} == reference
    assert resumed.metrics["metrics"] == uninterrupted.metrics["metrics"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["sessions"]) == 2
    assert "torn" in manifest["sessions"][1]["note"]

    again = run_eval(out_dir=out, on_query=lambda result: rerun.append(result.query_id), **args)
    assert len(rerun) == 7  # nothing left to run
    assert again.metrics["metrics"] == uninterrupted.metrics["metrics"]


def test_repair_torn_tail_cuts_only_an_unfinished_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n')
    assert repair_torn_tail(path) is False and path.read_text() == '{"a": 1}\n{"b": 2}\n'
    path.write_text('{"a": 1}\n{"b": 2')
    assert repair_torn_tail(path) is True and path.read_text() == '{"a": 1}\n'
    path.write_text('{"b": 2')
    assert repair_torn_tail(path) is True and path.read_text() == ""


def test_another_recipe_into_the_same_folder_is_refused(mini_cirr, tmp_path, bow_encoder):
    out = tmp_path / "run"
    run_eval(out_dir=out, limit=3, **_surrogate_args(mini_cirr, bow_encoder))
    before = (out / "traces.jsonl").read_text()
    with pytest.raises(RunMismatchError, match="another recipe_hash"):
        run_eval(out_dir=out, limit=3, **_surrogate_args(mini_cirr, bow_encoder, recipe="surrogate_modification"))
    with pytest.raises(RunMismatchError, match="another recipe_hash"):
        run_eval(out_dir=out, limit=3, overrides={"retrieve": {"text_source": "caption"}},
                 **_surrogate_args(mini_cirr, bow_encoder))
    assert (out / "traces.jsonl").read_text() == before


def test_a_run_that_finished_no_query_does_not_lock_its_folder(mini_cirr, tmp_path, bow_encoder, monkeypatch):
    import agent_cir.encoders
    from agent_cir.encoders import ModelWeightsError

    def no_weights(config):
        raise ModelWeightsError(f"{config.model}: not available offline")

    monkeypatch.setattr(agent_cir.encoders, "create_encoder", no_weights)
    out = tmp_path / "run"
    args = _surrogate_args(mini_cirr, None)
    with pytest.raises(ModelWeightsError):
        run_eval(out_dir=out, limit=2, **args)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    args["encoder"] = bow_encoder  # fixed, with another recipe: starts afresh instead of being refused
    outcome = run_eval(out_dir=out, limit=2, overrides={"encoder": {"model": "/local/minilm"}}, **args)
    assert outcome.metrics["queries"]["evaluated"] == 2
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 1


def test_surrogate_run_records_metrics_conventions_and_manifest(mini_cirr, tmp_path, bow_encoder):
    outcome = run_eval(out_dir=tmp_path / "run", **_surrogate_args(mini_cirr, bow_encoder))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["surrogate"] is True and "NOT comparable" in metrics["surrogate_note"]
    assert set(metrics["metrics"]) == {f"recall@{k}" for k in (1, 5, 10, 50)} | {f"recall_subset@{k}" for k in (1, 2, 3)}
    assert metrics["model_calls"] == 0 and metrics["seconds_per_query"] is not None
    manifest = outcome.run
    gallery_size = len(mini_cirr["ids"])
    # CIRR ranks the whole gallery (subset metric) and removes the reference
    assert manifest["recipe"]["retrieve"]["k"] == gallery_size and manifest["recipe"]["retrieve"]["exclude_reference"]
    assert manifest["recipe_hash"] == outcome.metrics["recipe"]["hash"]
    assert set(manifest["dataset_files"]) == {
        str(mini_cirr["annotations"] / "captions" / "cap.rc2.val.json"),
        str(mini_cirr["annotations"] / "image_splits" / "split.rc2.val.json"),
    }
    assert manifest["packages"]["numpy"] and manifest["encoder"]["backend"] == "test-bag-of-words"
    for trace in _lines(tmp_path / "run" / "traces.jsonl"):
        assert trace["recipe"]["hash"] == manifest["recipe_hash"]
        assert trace["query"]["reference_caption"] and trace["query"]["image_path"] is None
        assert len(trace["results"]) == 50 and trace["eval"]["ranked"] == gallery_size - 1
        members = set(trace["query"]["meta"]["subset"]) - {trace["query"]["reference_id"]}
        assert members <= set(trace["eval"]["ranking"])  # exact subset ranking kept beyond the top 50
        assert trace["query"]["reference_id"] not in trace["eval"]["ranking"]


def test_query_selection_by_file_and_limit(mini_cirr, tmp_path, bow_encoder):
    first = json.loads((mini_cirr["annotations"] / "captions" / "cap.rc2.val.json").read_text())
    wanted = [str(first[3]["pairid"]), str(first[7]["pairid"])]
    outcome = run_eval(out_dir=tmp_path / "q", query_ids=wanted, **_surrogate_args(mini_cirr, bow_encoder))
    assert sorted(t["query_id"] for t in _lines(tmp_path / "q" / "traces.jsonl")) == sorted(wanted)
    assert outcome.metrics["queries"]["selected"] == 2
    from agent_cir.eval.run_inputs import EvalInputError

    with pytest.raises(EvalInputError, match="1 query ids are not in this dataset"):
        run_eval(out_dir=tmp_path / "bad", query_ids=["no-such-id"], **_surrogate_args(mini_cirr, bow_encoder))


def test_cirr_test1_submissions_have_the_server_format(mini_cirr_test, tmp_path, bow_encoder):
    args = _surrogate_args(mini_cirr_test, bow_encoder)
    args["split"] = "test"
    outcome = run_eval(out_dir=tmp_path / "test1", **args)
    assert outcome.metrics["metrics"] == {} and outcome.metrics["submission"]["complete"] is True
    recall = json.loads((tmp_path / "test1" / "submission_cirr_test1_recall.json").read_text())
    subset = json.loads((tmp_path / "test1" / "submission_cirr_test1_recall_subset.json").read_text())
    queries = json.loads((mini_cirr_test["annotations"] / "captions" / "cap.rc2.test1.json").read_text())
    assert (recall.pop("version"), recall.pop("metric")) == ("rc2", "recall")
    assert (subset.pop("version"), subset.pop("metric")) == ("rc2", "recall_subset")
    assert set(recall) == set(subset) == {str(q["pairid"]) for q in queries}
    for query in queries:
        top = recall[str(query["pairid"])]
        assert len(top) == 50 == len(set(top)) and query["reference"] not in top
        members = set(query["img_set"]["members"]) - {query["reference"]}
        assert len(subset[str(query["pairid"])]) == 3 and set(subset[str(query["pairid"])]) <= members


def test_missing_images_stop_the_run_before_any_model(benchmarks_dir, tmp_path):
    with pytest.raises(MissingImagesError, match="images are missing|does not exist"):
        run_eval("fashioniq", "val", tmp_path / "nothing_here", "clip_fusion", tmp_path / "out",
                 annotations=benchmarks_dir, categories=["dress"], progress=False)
    assert not (tmp_path / "out" / "traces.jsonl").exists()


def test_no_images_and_no_captions_is_refused(benchmarks_dir, tmp_path):
    from agent_cir.eval.run_inputs import EvalInputError

    with pytest.raises(EvalInputError, match="--gallery-captions"):
        run_eval("cirr", "val", None, "surrogate_caption", tmp_path / "out", annotations=benchmarks_dir)


def _mini_fashioniq(root: Path) -> tuple[Path, Path]:
    """A FashionIQ-format dress split over generated images (10 gallery items, 4 queries)."""
    annotations, images = root / "fashioniq", root / "fiq_images" / "images"
    (annotations / "captions").mkdir(parents=True)
    (annotations / "image_splits").mkdir(parents=True)
    images.mkdir(parents=True)
    ids = [f"B00TEST{i:03d}" for i in range(10)]
    for position, image_id in enumerate(ids):
        Image.new("RGB", (40, 48), (25 * position, 200 - 15 * position, 90)).save(images / f"{image_id}.png")
    captions = [{"candidate": ids[i], "target": ids[(i + 3) % 10], "captions": ["is darker.", "has red"]} for i in range(4)]
    (annotations / "captions" / "cap.dress.val.json").write_text(json.dumps(captions))
    (annotations / "image_splits" / "split.dress.val.json").write_text(json.dumps(ids))
    return annotations, images.parent


def test_image_benchmark_builds_and_reuses_the_index(tmp_path, tiny_open_clip_encoder, monkeypatch):
    annotations, images_root = _mini_fashioniq(tmp_path)
    args = dict(dataset="fashioniq", split="val", images_root=images_root, recipe="clip_fusion",
                annotations=annotations, categories=["dress"], encoder=tiny_open_clip_encoder, progress=False)
    outcome = run_eval(out_dir=tmp_path / "run", **args)
    assert (tmp_path / "run" / "index" / "fashioniq-dress-val" / "CURRENT").is_file()  # index generations (agent_cir/index/generation.py)
    assert set(outcome.metrics["metrics"]) == {"dress"}
    assert set(outcome.metrics["metrics"]["dress"]) == {"recall@10", "recall@50"}
    # 10 gallery images, reference kept (FashionIQ convention): every target is within the top 10
    assert outcome.metrics["metrics"]["dress"]["recall@10"] == 100.0
    traces = _lines(tmp_path / "run" / "traces.jsonl")
    assert {t["query_id"] for t in traces} == {f"dress-{i}" for i in range(4)}
    assert all(len(t["eval"]["ranking"]) == 10 and t["query"]["image_path"].endswith(".png") for t in traces)
    assert outcome.run["recipe"]["retrieve"]["exclude_reference"] is False
    # a second run into a new folder reuses the shared index: no image is encoded again (the references
    # are gallery items, so their embeddings come from the index too)
    shared = tmp_path / "shared_index"
    run_eval(out_dir=tmp_path / "a", index_dir=shared, **args)
    encoded = []
    real_encode = tiny_open_clip_encoder.encode_images
    monkeypatch.setattr(tiny_open_clip_encoder, "encode_images",
                        lambda images, batch_size=None: encoded.append(len(images)) or real_encode(images, batch_size))
    again = run_eval(out_dir=tmp_path / "b", index_dir=shared, **args)
    assert encoded == []
    assert again.metrics["metrics"] == outcome.metrics["metrics"]


def test_genecis_ranks_each_query_within_its_own_gallery(tmp_path, tiny_open_clip_encoder):
    images = tmp_path / "coco" / "val2017"
    images.mkdir(parents=True)
    for image_id in range(1, 21):
        Image.new("RGB", (36, 30), (12 * image_id, 255 - 12 * image_id, 40)).save(images / f"{image_id:012d}.jpg")
    records = [
        {"condition": "dog", "reference": {"val_image_id": 1 + q}, "target": {"val_image_id": 5 + q},
         "gallery": [{"val_image_id": 8 + 4 * q + d} for d in range(4)]}
        for q in range(3)
    ]
    annotations = tmp_path / "genecis"
    annotations.mkdir()
    (annotations / "focus_object.json").write_text(json.dumps(records))
    (annotations / "change_object.json").write_text("[]")
    outcome = run_eval("genecis", "val", tmp_path / "coco", "clip_fusion", tmp_path / "run", annotations=annotations,
                       categories=["focus_object"], encoder=tiny_open_clip_encoder, progress=False)
    union = 3 + 12  # targets + distractors; references are encoded from their files
    assert outcome.run["recipe"]["retrieve"]["k"] == max(50, union)
    assert set(outcome.metrics["metrics"]) == {"focus_object"}
    for trace in _lines(tmp_path / "run" / "traces.jsonl"):
        gallery = trace["query"]["meta"]["gallery"]
        assert len(gallery) == 5 and set(gallery) <= set(trace["eval"]["ranking"])
        own = [i for i in trace["eval"]["ranking"] if i in set(gallery)]
        assert trace["eval"]["target_rank"] == own.index(trace["query"]["meta"]["target"]) + 1
    ranks = [t["eval"]["target_rank"] for t in _lines(tmp_path / "run" / "traces.jsonl")]
    assert outcome.metrics["metrics"]["focus_object"]["recall@1"] == pytest.approx(100 * sum(r == 1 for r in ranks) / 3)


# ---------- compare ----------
def test_compare_lists_metric_deltas_and_biggest_rank_changes(mini_cirr, tmp_path, bow_encoder):
    run_eval(out_dir=tmp_path / "a", **_surrogate_args(mini_cirr, bow_encoder, recipe="surrogate_modification"))
    run_eval(out_dir=tmp_path / "b", **_surrogate_args(mini_cirr, bow_encoder, recipe="surrogate_caption_mod"))
    comparison = compare_runs(tmp_path / "a", tmp_path / "b", top=3)
    rows = {row["metric"]: row for row in comparison["metrics"]}
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]
    assert rows["recall@10"]["a"] == metrics_a["recall@10"]
    assert rows["recall@10"]["delta"] == pytest.approx(rows["recall@10"]["b"] - rows["recall@10"]["a"])
    assert comparison["common_queries"] == 12
    ranks_a = {t["query_id"]: t["eval"]["target_rank"] for t in _lines(tmp_path / "a" / "traces.jsonl")}
    ranks_b = {t["query_id"]: t["eval"]["target_rank"] for t in _lines(tmp_path / "b" / "traces.jsonl")}
    changed = [q for q in ranks_a if ranks_a[q] != ranks_b[q]]
    assert comparison["improved"] + comparison["worsened"] == len(changed)
    shifts = [abs(c["log_shift"]) for c in comparison["changes"]]
    assert shifts == sorted(shifts, reverse=True) and len(shifts) == min(3, len(changed))
    for change in comparison["changes"]:
        assert (change["rank_a"], change["rank_b"]) == (ranks_a[change["query_id"]], ranks_b[change["query_id"]])


# ---------- CLI ----------
def _cli():
    from agent_cir.cli import _register, app

    _register()
    return app


def test_eval_and_compare_commands(mini_cirr, tmp_path, bow_encoder, monkeypatch):
    import agent_cir.encoders

    monkeypatch.setattr(agent_cir.encoders, "create_encoder", lambda config: bow_encoder)
    app, runner = _cli(), CliRunner()
    ids = tmp_path / "ids.txt"
    first = json.loads((mini_cirr["annotations"] / "captions" / "cap.rc2.val.json").read_text())
    ids.write_text("# two queries\n" + "\n".join(str(q["pairid"]) for q in first[:2]) + "\n")
    common = ["eval", "--dataset", "cirr", "--split", "val", "--annotations", str(mini_cirr["annotations"]),
              "--gallery-captions", str(mini_cirr["captions"]), "--quiet"]
    result = runner.invoke(app, [*common, "--config", "surrogate_caption", "--out", str(tmp_path / "a"), "--queries", str(ids)])
    assert result.exit_code == 0, result.output
    assert "recall_subset@3" in result.output and "text surrogate" in result.output
    result = runner.invoke(app, [*common, "--config", "surrogate_modification", "--out", str(tmp_path / "b"), "--limit", "2",
                                 "--set", "retrieve.k=60"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "run.json").read_text())["user_overrides"] == {"retrieve": {"k": 60}}
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "recall@50" in result.output and "2 queries in both runs" in result.output
    # a user error is one red line and exit code 2, no traceback
    result = runner.invoke(app, [*common, "--config", "surrogate_caption_mod", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "another recipe_hash" in result.output and "Traceback" not in result.output


def test_recipes_command_lists_every_packaged_recipe():
    result = CliRunner().invoke(_cli(), ["recipes"])
    assert result.exit_code == 0, result.output
    for name in available_recipes():
        assert name in result.output
    assert "CIReVL (Karthik et al., ICLR 2024" in result.output


EXPECTED_RECIPES = {
    "default", "cirevl", "osrcir", "weimocir", "pdv", "square", "imagescope", "text_only", "image_only",
    "clip_fusion", "surrogate_modification", "surrogate_caption", "surrogate_caption_mod", "surrogate_rewrite",
}


def test_every_packaged_recipe_validates_and_says_what_it_mirrors():
    recipes = available_recipes()
    assert EXPECTED_RECIPES <= set(recipes)
    for name, path in recipes.items():
        recipe = load_recipe(path)
        assert recipe.name == name and recipe.mirrors and recipe.differences, name
        for model in recipe.models.values():
            assert model.spec.split(":", 1)[0] in {"openai", "ollama", "hf", "hf-vlm"}, (name, model.spec)
    for name, source in [("surrogate_modification", "modification"), ("surrogate_caption", "caption"),
                         ("surrogate_caption_mod", "caption+modification")]:
        recipe = load_recipe(name)
        assert recipe.encoder.backend == "sentence-transformers" and recipe.retrieve.text_source == source
        assert recipe.retrieve.gallery_captions.weight == 1.0 and not recipe.models
    rewrite = load_recipe("surrogate_rewrite")
    assert rewrite.rewrite.enabled and rewrite.rewrite.prompt == "rewrite_taxonomy"
    assert rewrite.models["llm"].base_url == "http://127.0.0.1:8080/v1"
    default = load_recipe("default")
    assert default.rewrite.prompt == "rewrite_cot" and default.retrieve.mode == "fusion" and default.rerank.enabled


@pytest.mark.slow
def test_cli_surrogate_run_on_20_cirr_val_queries_with_minilm(benchmarks_dir, tmp_path, minilm_dir):
    from tests.fixtures.eval import write_mini_cirr

    mini = write_mini_cirr(benchmarks_dir, tmp_path / "mini", queries=20, gallery=130)
    result = CliRunner().invoke(_cli(), [
        "eval", "--dataset", "cirr", "--split", "val", "--annotations", str(mini["annotations"]),
        "--gallery-captions", str(mini["captions"]), "--config", "surrogate_caption_mod",
        "--set", f"encoder.model={minilm_dir}", "--out", str(tmp_path / "run"), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["queries"]["evaluated"] == 20 and metrics["surrogate"] is True
    # a real text model on real queries: the caption+modification query finds most targets in a 130-image gallery
    assert metrics["metrics"]["recall@50"] >= 60.0
    assert 0.0 <= metrics["metrics"]["recall_subset@1"] <= metrics["metrics"]["recall_subset@3"] <= 100.0


# ---------------------------------------------------------------- issue 18: the run folder is ours alone
def test_a_folder_of_the_users_own_files_is_refused_untouched(mini_cirr, tmp_path, bow_encoder):
    from agent_cir.eval.run_lock import RunFolderError

    out = tmp_path / "mine"
    out.mkdir()
    (out / "run.json").write_text('{"my": "notes"}', encoding="utf-8")
    (out / "metrics.json").write_text("my numbers", encoding="utf-8")
    with pytest.raises(RunFolderError, match="not an agent_cir run"):
        run_eval(out_dir=out, limit=2, **_surrogate_args(mini_cirr, bow_encoder))
    assert (out / "run.json").read_text(encoding="utf-8") == '{"my": "notes"}'
    assert (out / "metrics.json").read_text(encoding="utf-8") == "my numbers"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "run.json"]


def test_a_second_eval_into_a_folder_being_written_is_refused(mini_cirr, tmp_path, bow_encoder):
    from agent_cir.eval.run_lock import RunFolderError, RunFolderLock

    out = tmp_path / "run"
    run_eval(out_dir=out, limit=2, **_surrogate_args(mini_cirr, bow_encoder))
    before = (out / "run.json").read_text(encoding="utf-8")
    with RunFolderLock(out):  # another eval holding the folder
        with pytest.raises(RunFolderError, match=f"{out}.*another `agent-cir eval`"):
            run_eval(out_dir=out, limit=3, **_surrogate_args(mini_cirr, bow_encoder))
    assert (out / "run.json").read_text(encoding="utf-8") == before
    assert run_eval(out_dir=out, limit=3, **_surrogate_args(mini_cirr, bow_encoder)).metrics["queries"]["evaluated"] == 3


def test_failures_that_a_resume_finishes_leave_failures_jsonl(mini_cirr, tmp_path, bow_encoder, monkeypatch):
    from agent_cir.pipeline import Pipeline

    real_run_batch = Pipeline.run_batch
    failing = {"on": True}

    def first_two_fail(self, queries, on_error=None, **kwargs):
        queries = list(queries)
        if failing["on"]:
            for query in queries[:2]:
                on_error(query, RuntimeError("server down"))
            queries = queries[2:]
        return real_run_batch(self, queries, on_error=on_error, **kwargs)

    monkeypatch.setattr(Pipeline, "run_batch", first_two_fail)
    out = tmp_path / "run"
    args = _surrogate_args(mini_cirr, bow_encoder)
    first = run_eval(out_dir=out, limit=4, **args)
    failed = [r["query_id"] for r in _lines(out / "failures.jsonl")]
    assert len(failed) == 2 and first.metrics["queries"]["evaluated"] == 2
    failing["on"] = False
    resumed = run_eval(out_dir=out, limit=4, **args)
    assert resumed.metrics["queries"]["evaluated"] == 4
    assert not (out / "failures.jsonl").exists()


def test_an_encoder_config_edited_in_place_does_not_resume(mini_cirr, tmp_path, bow_encoder):
    config = tmp_path / "my-encoder.json"
    config.write_text('{"embed_dim": 32, "vision_cfg": {"layers": 2}}', encoding="utf-8")
    out = tmp_path / "run"
    args = _surrogate_args(mini_cirr, bow_encoder)
    run_eval(out_dir=out, limit=2, overrides={"encoder": {"model": str(config)}}, **args)
    run_eval(out_dir=out, limit=3, overrides={"encoder": {"model": str(config)}}, **args)  # unchanged: resumes
    config.write_text('{"embed_dim": 32, "vision_cfg": {"layers": 12}}', encoding="utf-8")
    with pytest.raises(RunMismatchError, match="encoder_files"):
        run_eval(out_dir=out, limit=3, overrides={"encoder": {"model": str(config)}}, **args)


def test_with_the_cache_off_a_kill_in_the_middle_of_a_chunk_loses_no_model_answer(benchmarks_dir, tmp_path, bow_encoder):
    """Stage-major runs take a whole chunk (the recipe's chunk_size) through each stage before any of its queries is
    written. With the cache off every answer is journaled as it arrives (eval/answers.py), so the chunk size only
    decides how often traces are written: the resume asks again only what had not answered."""
    from tests.fixtures.chat import fake_model
    from tests.fixtures.eval import write_mini_cirr

    mini = write_mini_cirr(benchmarks_dir, tmp_path / "mini", queries=30)
    calls = []
    kill = {"at": 12}

    def rewriter(messages):
        calls.append(1)
        if len(calls) == kill["at"]:
            raise KeyboardInterrupt  # the process is stopped in the middle of the chunk's rewrites
        return '{"reasoning": "r", "target_description": "a photo"}'

    args = _surrogate_args(mini, bow_encoder, recipe="surrogate_rewrite")
    args["max_concurrency"] = 1
    run = {"out_dir": tmp_path / "run", "models": {"llm": fake_model(respond=rewriter)},
           "overrides": {"cache": {"enabled": False}}, **args}
    with pytest.raises(KeyboardInterrupt):
        run_eval(**run)
    traces = tmp_path / "run" / "traces.jsonl"
    # the 30 queries are one chunk: none had passed every stage, so only the journal can have kept the 11 answers
    assert not traces.exists() or _lines(traces) == []
    calls.clear()
    kill["at"] = 0
    resumed = run_eval(**run)
    assert len(calls) == 30 - 11, "the resume asked again a call that had answered"
    assert resumed.metrics["queries"]["evaluated"] == 30
