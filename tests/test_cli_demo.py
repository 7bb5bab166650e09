"""`agent-cir demo`'s messages (issue 20.7): no advice the demo cannot take, no Gradio hint a CLI user cannot act on."""

from __future__ import annotations

import io
import types

import pytest
from typer.testing import CliRunner

from agent_cir.cli import _register, app

_register()
runner = CliRunner()


def _mismatch_message() -> str:
    from agent_cir.config import recipe_from_dict
    from agent_cir.encoders.recipe_identity import check_recipe_encoder

    recipe = recipe_from_dict({"name": "r", "encoder": {"backend": "open_clip", "model": "ViT-L-14",
                                                         "pretrained": "openai"}}, source="test")
    index = types.SimpleNamespace(directory="my_index", meta={"encoder": {"backend": "open_clip", "model": "ViT-B-32",
                                                                            "pretrained": "none"}})
    with pytest.raises(Exception) as caught:
        check_recipe_encoder(recipe, index)
    return str(caught.value)


def test_the_encoder_mismatch_error_of_the_demo_gives_no_search_only_advice(monkeypatch, tmp_path):
    import agent_cir.demo as demo_module
    from agent_cir.errors import AgentCirError

    message = _mismatch_message()
    assert "--use-index-encoder" in message  # the pipeline's own message, as `search` shows it

    def launch_demo(*args, **kwargs):
        raise AgentCirError(message)

    monkeypatch.setattr(demo_module, "launch_demo", launch_demo)
    monkeypatch.setattr(demo_module, "_import_gradio", lambda: None, raising=False)
    result = runner.invoke(app, ["demo", "-c", "local", "-i", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--use-index-encoder" not in result.stderr
    assert "re-index the images" in result.stderr and "recipe whose encoder is the index's" in result.stderr


def test_gradios_share_hint_is_dropped_and_everything_else_kept(monkeypatch):
    from agent_cir.cli.demo_cmd import _DropLines

    out = io.StringIO()
    stream = _DropLines(out, ("share=True",))
    stream.write("* Running on local URL:  http://127.0.0.1:7860\n* To create a public link, set `share=True` in ")
    stream.write("`launch()`.\nready\npartial")
    stream.flush()
    assert out.getvalue() == "* Running on local URL:  http://127.0.0.1:7860\nready\npartial"
