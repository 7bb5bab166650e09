"""Synthetic gallery twins (Paracosm) on a tiny index: they build, resume after a crash and after SIGKILL without
drawing finished twins again, and search with gallery feature = normalise(normalise(real) + normalise(twin))."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.backends.image_edit import ImageEditError, create_image_editor
from agent_cir.index import GalleryIndex
from agent_cir.index.twins import JOURNAL_NAME, TwinsError, build_twins, load_twins, twins_folder, twins_meta
from tests.fixtures.chat import fake_model
from tests.test_imagine_tiny import CountingEditor, tiny_imagine_config

pytest.importorskip("diffusers")
from tests.test_imagine_tiny import tiny_text2img_dir  # noqa: E402,F401 - the session fixture

COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 10), (10, 200, 200), (200, 10, 200)]


def _gallery(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, colour in enumerate(COLOURS):
        picture = Image.new("RGB", (36, 36), colour)
        for x in range(0, 36, 6):  # a pattern per image, so that no two are alike
            picture.putpixel((x, n * 5), (n * 40 % 255, 255 - n * 30, 7 * n))
        picture.save(folder / f"img{n}.png")
    (folder / "copy_of_img0.png").write_bytes((folder / "img0.png").read_bytes())  # same bytes: one twin
    return folder


@pytest.fixture
def tiny_index(tmp_path: Path, tiny_open_clip_encoder) -> GalleryIndex:
    return GalleryIndex.build(_gallery(tmp_path / "gallery"), tmp_path / "index", tiny_open_clip_encoder,
                              workers=0, progress=False)


def _captioner():
    return fake_model(respond=lambda messages: "a square of one colour with a dotted line")


class FailingAfter(CountingEditor):
    def __init__(self, inner, limit: int) -> None:
        super().__init__(inner)
        self.limit = limit

    def edit(self, request):
        if self.calls >= self.limit:
            raise RuntimeError("simulated crash")
        return super().edit(request)


def test_twins_build_one_per_distinct_image_and_record_their_cost(tiny_index, tiny_text2img_dir, tmp_path) -> None:
    settings = tiny_imagine_config(tiny_text2img_dir)
    editor = CountingEditor(create_image_editor(settings))
    summary = build_twins(tiny_index, editor, settings, captioner=_captioner())
    assert (summary.total, summary.generated, summary.reused) == (6, 6, 0)
    assert editor.calls == 6
    meta = twins_meta(tiny_index)
    assert meta["generation"] == tiny_index.generation and meta["count"] == len(tiny_index) == 7
    assert set(meta["last_build"]["seconds_per_image"]) == {"caption", "generate", "encode"}
    assert meta["last_build"]["seconds_per_image"]["generate"] > 0
    twins = load_twins(tiny_index)
    assert twins.shape == (7, tiny_index.dim)
    rows = {gallery_id: row for row, gallery_id in enumerate(tiny_index.ids)}
    assert np.array_equal(twins[rows["img0.png"]], twins[rows["copy_of_img0.png"]])
    # Independently: the twin files on disk, encoded directly with the index's encoder, are the stored vectors.
    journal = [json.loads(line) for line in (twins_folder(tiny_index.directory) / JOURNAL_NAME).read_text().splitlines()]
    encoder = tiny_index.load_encoder()
    for record in journal:
        picture = Image.open(twins_folder(tiny_index.directory) / "images" / f"{record['hash']}.png").convert("RGB")
        direct = encoder.encode_images([picture])[0]
        assert np.allclose(twins[rows[record["id"]]], direct, atol=1e-5)
    # The index folder still opens and rebuilds: the twins folder is the index's own.
    again = GalleryIndex.build(tiny_index.images_dir, tiny_index.directory, encoder, workers=0, progress=False)
    assert (twins_folder(again.directory) / "images").is_dir()


def test_a_crashed_build_resumes_without_drawing_finished_twins(tiny_index, tiny_text2img_dir) -> None:
    settings = tiny_imagine_config(tiny_text2img_dir)
    inner = create_image_editor(settings)
    with pytest.raises(ImageEditError, match="simulated crash"):
        build_twins(tiny_index, FailingAfter(inner, 2), settings, captioner=_captioner(), cache=None)
    journal = twins_folder(tiny_index.directory) / JOURNAL_NAME
    assert len(journal.read_text().splitlines()) == 2
    with open(journal, "a", encoding="utf-8") as handle:
        handle.write('{"hash": "torn')  # a line cut by a kill
    resumed = CountingEditor(inner)
    summary = build_twins(tiny_index, resumed, settings, captioner=_captioner(), cache=None)
    assert (summary.reused, summary.generated, resumed.calls) == (2, 4, 4)
    assert load_twins(tiny_index).shape == (7, tiny_index.dim)


def test_a_sigkilled_build_resumes(tiny_index, tiny_text2img_dir, tmp_path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from agent_cir.backends.image_edit import create_image_editor
        from agent_cir.config import ImagineConfig
        from agent_cir.index.twins import build_twins
        from tests.fixtures.chat import fake_model

        settings = ImagineConfig(enabled=True, model={f"diffusers:{tiny_text2img_dir}"!r}, steps=2, guidance=2.0,
                                 size=32, device="cpu")
        inner = create_image_editor(settings)

        class KilledOnThird:
            spec = inner.spec
            info = inner.info
            calls = 0
            def edit(self, request):
                KilledOnThird.calls += 1
                if KilledOnThird.calls == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return inner.edit(request)

        from agent_cir.index import GalleryIndex

        build_twins(GalleryIndex.load({str(tiny_index.directory)!r}), KilledOnThird(), settings,
                    captioner=fake_model(respond=lambda m: "a coloured square"), cache=None)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    settings = tiny_imagine_config(tiny_text2img_dir)
    resumed = CountingEditor(create_image_editor(settings))
    summary = build_twins(tiny_index, resumed, settings, captioner=_captioner(), cache=None)
    assert (summary.reused, summary.generated, resumed.calls) == (2, 4, 4)


def test_search_scores_real_plus_twin(tiny_index, tiny_text2img_dir, tiny_open_clip_encoder) -> None:
    from agent_cir.pipeline import Pipeline
    from agent_cir.types import Query

    settings = tiny_imagine_config(tiny_text2img_dir)
    build_twins(tiny_index, create_image_editor(settings), settings, captioner=_captioner())
    recipe = {"encoder": {"model": tiny_index.encoder_info.get("model"), "pretrained": "none"},
              "retrieve": {"mode": "image", "k": 7, "gallery_twins": True, "exclude_reference": False}}
    pipe = Pipeline.from_config(recipe, index=tiny_index, use_index_encoder=True)
    reference = tiny_index.images_dir / "img2.png"
    result = pipe.run(Query(id="q", text="", image=str(reference)))
    # Independently from the formula: q = the reference image's vector, g = normalise(normalise(real) + normalise(twin))
    encoder = tiny_index.load_encoder()
    q = encoder.encode_images([Image.open(reference).convert("RGB")])[0]
    q = q / np.linalg.norm(q)
    real = np.asarray(tiny_index.embeddings)
    twin = load_twins(tiny_index)
    scores = []
    for row in range(len(real)):
        g = real[row] / np.linalg.norm(real[row]) + twin[row] / np.linalg.norm(twin[row])
        scores.append(float(np.dot(q, g / np.linalg.norm(g))))
    order = sorted(range(len(scores)), key=lambda r: (-scores[r], r))
    assert [c.id for c in result.candidates] == [tiny_index.ids[r] for r in order]
    assert [c.score for c in result.candidates] == pytest.approx([scores[r] for r in order], abs=1e-5)
    # ... and differs from the real vectors alone (the twins moved the scores).
    plain = float(np.dot(q, real[order[0]] / np.linalg.norm(real[order[0]])))
    assert result.candidates[0].score != pytest.approx(plain, abs=1e-6)


def test_twins_of_another_generation_are_refused(tiny_index, tiny_text2img_dir, tmp_path) -> None:
    settings = tiny_imagine_config(tiny_text2img_dir)
    build_twins(tiny_index, create_image_editor(settings), settings, captioner=_captioner())
    Image.new("RGB", (36, 36), (1, 2, 3)).save(tiny_index.images_dir / "new.png")
    newer = GalleryIndex.build(tiny_index.images_dir, tiny_index.directory, tiny_index.load_encoder(), workers=0,
                               progress=False)
    with pytest.raises(TwinsError, match="build the twins again"):
        load_twins(newer)
    resumed = CountingEditor(create_image_editor(settings))
    summary = build_twins(newer, resumed, settings, captioner=_captioner())
    assert (summary.generated, resumed.calls) == (1, 1)  # only the new image is drawn
    assert load_twins(GalleryIndex.load(newer.directory)).shape[0] == 8


def test_an_index_without_twins_says_how_to_make_them(tiny_index) -> None:
    with pytest.raises(TwinsError, match="build_twins"):
        load_twins(tiny_index)


def test_twins_are_embedded_through_the_named_encoding_engine(tiny_index, tiny_text2img_dir) -> None:
    from agent_cir.index.encode import ENGINES, local_engine

    seen: list[list[str]] = []

    def recording_engine(job):
        seen.append([entry.path for entry in job.entries])
        yield from local_engine(job)

    ENGINES["recording"] = recording_engine
    try:
        settings = tiny_imagine_config(tiny_text2img_dir)
        build_twins(tiny_index, create_image_editor(settings), settings, captioner=_captioner(),
                    engine="recording")
    finally:
        ENGINES.pop("recording")
    assert len(seen) == 1 and sorted(seen[0]) == sorted(f"{digest}.png" for digest in set(tiny_index.hashes))


def test_an_index_build_can_draw_the_twins_right_after(tmp_path, tiny_open_clip_encoder, tiny_text2img_dir) -> None:
    from agent_cir.index.twins import TwinsRequest

    settings = tiny_imagine_config(tiny_text2img_dir)
    editor = CountingEditor(create_image_editor(settings))
    index = GalleryIndex.build(_gallery(tmp_path / "gallery"), tmp_path / "index", tiny_open_clip_encoder, workers=0,
                               progress=False, twins=TwinsRequest(editor, settings, captioner=_captioner()))
    assert editor.calls == 6 and load_twins(index).shape == (7, index.dim)
    assert any(note.startswith("twins: 6 drawn, 0 reused") for note in index.build_summary.notes)
