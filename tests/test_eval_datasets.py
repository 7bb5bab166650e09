"""Loaders on the official annotation files: counts, fields, conventions, and the missing-image errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_cir.eval.benchmarks import load_benchmark
from agent_cir.eval.datasets import BenchmarkDataError, MissingImagesError
from agent_cir.eval.datasets.fashioniq import join_captions
from agent_cir.eval.datasets.genecis import load_genecis


def test_circo_val_and_test(benchmarks_dir):
    [val] = load_benchmark("circo", "val", benchmarks_dir)
    assert len(val.queries) == 220 and val.has_ground_truth
    first = val.queries[0]
    assert first.id == "0" and first.reference_id == "271520"
    assert first.text == "shows two people and has a more colorful background"
    assert first.meta["target"] == "355099" and first.meta["ground_truth"] == ["355099", "528417", "534704"]
    assert all(1 <= len(q.meta["ground_truth"]) <= 14 for q in val.queries)
    assert val.image_files["271520"] == "unlabeled2017/000000271520.jpg"
    assert val.gallery_ids is None  # the whole unlabeled2017 folder, known once scanned
    [test] = load_benchmark("circo", "test", benchmarks_dir / "circo")  # the dataset folder itself works too
    assert len(test.queries) == 800 and not test.has_ground_truth and "ground_truth" not in test.queries[0].meta


def test_cirr_val_dev_subset_and_test1(benchmarks_dir):
    [val] = load_benchmark("cirr", "val", benchmarks_dir)
    assert len(val.queries) == 3105 and len(val.gallery_ids) == 2297
    query = val.queries[0]
    assert query.id == "12062" and query.reference_id == "dev-63-0-img1" and query.text == "Fewer paper towels per pack"
    assert query.meta["ground_truth"] == ["dev-430-3-img0"] and query.meta["target"] == "dev-430-3-img0"
    assert len(query.meta["subset"]) == 6 and query.reference_id in query.meta["subset"]
    assert val.image_files["dev-244-0-img0"] == "dev/dev-244-0-img0.png"
    assert all(q.reference_id in val.image_files for q in val.queries)
    [test] = load_benchmark("cirr", "test", benchmarks_dir)
    assert test.split == "test" and len(test.queries) == 4148 and len(test.gallery_ids) == 2315
    assert not test.has_ground_truth and "target" not in test.queries[0].meta and len(test.queries[0].meta["subset"]) == 6


def test_fashioniq_categories_and_caption_joining(benchmarks_dir):
    splits = load_benchmark("fashioniq", "val", benchmarks_dir)
    assert [s.category for s in splits] == ["dress", "shirt", "toptee"]
    assert [len(s.queries) for s in splits] == [2017, 2038, 1961]
    assert [len(s.gallery_ids) for s in splits] == [3817, 6346, 5373]
    dress = splits[0].queries[0]
    assert dress.id == "dress-0" and dress.reference_id == "B005X4PL1G" and dress.meta["target"] == "B0084Y8XIU"
    assert dress.text == "is shiny and silver with shorter sleeves and fit and flare"
    assert dress.meta["captions"] == ["is shiny and silver with shorter sleeves", "fit and flare"]
    assert splits[0].image_files["B0084Y8XIU"] == "images/B0084Y8XIU.png"
    [test_dress] = load_benchmark("fashioniq", "test", benchmarks_dir, categories=["dress"])
    assert len(test_dress.queries) == 2024 and test_dress.queries[0].text == "yello and more flowing and short and black"


def test_join_captions_strips_punctuation_like_the_papers():
    assert join_captions(["Is red.", " has long sleeves? "]) == "Is red and has long sleeves"
    assert join_captions(["is blue", ""]) == "is blue"


def test_genecis_tasks_and_per_query_galleries(benchmarks_dir):
    change, focus = load_benchmark("genecis", "val", benchmarks_dir)
    assert (change.category, focus.category) == ("change_object", "focus_object")
    assert len(change.queries) == 1960 and len(focus.queries) == 1960
    query = change.queries[0]
    assert query.text == "wall" and query.reference_id == "189213" and query.meta["target"] == "153527"
    assert query.meta["gallery"][0] == "153527" and len(query.meta["gallery"]) == 15
    # the official list is kept as is: always 15, target first, copies included (one change_object record lists
    # its target among the distractors too)
    assert {len(q.meta["gallery"]) for q in change.queries + focus.queries} == {15}
    assert all(q.meta["gallery"][0] == q.meta["target"] for q in change.queries + focus.queries)
    [copied] = [q for q in change.queries if len(set(q.meta["gallery"])) < 15]
    assert copied.meta["gallery"].count(copied.meta["target"]) == 2
    assert change.image_files["153527"] == "val2017/000000153527.jpg"
    assert set(change.gallery_ids) == {i for q in change.queries for i in q.meta["gallery"]}
    # retrieval and rerank of each query see only its own distinct images
    assert all(q.candidate_ids == list(dict.fromkeys(q.meta["gallery"])) for q in change.queries + focus.queries)


def test_genecis_refuses_cropped_records(tmp_path):
    record = {
        "condition": "red", "reference": {"val_image_id": 1, "instance_bbox": [0, 0, 5, 5]},
        "target": {"val_image_id": 2}, "gallery": [{"val_image_id": 3}],
    }
    (tmp_path / "change_object.json").write_text(json.dumps([record]))
    with pytest.raises(BenchmarkDataError, match="instance_bbox, which object tasks do not have"):
        load_genecis(tmp_path, "change_object")


def test_annotations_not_found_lists_where_it_looked(tmp_path):
    with pytest.raises(BenchmarkDataError) as info:
        load_benchmark("cirr", "val", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cirr" / "image_splits" / "split.rc2.val.json") in message and "--annotations" in message


def test_bad_split_and_category_are_named(benchmarks_dir):
    with pytest.raises(BenchmarkDataError, match="CIRCO has splits val and test"):
        load_benchmark("circo", "train", benchmarks_dir)
    with pytest.raises(BenchmarkDataError, match="unknown category skirt"):
        load_benchmark("fashioniq", "val", benchmarks_dir, categories=["skirt"])
    with pytest.raises(BenchmarkDataError, match="no categories"):
        load_benchmark("cirr", "val", benchmarks_dir, categories=["dress"])


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not checked for content here")


def test_missing_images_are_counted_with_examples_and_the_expected_layout(benchmarks_dir, tmp_path):
    root = tmp_path / "cirr_images"
    [val] = load_benchmark("cirr", "val", benchmarks_dir, images_root=root)
    with pytest.raises(MissingImagesError, match="does not exist"):
        val.check_images()
    present = list(val.image_files.values())[:100]
    for relative in present:
        _touch(root / relative)
    with pytest.raises(MissingImagesError) as info:
        val.check_images()
    message = str(info.value)
    assert f"{len(val.image_files) - 100} of {len(val.image_files)} images are missing" in message
    assert message.count(str(root / "dev")) == 3  # three example paths
    assert "ROOT must be the CIRR image folder that holds dev/" in message
    for relative in val.image_files.values():
        _touch(root / relative)
    val.check_images()  # complete: no error
    assert val.queries[0].image == str(root / "dev" / "dev-63-0-img1.png")


def test_image_root_may_be_the_image_folder_itself(benchmarks_dir, tmp_path):
    folder = tmp_path / "fiq" / "images"
    folder.mkdir(parents=True)
    [dress] = load_benchmark("fashioniq", "val", benchmarks_dir, images_root=folder, categories=["dress"])
    assert dress.images_root == folder.parent
    assert dress.queries[0].image == str(folder / "B005X4PL1G.png")


def test_no_image_root_is_a_clear_error(benchmarks_dir):
    [val] = load_benchmark("genecis", "val", benchmarks_dir, categories=["focus_object"])
    with pytest.raises(MissingImagesError, match="pass --images ROOT, where ROOT must contain val2017"):
        val.check_images()


def test_genecis_focus_attribute_reference_average_follows_cirevl() -> None:
    """Vision_by_Language src/main.py:212-215 (text query unit, src/utils.py:369): q = norm((q + norm(r)) / 2)."""
    import numpy as np

    from agent_cir.eval.datasets.genecis import CIREVL_REFERENCE_AVERAGED_TASKS, reference_averaged_query

    rng = np.random.default_rng(0)
    text = rng.normal(size=(4, 8))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    reference = rng.normal(size=(4, 8)) * 7.0  # raw image features, not unit
    expected = []
    for t, r in zip(text, reference):  # independent, row by row
        r_unit = r / np.sqrt((r ** 2).sum())
        mix = (t + r_unit) / 2
        expected.append(mix / np.sqrt((mix ** 2).sum()))
    np.testing.assert_allclose(reference_averaged_query(text, reference), np.array(expected), atol=1e-6)
    # a query exactly opposite to its reference has no direction left: zero, not NaN
    assert np.isfinite(reference_averaged_query(text[:1], -text[:1])).all()
    assert CIREVL_REFERENCE_AVERAGED_TASKS == ("focus_attribute",)


def test_circo_query_text_option_puts_the_shared_concept_in_and_is_off_by_default(tmp_path) -> None:
    import json as _json

    from pydantic import ValidationError

    from agent_cir.config import CircoOptions, Recipe, load_recipe
    from agent_cir.eval.benchmarks import get_benchmark
    from agent_cir.eval.datasets.circo import load_circo

    (tmp_path / "annotations").mkdir()
    records = [
        {"id": 7, "reference_img_id": 11, "relative_caption": "is red ", "shared_concept": " a car", "target_img_id": 12,
         "gt_img_ids": [12], "semantic_aspects": ["addition"]},
        {"id": 8, "reference_img_id": 13, "relative_caption": "has two", "shared_concept": "", "target_img_id": 14,
         "gt_img_ids": [14]},
    ]
    (tmp_path / "annotations" / "val.json").write_text(_json.dumps(records))
    benchmark = get_benchmark("circo")
    for name in ("cirevl", "imagescope", "weimocir", "osrcir"):  # none of these papers uses the shared concept
        assert load_recipe(name).circo.query_text == "{relative_caption}"
    split = load_circo(tmp_path, "val")
    assert benchmark.apply_query_options(Recipe(), [split]) == []
    assert [q.text for q in split.queries] == ["is red ", "has two"]  # as loaded
    recipe = Recipe(circo=CircoOptions(query_text="find {shared_concept} but {relative_caption}"))
    notes = benchmark.apply_query_options(recipe, [split])
    assert [q.text for q in split.queries] == ["find a car but is red", "find but has two"]
    assert any("circo.query_text" in n for n in notes) and any("1 CIRCO queries have no shared_concept" in n for n in notes)
    # applying twice does not stack the concept
    benchmark.apply_query_options(recipe, [split])
    assert split.queries[0].text == "find a car but is red"
    for bad in ("{shared_concept}", "{relative_caption} {target}", "{relative_caption"):
        with pytest.raises(ValidationError, match="query_text"):
            CircoOptions(query_text=bad)
