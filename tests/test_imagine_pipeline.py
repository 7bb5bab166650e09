"""The imagine stage inside the pipeline: a tiny random InstructPix2Pix edits the reference, the edited image is
an artifact in the trace, a rerun costs no edit (cache), and dual retrieval ranks as its formula says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.index import GalleryIndex
from agent_cir.pipeline import Pipeline
from agent_cir.types import Query

pytest.importorskip("diffusers")
from tests.test_imagine_tiny import tiny_pix2pix_dir  # noqa: E402,F401 - the session fixture
from tests.test_imagine_twins import _gallery  # noqa: E402


@pytest.fixture
def tiny_index(tmp_path: Path, tiny_open_clip_encoder) -> GalleryIndex:
    return GalleryIndex.build(_gallery(tmp_path / "gallery"), tmp_path / "index", tiny_open_clip_encoder,
                              workers=0, progress=False)


def _recipe(model_dir: Path, cache: Path, **retrieve) -> dict:
    return {"imagine": {"enabled": True, "model": f"diffusers:{model_dir}", "steps": 2, "guidance": 2.0,
                        "image_guidance": 1.5, "size": 32, "device": "cpu", "seed": 3},
            "retrieve": {"mode": "dual", "dual_weight": 0.5, "k": 5, **retrieve},
            "cache": {"path": str(cache)}}


def test_edit_artifact_trace_cache_and_dual_ranking(tiny_index, tiny_pix2pix_dir, tmp_path) -> None:
    reference = str(tiny_index.images_dir / "img0.png")
    query = Query(id="q1", text="make it blue", image=reference)
    recipe = _recipe(tiny_pix2pix_dir, tmp_path / "cache.sqlite")
    first = Pipeline.from_config(recipe, index=tiny_index, use_index_encoder=True,
                                 artifacts_dir=tmp_path / "artifacts").run(query)
    imagine = first.trace.stage("imagine")
    assert imagine is not None and imagine.calls[0].cache == "miss" and imagine.calls[0].backend == "diffusers"
    artifact = Path(imagine.output.path)
    assert artifact.is_file() and artifact.parent == tmp_path / "artifacts" / "q1"
    from agent_cir.hashing import content_hash

    assert content_hash(artifact) == imagine.output.image_sha256
    assert imagine.output.instruction == "make it blue" and imagine.output.seed == 3
    assert first.trace.totals.model_calls == 1

    second = Pipeline.from_config(recipe, index=tiny_index, use_index_encoder=True,
                                  artifacts_dir=tmp_path / "artifacts2").run(query)
    assert second.trace.totals.model_calls == 0 and second.trace.totals.cache_hits == 1
    assert second.trace.stage("imagine").output.image_sha256 == imagine.output.image_sha256
    assert [c.id for c in second.candidates] == [c.id for c in first.candidates]

    # The ranking, from the formula: 0.5 cos(txt, g) + 0.5 cos(img(edited), g), the reference and its copy left out.
    encoder = tiny_index.load_encoder()
    t = encoder.encode_texts(["make it blue"])[0]
    i = encoder.encode_images([Image.open(artifact).convert("RGB")])[0]
    t, i = t / np.linalg.norm(t), i / np.linalg.norm(i)
    real = np.asarray(tiny_index.embeddings)
    scores = {gid: 0.5 * float(real[r] @ t) + 0.5 * float(real[r] @ i) for r, gid in enumerate(tiny_index.ids)
              if gid not in ("img0.png", "copy_of_img0.png")}
    order = sorted(scores, key=lambda g: (-scores[g], tiny_index.ids.index(g)))[:5]
    assert [c.id for c in first.candidates] == order
    assert [c.score for c in first.candidates] == pytest.approx([scores[g] for g in order], abs=1e-5)


def test_another_seed_is_another_edit(tiny_index, tiny_pix2pix_dir, tmp_path) -> None:
    reference = str(tiny_index.images_dir / "img1.png")
    query = Query(id="q", text="make it red", image=reference)
    base = _recipe(tiny_pix2pix_dir, tmp_path / "cache.sqlite")
    a = Pipeline.from_config(base, index=tiny_index, use_index_encoder=True).run(query)
    base["imagine"]["seed"] = 4
    b = Pipeline.from_config(base, index=tiny_index, use_index_encoder=True).run(query)
    assert b.trace.totals.model_calls == 1
    assert a.trace.stage("imagine").output.image_sha256 != b.trace.stage("imagine").output.image_sha256


def test_wiser_fusion_orders_the_pool_by_summed_path_confidence(tiny_index, tiny_pix2pix_dir, tmp_path) -> None:
    recipe = _recipe(tiny_pix2pix_dir, tmp_path / "cache.sqlite", dual_fusion="wiser", k=3)
    recipe["models"] = {"verifier": {"spec": "fake:verifier", "extra": {"responses": ["yes"]}}}
    recipe["verify"] = {"enabled": True, "model": "verifier", "k": 20}
    result = Pipeline.from_config(recipe, index=tiny_index, use_index_encoder=True).run(
        Query(id="q", text="make it green", image=str(tiny_index.images_dir / "img0.png")))
    retrieve = result.trace.stage("retrieve")
    text, image = retrieve.output.paths["text"], retrieve.output.paths["image"]
    # Every answer is yes (confidence 1): WISER's sum is 2 for ids both paths found, 1 for the others; ties by
    # the larger confidence (1), then the text path's (1 for text-path ids, 0 else), then the id.
    both = sorted(set(text) & set(image))
    text_only = sorted(set(text) - set(image))
    image_only = sorted(set(image) - set(text))
    assert [c.id for c in result.candidates][: len(both) + len(text_only) + len(image_only)] == both + text_only + image_only
    assert result.trace.stage("verify").output.fusion == "wiser_paths"
    assert result.ordered_by == "verifier"


def test_a_query_without_a_reference_image_fails_alone_with_a_clear_message(tiny_index, tiny_pix2pix_dir, tmp_path) -> None:
    pipe = Pipeline.from_config(_recipe(tiny_pix2pix_dir, tmp_path / "cache.sqlite"), index=tiny_index,
                                use_index_encoder=True)
    results = pipe.run_batch([Query(id="no-image", text="make it red"),
                              Query(id="ok", text="make it red", image=str(tiny_index.images_dir / "img1.png"))],
                             progress=False)
    assert [r.query_id for r in results] == ["ok"]
    assert "edits the reference image and this query has none" in pipe.failures[0]["error"]


def test_the_report_and_the_demo_show_the_edited_image(tiny_index, tiny_pix2pix_dir, tmp_path) -> None:
    from agent_cir.demo import view_from_trace
    from agent_cir.report.build import build_report
    from agent_cir.report.served import ServedImages
    from agent_cir.trace.io import TraceWriter

    traces = tmp_path / "run" / "traces.jsonl"
    traces.parent.mkdir()
    pipe = Pipeline.from_config(_recipe(tiny_pix2pix_dir, tmp_path / "cache.sqlite"), index=tiny_index,
                                use_index_encoder=True, artifacts_dir=traces.parent / "traces_artifacts")
    result = pipe.run(Query(id="q1", text="make it blue", image=str(tiny_index.images_dir / "img0.png")))
    with TraceWriter(traces) as writer:
        writer.write(result.trace)
    index_html = build_report(traces, tmp_path / "report", gallery=[tiny_index.images_dir])
    page = next((index_html.parent / "queries").glob("*.html")).read_text(encoding="utf-8")
    section = page.split('id="edited"', 1)[1].split("</section>", 1)[0]
    assert "Imagined target" in page and "make it blue" in section and "<img" in section
    assert "outside the gallery" not in section and "not found" not in section

    view = view_from_trace(result.trace, pipe.gallery, served=ServedImages(tmp_path / "served"))
    assert view.edited is not None and Path(view.edited).is_file() and Path(view.edited).parent == tmp_path / "served"


def test_the_paracosm_recipe_ranks_as_published(tiny_index, tiny_pix2pix_dir, tmp_path) -> None:
    """paracosm.yaml with its models swapped for tiny ones: score = 0.3 cos(normalise(img(mental) + txt(desc)), g)
    + 0.7 cos(txt(modification), g), g = normalise(normalise(real) + normalise(twin)) (Paracosm test_cirr_circo.py)."""
    from agent_cir.backends.image_edit import create_image_editor
    from agent_cir.config import load_recipe
    from agent_cir.index.twins import build_twins, load_twins
    from tests.fixtures.chat import fake_model
    from tests.test_imagine_tiny import tiny_imagine_config

    twin_settings = tiny_imagine_config(tiny_pix2pix_dir)
    text2img = tmp_path / "text2img"
    from tests.test_imagine_tiny import save_tiny_pipeline

    save_tiny_pipeline(text2img, "text2img")
    build_twins(tiny_index, create_image_editor(tiny_imagine_config(text2img)), twin_settings,
                captioner=fake_model(["a coloured square"]))
    recipe = load_recipe("paracosm", {
        "imagine": {"model": f"diffusers:{tiny_pix2pix_dir}", "steps": 2, "size": 32, "dtype": None,
                    "cpu_offload": None, "device": "cpu"},
        "retrieve": {"k": 5}, "cache": {"path": str(tmp_path / "cache.sqlite")}})
    describer = fake_model(["a blue square on a table"])
    pipe = Pipeline.from_config(recipe, index=tiny_index, models={"vlm": describer}, use_index_encoder=True,
                                artifacts_dir=tmp_path / "artifacts")
    result = pipe.run(Query(id="p", text="make it blue", image=str(tiny_index.images_dir / "img0.png")))
    imagine = result.trace.stage("imagine")
    assert imagine.output.description == "a blue square on a table" and len(describer.chat.received) == 1

    encoder = tiny_index.load_encoder()
    encode_image = getattr(encoder, "encode_images_raw", encoder.encode_images)
    encode_text = getattr(encoder, "encode_texts_raw", encoder.encode_texts)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    mental = encode_image([Image.open(imagine.output.path).convert("RGB")])[0]
    description = encode_text(["a blue square on a table"])[0]
    q_img = unit(mental + description)
    q_txt = unit(encode_text(["make it blue"])[0])
    real, twin = np.asarray(tiny_index.embeddings), load_twins(tiny_index)
    scores = {}
    for row, gallery_id in enumerate(tiny_index.ids):
        if gallery_id in ("img0.png", "copy_of_img0.png"):
            continue
        g = unit(unit(real[row]) + unit(twin[row]))
        scores[gallery_id] = 0.3 * float(q_img @ g) + 0.7 * float(q_txt @ g)
    order = sorted(scores, key=lambda g: (-scores[g], tiny_index.ids.index(g)))[:5]
    assert [c.id for c in result.candidates] == order
    assert [c.score for c in result.candidates] == pytest.approx([scores[g] for g in order], abs=1e-5)
