"""The whole pipeline from the command line: index -> search with a recipe of scripted models, twice."""

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from agent_cir.cli import app, _register
from agent_cir.trace.io import read_traces

ROOT = Path(__file__).resolve().parent.parent
_register()


def _json(output: str) -> dict:
    return json.loads(output[output.index("{") :])


def test_search_with_a_recipe_runs_every_stage_then_answers_from_the_cache(
    tmp_path, tiny_open_clip_config, photos_dir
):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for photo in sorted(photos_dir.glob("*.jpg"))[:12]:
        shutil.copy(photo, gallery / photo.name)
    reference = gallery / sorted(p.name for p in gallery.iterdir())[0]
    recipe = yaml.safe_load((ROOT / "examples" / "offline_fake.yaml").read_text())
    recipe["encoder"] = {"backend": "open_clip", "model": str(tiny_open_clip_config), "pretrained": "none"}
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    runner = CliRunner()
    built = runner.invoke(
        app, ["index", str(gallery), "--out", str(tmp_path / "idx"), "--model", str(tiny_open_clip_config),
              "--pretrained", "none", "--workers", "0"],
    )
    assert built.exit_code == 0, built.output

    trace_path = tmp_path / "t.jsonl"
    args = ["search", "--config", str(recipe_path), "--index", str(tmp_path / "idx"), "--image", str(reference),
            "--text", "a cat instead", "--trace", str(trace_path), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    answer = _json(first.stdout)
    assert answer["model_calls"] == 3 and answer["cache_hits"] == 0  # caption, rewrite, judge
    assert answer["target_descriptions"] == ["A small cat sitting on a wooden floor."]
    assert reference.name not in [r["id"] for r in answer["results"]], "the reference is excluded"
    assert len(answer["results"]) == 11
    [grid] = answer["grids"]
    assert Path(grid).is_file() and Path(grid).parent.parent == tmp_path / "t_artifacts"

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    again = _json(second.stdout)
    assert again["model_calls"] == 0 and again["cache_hits"] == 3
    assert [r["id"] for r in again["results"]] == [r["id"] for r in answer["results"]]

    first_trace, second_trace = list(read_traces(trace_path))
    rerank = next(s for s in first_trace["stages"] if s["stage"] == "rerank")
    # the judge said "3 > 7 > 12 > 3 > 1": 12 is out of range, the second 3 a duplicate, the rest appended
    repairs = rerank["output"]["repairs"][0]
    assert repairs["out_of_range"] == [12] and repairs["duplicates"] == [3]
    cells = rerank["output"]["grids"][0]["cells"]
    assert rerank["output"]["final_order"][:3] == [cells["3"], cells["7"], cells["1"]]
    assert [r["id"] for r in answer["results"]][:3] == [cells["3"], cells["7"], cells["1"]]
    assert "Final answer: 3 > 7" in rerank["calls"][0]["raw"]
    assert {c["cache"] for s in second_trace["stages"] for c in s["calls"]} == {"hit"}


def test_search_reports_bad_input_without_a_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["search", "--index", str(tmp_path / "nope"), "--text", "x"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_search_options_become_recipe_overrides():
    from agent_cir.cli.search_cmd import build_search_overrides

    no_recipe = build_search_overrides(None, None, None, with_recipe=False, has_image=True)["retrieve"]
    assert no_recipe == {"mode": "fusion", "k": 10, "text_source": "modification"}  # rclip shows 10
    assert build_search_overrides(None, None, None, with_recipe=False, has_image=False)["retrieve"]["mode"] == "text"
    # with a recipe, only what the user typed overrides it; the recipe's text source is kept
    assert build_search_overrides("pdv", 0.3, 7, with_recipe=True) == {"retrieve": {"mode": "pdv", "alpha": 0.3, "k": 7}}
    assert build_search_overrides(None, None, None, with_recipe=True) == {}


def test_a_failing_model_is_one_message_without_a_traceback(tmp_path, bow_encoder):
    from agent_cir.errors import AgentCirError
    from agent_cir.retrieval.gallery import RetrievalGallery
    from agent_cir.pipeline import Pipeline
    from agent_cir.types import Query

    # the error keeps its cause for debugging, and the CLI prints only its message
    recipe = {"name": "r", "models": {"vlm": {"spec": "fake:captioner", "extra": {"responses": ["a dog."],
                                                                                  "cycle": False}}},
              "caption": {"enabled": True, "model": "vlm", "num_captions": 2, "temperature": 0.5},
              "cache": {"enabled": False}}
    gallery = RetrievalGallery.from_captions({"a": "a dog", "b": "a cat"}, bow_encoder)
    pipe = Pipeline.from_config(recipe, gallery=gallery, encoder=bow_encoder)
    image = tmp_path / "ref.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    try:
        pipe.run(Query(id="q", text="a cat instead", image=str(image)))
    except AgentCirError as err:
        assert "query q, caption stage" in str(err) and "ran out of scripted responses" in str(err)
        assert err.__cause__ is not None
        error = err
    else:
        raise AssertionError("the second caption sample must fail")

    import typer

    from agent_cir.cli._common import user_errors

    runner = CliRunner()
    probe = typer.Typer()

    @probe.command()
    def main() -> None:
        with user_errors():
            raise error

    result = runner.invoke(probe, [])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == f"error: {error}"
