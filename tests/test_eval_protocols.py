"""Per-dataset protocols: CIRCO keeps the reference, CIRR removes it, GeneCIS scores the official 15-list, test
submissions need every query, hostile annotation files, resume identity, secrets, by_dataset and published numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.config import load_recipe, recipe_from_dict, redacted_recipe_dump
from agent_cir.eval import metrics as M
from agent_cir.eval.benchmarks import BENCHMARKS, CIRCO
from agent_cir.eval.compare import compare_published, format_published
from agent_cir.eval.benchmarks import load_benchmark
from agent_cir.eval.datasets import BenchmarkDataError
from agent_cir.eval.datasets.genecis import crop_instance, load_genecis, materialise_crops
from agent_cir.eval.resume import RunMismatchError, check_resume, run_identity
from agent_cir.eval.runner import run_eval
from agent_cir.eval.submission import SubmissionError


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _average_precision(ranking: list[str], relevant: set[str], k: int) -> float:
    """AP@k as the CIRCO paper defines it: sum over hits in the top k of precision at that rank, / min(k, |GT|)."""
    hits, total = 0, 0.0
    for position, item in enumerate(ranking[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / position
    return total / min(k, len(relevant))


# ---------- CIRCO: the reference stays in the gallery ----------
def test_circo_map_with_the_reference_ranked_first_is_counted_as_a_miss_at_rank_one():
    ranking = ["ref", "g1", "x", "g2", "y"]
    got = M.circo_metrics({"0": ranking}, {"0": ["g1", "g2", "g3"]}, {"0": "g1"}, ks=(5,))
    # by hand: hits at ranks 2 and 4 -> (1/2 + 2/4) / 3 = 1/3; without the reference it would be (1 + 2/3) / 3
    assert got["mAP@5"] == pytest.approx(100 / 3)
    assert got["recall@5"] == 100.0


def _mini_circo(root: Path, split: str = "val") -> tuple[Path, Path]:
    images = root / "coco" / "unlabeled2017"
    images.mkdir(parents=True)
    for image_id in range(1, 13):
        Image.new("RGB", (40, 32), (20 * image_id, 240 - 18 * image_id, 60 + 7 * image_id)).save(
            images / f"{image_id:012d}.jpg")
    queries = []
    for q in range(3):
        record = {"id": q, "reference_img_id": 1 + q, "relative_caption": "is brighter", "shared_concept": "x"}
        if split == "val":
            record.update(target_img_id=5 + q, gt_img_ids=[5 + q, 9 + q])
        queries.append(record)
    annotations = root / "circo"
    (annotations / "annotations").mkdir(parents=True)
    (annotations / "annotations" / "val.json").write_text(json.dumps(queries if split == "val" else []))
    (annotations / "annotations" / f"{split}.json").write_text(json.dumps(queries))
    return annotations, images.parent


def _published(dataset: str, split: str, metric: str, value: float, backbone: str = "ViT-L/14") -> dict:
    return {"dataset": dataset, "split": split, "metric": metric, "value": value, "backbone": backbone,
            "source": "Test et al., Table 9"}


def test_circo_run_keeps_the_reference_whatever_the_recipe_says_and_compares_with_published(
    tmp_path, tiny_open_clip_encoder
):
    annotations, images_root = _mini_circo(tmp_path)
    recipe = load_recipe("image_only", {"retrieve": {"exclude_reference": True},
                                        "published": [_published("circo", "val", "mAP@5", 10.0)]})
    outcome = run_eval("circo", "val", images_root, recipe, tmp_path / "run", annotations=annotations,
                       encoder=tiny_open_clip_encoder, progress=False)
    assert outcome.run["recipe"]["retrieve"]["exclude_reference"] is False
    assert outcome.run["protocol"]["benchmark"] == "circo" and outcome.run["protocol"]["exclude_reference"] is False
    assert any("kept in the gallery" in note for note in outcome.run["protocol"]["notes"])
    traces = {t["query_id"]: t for t in _lines(tmp_path / "run" / "traces.jsonl")}
    gt = {str(q): {str(5 + q), str(9 + q)} for q in range(3)}
    for query_id, trace in traces.items():
        ranking = trace["eval"]["ranking"]
        # image-only retrieval: the reference is its own nearest neighbour, and it stays there
        assert ranking[0] == trace["query"]["reference_id"] and len(ranking) == 12
    expected = np.mean([_average_precision(traces[q]["eval"]["ranking"], gt[q], 5) for q in gt]) * 100
    assert outcome.metrics["metrics"]["mAP@5"] == pytest.approx(expected)
    assert any("official one 123403" in note for note in outcome.metrics["notes"])

    comparison = compare_published(tmp_path / "run")
    [row] = comparison["rows"]
    assert row["ours"] == pytest.approx(expected) and row["paper"] == 10.0 and row["delta"] == pytest.approx(expected - 10)
    assert any("backbone" in d for d in comparison["differences"])  # tiny test model vs ViT-L/14
    assert any("not comparable" in d for d in comparison["differences"])  # 12-image gallery
    assert "Test et al., Table 9" in format_published(comparison)


def test_circo_test_submission_is_refused_when_a_query_is_missing(tmp_path, tiny_open_clip_encoder):
    annotations, images_root = _mini_circo(tmp_path, split="test")
    args = dict(annotations=annotations, encoder=tiny_open_clip_encoder, progress=False,
                overrides={"retrieve": {"k": 50}})
    outcome = run_eval("circo", "test", images_root, "image_only", tmp_path / "part", limit=2, **args)
    submission = outcome.metrics["submission"]
    assert submission["files"] == [] and "missing ids: 2" in submission["refused"]
    assert not (tmp_path / "part" / "submission_circo_test.json").exists()
    with pytest.raises(SubmissionError, match=r"1 test queries have no ranking \(missing ids: 2\)"):
        CIRCO().write_submission(tmp_path, load_benchmark("circo", "test", annotations)[0], [],
                                 {"0": [str(i) for i in range(50)], "1": [str(i) for i in range(50)]})


# ---------- CIRR: the reference is removed whatever the recipe says ----------
def test_cirr_removes_the_reference_even_when_the_recipe_keeps_it(mini_cirr, tmp_path, bow_encoder):
    outcome = run_eval("cirr", "val", None, "surrogate_caption_mod", tmp_path / "run", limit=4,
                       gallery_captions=mini_cirr["captions"], annotations=mini_cirr["annotations"],
                       encoder=bow_encoder, progress=False, overrides={"retrieve": {"exclude_reference": False}})
    assert outcome.run["recipe"]["retrieve"]["exclude_reference"] is True
    assert outcome.run["protocol"]["applied"]["retrieve"]["exclude_reference"] is True
    for trace in _lines(tmp_path / "run" / "traces.jsonl"):
        assert trace["query"]["reference_id"] not in trace["eval"]["ranking"]


def test_every_benchmark_declares_its_protocol():
    assert set(BENCHMARKS) == {"circo", "cirr", "fashioniq", "genecis"}
    rules = {name: b.exclude_reference for name, b in BENCHMARKS.items()}
    assert rules == {"circo": False, "cirr": True, "fashioniq": False, "genecis": False}
    for benchmark in BENCHMARKS.values():
        record = benchmark.protocol_record()
        assert record["gallery"] and record["reference"] and record["sources"]


# ---------- GeneCIS: the official 15-list ----------
def test_genecis_scores_the_official_list_with_copies_as_the_official_sort_does():
    gallery = ["t", "d1", "d1", "t", "d2", "d3"]  # target first; a distractor and the target each listed twice
    # d1 above the target counts twice (two entries of the 15 outrank entry 0); the target's own copy ties with it
    ranking = ["d1", "t", "d2", "d3"]
    assert M.genecis_list_rank(ranking, gallery, "q") == 3
    got = M.genecis_metrics({"q": ranking}, {"q": "t"}, {"q": gallery})
    assert got == {"recall@1": 0.0, "recall@2": 0.0, "recall@3": 100.0}
    assert M.genecis_list_rank(["t", "d1", "d2", "d3"], gallery, "q") == 1


def test_genecis_average_needs_all_four_tasks():
    from agent_cir.eval.benchmarks import GeneCIS

    per_task = {"change_object": {"recall@1": 10.0}, "focus_object": {"recall@1": 20.0}}
    notes: list[str] = []
    result = GeneCIS().aggregate(dict(per_task), notes)
    assert "average" not in result and "change_attribute, focus_attribute did not run" in notes[0]
    per_task.update(change_attribute={"recall@1": 30.0}, focus_attribute={"recall@1": 40.0})
    assert GeneCIS().aggregate(per_task, [])["average"] == {"recall@1": 25.0}


def _vaw_record(image_id: int, box: list[float]) -> dict:
    return {"image_id": image_id, "instance_bbox": box}


def test_genecis_attribute_task_loads_the_vaw_format_and_crops_like_the_official_code(tmp_path):
    vg = tmp_path / "VG_100K_all"
    vg.mkdir()
    rng = np.random.default_rng(0)
    for image_id in (11, 12, 13):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(vg / f"{image_id}.jpg", quality=95)
    records = [{
        "condition": "red", "reference": _vaw_record(11, [10, 5, 20, 30]), "target": _vaw_record(12, [40, 10, 30, 10]),
        "gallery": [_vaw_record(13, [0, 0, 8, 8]), _vaw_record(12, [40, 10, 30, 10]), _vaw_record(11, [50, 20, 10, 10])],
    }]
    annotations = tmp_path / "genecis"
    annotations.mkdir()
    (annotations / "change_attribute.json").write_text(json.dumps(records))
    split = load_genecis(annotations, "change_attribute", vg)
    [query] = split.queries
    target = "vg12_40_10_30_10"
    assert query.meta["gallery"] == [target, "vg13_0_0_8_8", target, "vg11_50_20_10_10"]  # official list, copy kept
    assert query.candidate_ids == [target, "vg13_0_0_8_8", "vg11_50_20_10_10"]
    split.check_images()
    materialise_crops(split, tmp_path / "crops")
    assert Path(query.image) == tmp_path / "crops" / "vg11_10_5_20_30.png"
    # by hand, from vaw_dataset.py: box [40,10,30,10] in an 80x60 image, dilation 0.7:
    # left = 40 - 21 = 19, top = 10 - 7 = 3, right = min(80, 19 + 51) = 70, bottom = min(60, 3 + 17) = 20
    # crop 51 x 17 -> black square 51 x 51 with the crop pasted at y = (51 - 17) // 2 = 17
    with Image.open(vg / "12.jpg") as source:
        pixels = np.asarray(source.convert("RGB"))
    expected = np.zeros((51, 51, 3), np.uint8)
    expected[17:34, :, :] = pixels[3:20, 19:70, :]
    with Image.open(tmp_path / "crops" / f"{target}.png") as crop:
        assert np.array_equal(np.asarray(crop), expected)
    assert crop_instance(Image.new("L", (10, 10)), (0, 0, 10, 4)).size == (10, 10)


def test_genecis_missing_attribute_file_is_named(tmp_path):
    (tmp_path / "change_object.json").write_text("[]")
    with pytest.raises(BenchmarkDataError, match=r"focus_attribute\.json not found.*facebookresearch/genecis"):
        load_benchmark("genecis", "val", tmp_path, categories=["focus_attribute"])
    [only] = load_benchmark("genecis", "val", tmp_path)  # default: the tasks whose file is there
    assert only.category == "change_object"


# ---------- hostile annotation files ----------
def _circo_file(tmp_path: Path, records: list) -> Path:
    folder = tmp_path / "circo" / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "val.json").write_text(json.dumps(records))
    return tmp_path / "circo"


GOOD = {"id": 0, "reference_img_id": 1, "relative_caption": "x", "target_img_id": 2, "gt_img_ids": [2, 3]}


@pytest.mark.parametrize("change, message", [
    ({"reference_img_id": "000000000001.jpg"}, "reference_img_id is '000000000001.jpg'"),
    ({"gt_img_ids": "23"}, "gt_img_ids is str"),
    ({"gt_img_ids": 2}, "gt_img_ids is int"),
    ({"gt_img_ids": [2, "3"]}, r"gt_img_ids\[1\] is '3'"),
    ({"relative_caption": ["a"]}, "relative_caption is list"),
])
def test_hostile_circo_fields_are_named_with_the_file(tmp_path, change, message):
    folder = _circo_file(tmp_path, [{**GOOD, **change}])
    with pytest.raises(BenchmarkDataError, match=message) as info:
        load_benchmark("circo", "val", folder)
    assert str(folder / "annotations" / "val.json") in str(info.value)


def test_duplicate_query_ids_are_refused_naming_the_ids_and_the_file(tmp_path, benchmarks_dir):
    folder = _circo_file(tmp_path, [GOOD, {**GOOD, "reference_img_id": 7}, {**GOOD, "id": 5}, {**GOOD, "id": 5}])
    with pytest.raises(BenchmarkDataError, match=r"val\.json: 2 id values occur more than once \(0, 5\)"):
        load_benchmark("circo", "val", folder)
    records = json.loads((benchmarks_dir / "cirr" / "captions" / "cap.rc2.val.json").read_text())[:3]
    cirr = tmp_path / "cirr"
    (cirr / "captions").mkdir(parents=True)
    (cirr / "image_splits").mkdir()
    (cirr / "image_splits" / "split.rc2.val.json").write_text(
        (benchmarks_dir / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    (cirr / "captions" / "cap.rc2.val.json").write_text(json.dumps(records + records[:1]))
    with pytest.raises(BenchmarkDataError, match=rf"cap\.rc2\.val\.json: 1 pairid values .*\({records[0]['pairid']}\)"):
        load_benchmark("cirr", "val", cirr)


def test_cli_prints_a_hostile_file_error_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    _register()
    folder = _circo_file(tmp_path, [{**GOOD, "gt_img_ids": "2"}])
    result = CliRunner().invoke(app, ["eval", "--dataset", "circo", "--annotations", str(folder), "--images",
                                      str(tmp_path), "--config", "image_only", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "gt_img_ids is str" in result.output and "Traceback" not in result.output


# ---------- resume identity ----------
def _surrogate(mini: dict, encoder, **extra) -> dict:
    return dict(dataset="cirr", split="val", images_root=None, gallery_captions=mini["captions"],
                annotations=mini["annotations"], encoder=encoder, progress=False, **extra)


def test_runtime_settings_resume_into_the_same_run(mini_cirr, tmp_path, bow_encoder):
    out = tmp_path / "run"
    run_eval(recipe="surrogate_caption_mod", out_dir=out, limit=3, **_surrogate(mini_cirr, bow_encoder))
    ran = []
    again = run_eval(recipe="surrogate_caption_mod", out_dir=out, limit=4, on_query=lambda r: ran.append(r.query_id),
                     overrides={"encoder": {"device": "cuda:1", "batch_size": 7}, "max_concurrency": 9,
                                "cache": {"path": str(tmp_path / "other.sqlite")}},
                     **_surrogate(mini_cirr, bow_encoder))
    assert len(ran) == 1 and again.metrics["queries"]["evaluated"] == 4  # resumed: only the new query ran
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2


def test_an_edited_prompt_template_refuses_to_resume(tmp_path):
    template = tmp_path / "mine.j2"
    template.write_text("Describe {{ caption }} after {{ modification }}")
    recipe = recipe_from_dict({"models": {"llm": {"spec": "fake:x"}},
                               "rewrite": {"enabled": True, "model": "llm", "prompt": str(template)}})
    from agent_cir.eval.provenance import prompt_hashes

    def identity():
        return run_identity(recipe, prompt_hashes(recipe), dataset="cirr", split="val")

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"identity": identity()}))
    (out / "traces.jsonl").write_text(json.dumps({"schema_version": "1.0", "query_id": "1"}) + "\n")
    assert check_resume(out, identity()) is not None
    template.write_text("Describe {{ caption }} after {{ modification }}, briefly")
    with pytest.raises(RunMismatchError, match="another prompts"):
        check_resume(out, identity())
    device_only = recipe.model_copy(update={"encoder": recipe.encoder.model_copy(update={"device": "cuda"})})
    template.write_text("Describe {{ caption }} after {{ modification }}")
    assert run_identity(device_only, prompt_hashes(device_only), dataset="cirr", split="val") == identity()


# ---------- secrets, by_dataset, published ----------
def test_an_api_key_in_a_recipe_is_written_nowhere(mini_cirr, tmp_path, bow_encoder):
    secret = "sk-test-SECRET-0123456789"
    recipe = load_recipe("surrogate_caption_mod", {"models": {"unused": {"spec": "openai:gpt-4o", "api_key": secret}}})
    assert redacted_recipe_dump(recipe)["models"]["unused"]["api_key"] == "<redacted>"
    out = tmp_path / "run"
    run_eval(recipe=recipe, out_dir=out, limit=2,
             overrides={"models": {"other": {"spec": "openai:x", "api_key": secret}}},
             **_surrogate(mini_cirr, bow_encoder))
    for path in out.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(encoding="utf-8", errors="replace"), path
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    _register()
    listing = CliRunner().invoke(app, ["recipes", "--json"])
    assert listing.exit_code == 0 and "api_key\": \"sk" not in listing.output


def test_by_dataset_overrides_are_merged_for_that_dataset_only_and_recorded(mini_cirr, tmp_path, bow_encoder):
    recipe = load_recipe("surrogate_caption_mod", {"by_dataset": {
        "cirr": {"retrieve": {"text_source": "caption"}}, "fashioniq": {"retrieve": {"k": 77}}}})
    assert recipe.for_dataset("fashioniq").retrieve.k == 77 and recipe.for_dataset("circo") is recipe
    outcome = run_eval(recipe=recipe, out_dir=tmp_path / "run", limit=2, **_surrogate(mini_cirr, bow_encoder))
    assert outcome.run["recipe"]["retrieve"]["text_source"] == "caption"
    assert outcome.run["by_dataset_applied"] == {"retrieve": {"text_source": "caption"}}
    with pytest.raises(Exception, match=r"by_dataset\.cirr: retrieve\.text_sorce"):
        load_recipe("surrogate_caption_mod", {"by_dataset": {"cirr": {"retrieve": {"text_sorce": "caption"}}}})


def test_compare_published_on_a_surrogate_run_says_the_settings_differ(mini_cirr, tmp_path, bow_encoder):
    from typer.testing import CliRunner

    from agent_cir.cli import _register, app

    recipe = load_recipe("surrogate_caption_mod", {"published": [
        _published("cirr", "val", "recall@5", 40.0, backbone="all-MiniLM-L6-v2"),
        _published("cirr", "test", "recall@1", 24.55), _published("circo", "test", "mAP@5", 18.57)]})
    outcome = run_eval(recipe=recipe, out_dir=tmp_path / "run", **_surrogate(mini_cirr, bow_encoder))
    comparison = compare_published(tmp_path / "run")
    [row] = comparison["rows"]
    assert row["metric"] == "recall@5" and row["ours"] == outcome.metrics["metrics"]["recall@5"]
    assert row["delta"] == pytest.approx(row["ours"] - 40.0)
    assert [e["split"] for e in comparison["unshared"]] == ["test"]  # CIRR test is not this run; CIRCO is skipped
    assert any(d.startswith("surrogate data") for d in comparison["differences"])
    _register()
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "run"), "--published"])
    assert result.exit_code == 0 and "recall@5" in result.output and "settings differ: surrogate data" in result.output
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "run"), "--published-from", "cirevl"])
    assert result.exit_code == 0 and "no shared metric: the paper reports cirr test" in result.output


def test_paper_recipes_carry_published_numbers_with_sources():
    for name in ("cirevl", "imagescope"):
        recipe = load_recipe(name)
        assert recipe.published and all(p.source and p.backbone for p in recipe.published)
        assert {p.dataset for p in recipe.published} == {"circo", "cirr", "fashioniq"}
    assert load_recipe("cirevl").encoder.pretrained == "laion2b_s32b_b82k"
    assert load_recipe("weimocir").encoder.pretrained == "laion2b_s32b_b82k"
    assert load_recipe("weimocir").retrieve.gallery_captions.weight == 0.1
    assert load_recipe("imagescope").retrieve.gallery_captions.weight == 0.15


def _fake_run(folder, encoder, published, dataset="cirr", metrics=None):
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"recipe": {"published": published}, "encoder": encoder, "models": {}}))
    (folder / "metrics.json").write_text(json.dumps({"dataset": dataset, "split": "test",
                                                      "metrics": metrics or {"recall@1": 20.0}}))
    return folder


def test_compare_published_checks_the_pretrained_tag_not_only_the_architecture(tmp_path):
    entry = {"dataset": "cirr", "split": "test", "metric": "recall@1", "value": 24.55, "backbone": "ViT-L/14",
             "pretrained": "laion2b_s32b_b82k", "source": "paper"}
    openai_run = _fake_run(tmp_path / "a", {"model": "ViT-L-14", "pretrained": "openai"}, [entry])
    differences = compare_published(openai_run)["differences"]
    assert any("backbone: paper ViT-L/14 / laion2b_s32b_b82k, ours ViT-L-14 (openai)" in d for d in differences)
    laion_run = _fake_run(tmp_path / "b", {"model": "ViT-L-14", "pretrained": "laion2b_s32b_b82k"}, [entry])
    assert not any("backbone" in d for d in compare_published(laion_run)["differences"])
    # a row that names no weights: said so, not silently "same"
    bare = {k: v for k, v in entry.items() if k != "pretrained"}
    bare_run = _fake_run(tmp_path / "c", {"model": "ViT-L-14", "pretrained": "openai"}, [bare])
    assert any("names no pretrained weights" in d for d in compare_published(bare_run)["differences"])


def test_paper_recipes_published_rows_name_their_weights_and_osrcir_has_numbers():
    for name in ("cirevl", "imagescope", "weimocir"):
        recipe = load_recipe(name)
        assert {p.pretrained for p in recipe.published} == {recipe.encoder.pretrained} == {"laion2b_s32b_b82k"}
    osrcir = load_recipe("osrcir").published
    assert {(p.dataset, p.split, p.metric, p.value) for p in osrcir} == {("circo", "test", "mAP@5", 23.87),
                                                                         ("cirr", "test", "recall@1", 29.45)}
    assert all("not checked against the OSrCIR paper" in p.source for p in osrcir)
