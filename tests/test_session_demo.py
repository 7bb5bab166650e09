"""The demo's conversation panel without a browser: turns and their results, the next request composing with the
earlier ones, pick a result as the next reference, undo, clear errors; and the panel inside the Gradio app."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_cir.demo import DemoSession
from agent_cir.demo_session import ConversationError, ConversationPanel, _escape_markdown


def _panel(demo_pipeline) -> tuple[ConversationPanel, DemoSession]:
    demo = DemoSession(demo_pipeline)
    return ConversationPanel(demo_pipeline, demo.served, demo.path_of), demo


def test_turns_show_their_results_and_later_requests_keep_earlier_ones(demo_pipeline):
    panel, demo = _panel(demo_pipeline)
    first = panel.start("make it red", picked="photo_03.png")
    assert len(first.turns) == 1 and len(first.turns[0].results) == 8
    assert all(Path(path).is_file() and Path(path).is_relative_to(demo.served.folder) for path, _ in first.turns[0].results)
    assert "photo 03" not in " ".join(label for _, label in first.turns[0].results)  # the reference is excluded
    second = panel.say("add a dog")
    assert [t.kind for t in second.turns] == ["query", "refine"]
    assert panel.session.history[-1].dialogue_seen == ["make it red", "add a dog"]
    assert "1. make it red" in second.log and "2. add a dog" in second.log
    assert second.reference is not None and Path(second.reference).is_relative_to(demo.served.folder)


def test_pick_a_result_as_the_next_reference_then_undo(demo_pipeline):
    panel, _ = _panel(demo_pipeline)
    view = panel.start("make it red", picked="photo_03.png")
    chosen = panel.session.results[1].id
    picked = panel.pick(2)
    assert panel.session.reference.gallery_id == chosen and picked.turns[-1].kind == "pick"
    assert "as the new reference" in picked.log
    after = panel.say("on a beach")
    assert panel.session.history[-1].reference.gallery_id == chosen
    assert chosen not in [r.id for r in panel.session.results]
    panel.undo(), panel.undo()
    assert panel.session.reference.gallery_id == "photo_03.png"
    assert len(after.turns) == 3 and len(panel.view().turns) == 1 == len(view.turns)


def test_conversation_errors_are_clear(demo_pipeline):
    panel, _ = _panel(demo_pipeline)
    with pytest.raises(ConversationError, match="start a conversation first"):
        panel.say("make it red")
    with pytest.raises(ConversationError, match="reference image"):
        panel.start("make it red")
    with pytest.raises(ConversationError, match="type what should change"):
        panel.start("  ", picked="photo_03.png")
    panel.start("make it red", picked="photo_03.png")
    for bad in (0, 99, 1.5, None):
        with pytest.raises(ConversationError, match="from 1 to 8"):
            panel.pick(bad)


def test_model_text_in_the_log_cannot_inject_html():
    assert _escape_markdown("<img src=x onerror=alert(1)>\x1b[2J") == "&lt;img src=x onerror=alert(1)&gt; [2J"


def test_the_demo_app_has_the_conversation_panel(demo_pipeline):
    pytest.importorskip("gradio")
    from agent_cir.demo import build_demo

    app = build_demo(demo_pipeline)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"conversation-send", "conversation-pick", "conversation-undo", "conversation-results"} <= ids
