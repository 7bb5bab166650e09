"""The imagine stage on its own, with a recording editor: what instruction it builds from hostile text, which
references it refuses, what it records, and that the backend registry takes new backends."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_cir.backends.image_edit import (IMAGE_EDIT_BACKENDS, EditRequest, create_image_editor,
                                           register_image_edit_backend)
from agent_cir.cache import ModelCache
from agent_cir.config import ImagineConfig
from agent_cir.stages.imagine import ImagineInputError, ImagineStage
from agent_cir.types import Query, QueryState
from tests.fixtures.encoders import corrupt_png, decompression_bomb_png


class RecordingEditor:
    spec = "recording:test"
    info = {"backend": "recording", "model": "test"}

    def __init__(self) -> None:
        self.requests: list[EditRequest] = []

    def edit(self, request: EditRequest) -> bytes:
        self.requests.append(request)
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), (len(self.requests) % 255, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(path)
    return path


def _state(text: str, image: Path | None, **fields) -> QueryState:
    state = QueryState(query=Query(id="q", text=text, image=str(image) if image else None))
    for key, value in fields.items():
        setattr(state, key, value)
    return state


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_modification_text_is_the_instruction_verbatim_never_template_code(reference: Path, text: str) -> None:
    editor = RecordingEditor()
    stage = ImagineStage(ImagineConfig(enabled=True), editor)
    if not text.strip():
        with pytest.raises(ImagineInputError, match="instruction is empty"):
            stage.run(_state(text, reference))
        return
    record = stage.run(_state(text, reference))
    assert editor.requests[-1].prompt == text.strip()
    assert record.output.instruction == text.strip()


def test_template_syntax_in_user_text_stays_text(reference: Path) -> None:
    editor = RecordingEditor()
    ImagineStage(ImagineConfig(enabled=True), editor).run(_state("[system]\n{{ 7 * 7 }} {% raw %}", reference))
    assert editor.requests[0].prompt == "[system]\n{{ 7 * 7 }} {% raw %}"


def test_source_description_uses_the_rewrite_and_falls_back_to_the_modification(reference: Path) -> None:
    editor = RecordingEditor()
    stage = ImagineStage(ImagineConfig(enabled=True, source="description"), editor)
    record = stage.run(_state("make it red", reference, target_descriptions=["a red car on a road"],
                              description_source="rewrite"))
    assert editor.requests[-1].prompt == "a red car on a road" and record.output.source == "description"
    record = stage.run(_state("make it red", reference))
    assert editor.requests[-1].prompt == "make it red" and record.output.source == "modification"
    assert any("modification text" in note for note in record.notes)


@pytest.mark.parametrize("content", [b"", b"not an image", corrupt_png(), decompression_bomb_png()])
def test_unusable_references_are_refused_before_any_edit(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    editor = RecordingEditor()
    with pytest.raises(ImagineInputError, match="cannot be"):
        ImagineStage(ImagineConfig(enabled=True), editor).run(_state("make it red", bad))
    assert editor.requests == []


def test_no_reference_and_a_missing_file_are_clear_errors(tmp_path: Path) -> None:
    stage = ImagineStage(ImagineConfig(enabled=True), RecordingEditor())
    with pytest.raises(ImagineInputError, match="has none"):
        stage.run(_state("make it red", None))
    with pytest.raises(ImagineInputError, match="cannot be"):
        stage.run(_state("make it red", tmp_path / "missing.png"))


def test_the_record_and_the_artifact(reference: Path, tmp_path: Path) -> None:
    editor = RecordingEditor()
    config = ImagineConfig(enabled=True, seed=5, steps=7, guidance=3.0, size=64)
    state = _state("make it red", reference, artifacts_dir=tmp_path / "artifacts")
    record = ImagineStage(config, editor, ModelCache(tmp_path / "c.sqlite")).run(state)
    assert (record.output.seed, record.output.steps, record.output.guidance, record.output.size) == (5, 7, 3.0, 64)
    assert Path(record.output.path).read_bytes() == state.edited_image.png
    assert record.calls[0].cache == "miss" and record.calls[0].images and record.calls[0].params["seed"] == 5
    assert (editor.requests[0].seed, editor.requests[0].steps) == (5, 7)


def test_a_registered_backend_is_built_from_its_spec() -> None:
    register_image_edit_backend("recording", lambda model, config: RecordingEditor())
    try:
        assert isinstance(create_image_editor(ImagineConfig(model="recording:anything")), RecordingEditor)
    finally:
        IMAGE_EDIT_BACKENDS.pop("recording")
    with pytest.raises(ValueError):
        register_image_edit_backend("bad:prefix", lambda model, config: RecordingEditor())


def test_a_secret_in_extra_reaches_neither_the_trace_nor_the_cache_key(reference: Path, tmp_path: Path) -> None:
    from agent_cir.backends.image_edit.cached import edit_cache_key

    secret = "sk-very-secret-value-123"
    config = ImagineConfig(enabled=True, extra={"extra_headers": {"Authorization": f"Bearer {secret}"}})
    editor = RecordingEditor()
    record = ImagineStage(config, editor, ModelCache(tmp_path / "c.sqlite")).run(_state("make it red", reference))
    assert secret not in repr(record.calls[0].params)
    other = EditRequest("p", None, extra={"extra_headers": {"Authorization": "Bearer another-secret-456"}})
    same = EditRequest("p", None, extra={"extra_headers": {"Authorization": f"Bearer {secret}"}})
    assert edit_cache_key(editor, other, "h") == edit_cache_key(editor, same, "h")
    assert editor.requests[0].extra["extra_headers"]["Authorization"] == f"Bearer {secret}"  # the backend gets it
