"""One decoder, and the reference image read and decoded once per query (``index.image_memo``)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_cir.backends.errors import ImageInputError
from agent_cir.backends.messages import image_bytes
from agent_cir.grid import render_grid
from agent_cir.index import decode, image_memo
from agent_cir.index.image_memo import ImageMemo, image_file
from agent_cir.index.reasons import BadImageError
from agent_cir.pipeline import Pipeline
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.types import Query


def _picture(path: Path, colour: tuple[int, int, int], size=(64, 48)) -> Path:
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8) + np.asarray(colour, dtype=np.uint8)
    pixels[: size[1] // 3, : size[0] // 4] = 255 - np.asarray(colour, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def spy(monkeypatch):
    """Counts file reads (by path) and full decodes (by the bytes' first pixels' owner: the path read)."""
    image_memo.MEMO.clear()
    reads: Counter[str] = Counter()
    decodes: list[bytes] = []
    real_read, real_decode = image_memo._read, decode.decode_bytes

    def read(path):
        reads[str(Path(path).resolve())] += 1
        return real_read(path)

    def decode_bytes(data):
        decodes.append(data)
        return real_decode(data)

    monkeypatch.setattr(image_memo, "_read", read)
    monkeypatch.setattr(decode, "decode_bytes", decode_bytes)
    yield reads, decodes
    image_memo.MEMO.clear()


def _recipe(reference_in: str) -> dict:
    return {
        "name": "decode-once",
        "models": {
            "vlm": {"spec": "fake:captioner", "extra": {"responses": ["A red square on a blue floor."]}},
            "llm": {"spec": "fake:rewriter", "extra": {"responses": [
                '{"reasoning": "colour", "target_description": "A green square on a blue floor."}']}},
            "judge": {"spec": "fake:judge", "extra": {"responses": ["Final answer: 2 > 1 > 3"]}},
        },
        "caption": {"enabled": True, "model": "vlm"},
        "rewrite": {"enabled": True, "model": "llm", "prompt": "rewrite_cot"},
        "retrieve": {"mode": "fusion", "alpha": 0.5, "k": 6},
        "rerank": {"enabled": True, "model": "judge", "k": 4, "grid": {"reference": reference_in, "rows": 3, "cols": 3}},
        "cache": {"enabled": False},
    }


@pytest.mark.parametrize("reference_in", ["cell", "separate"])
def test_the_reference_is_read_and_decoded_once_per_query(tmp_path, bow_encoder, spy, reference_in):
    reads, decodes = spy
    gallery_dir = tmp_path / "gallery"
    gallery_dir.mkdir()
    paths = [_picture(gallery_dir / f"g{i}.png", (40 * i, 200 - 30 * i, 90)) for i in range(6)]
    vectors = bow_encoder.encode_images([Image.open(p) for p in paths])
    gallery = RetrievalGallery(ids=[p.name for p in paths], paths=[str(p) for p in paths], hashes=[None] * 6,
                               image_embeddings=vectors)
    reference = _picture(tmp_path / "reference.png", (250, 10, 10))
    pipeline = Pipeline.from_config(_recipe(reference_in), gallery=gallery, encoder=bow_encoder)
    result = pipeline.run(Query(text="make it green", image=str(reference)))
    stages = [s.stage for s in result.trace.stages]
    assert stages == ["caption", "rewrite", "retrieve", "rerank"]
    # hashed by the pipeline, sent to the captioner, decoded for the encoder, sent to (or drawn for) the judge
    assert reads[str(reference.resolve())] == 1
    reference_bytes = reference.read_bytes()
    assert sum(1 for data in decodes if data == reference_bytes) == 1
    shown = result.stage("rerank").output.grids[0].cells.values()
    for gallery_id in shown:  # each candidate of the grid: one read, one decode
        candidate = gallery_dir / gallery_id
        assert reads[str(candidate.resolve())] == 1
        assert sum(1 for data in decodes if data == candidate.read_bytes()) == 1


def test_an_edited_file_is_read_again(tmp_path, spy):
    reads, decodes = spy
    path = _picture(tmp_path / "a.png", (10, 20, 30))
    first = image_file(path).rgb()
    _picture(path, (200, 20, 30), size=(65, 48))  # new content, new size: a new version
    second = image_file(path).rgb()
    assert first.size == (64, 48) and second.size == (65, 48)
    assert reads[str(path.resolve())] == 2 and len(decodes) == 2


def test_the_memo_holds_at_most_its_budget():
    memo = ImageMemo(budget_bytes=100_000)
    rng = np.random.default_rng(0)
    for number in range(20):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        memo.bytes(buffer.getvalue()).rgb()  # ~12 kB encoded + 12 kB decoded each
        assert memo._held <= 100_000
    assert 0 < len(memo) < 20
    assert memo._held == sum(entry.nbytes for entry in memo._entries.values())


def test_exif_orientation_is_applied_in_grids_and_model_inputs(tmp_path, spy):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    upright = image_file(path).rgb()
    assert upright.size == (20, 40)  # as displayed: portrait
    assert decode.load_image(path).size == (20, 40)  # the gallery path agrees
    grid = render_grid([str(path)])
    cell = grid.cells[0].image_box
    assert (cell[2] - cell[0]) < (cell[3] - cell[1])  # drawn portrait in its cell


def test_hostile_model_inputs_are_clear_errors(tmp_path, spy):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageInputError, match="not a readable image"):
        image_bytes(str(text))
    with pytest.raises(ImageInputError, match="cannot be read"):
        image_bytes(str(tmp_path / "missing.png"))
    with pytest.raises(BadImageError):
        image_memo.decoded(b"\x89PNG\r\n\x1a\n garbage")
    assert render_grid([str(text)]).unreadable == [0]  # a placeholder, the numbering kept


def test_a_file_over_the_memo_limit_is_streamed_by_the_decoder_and_not_kept(tmp_path, spy, monkeypatch):
    reads, decodes = spy
    monkeypatch.setattr(image_memo, "MAX_MEMO_FILE_BYTES", 100)
    path = _picture(tmp_path / "big.png", (1, 2, 3))
    assert path.stat().st_size > 100
    picture = image_file(path).rgb()
    assert picture.size == (64, 48)
    assert reads[str(path.resolve())] == 0 and decodes == []  # load_image streamed it; nothing read whole
    assert len(image_memo.MEMO) == 0
