"""The top-level Python API: light import, lazy names, Query's automatic id."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent_cir.types import Query

ROOT = Path(__file__).resolve().parent.parent


def test_import_is_light_and_the_public_names_resolve():
    code = (
        "import sys, json, agent_cir\n"
        "light = not any(m in sys.modules for m in ('torch', 'faiss', 'open_clip', 'transformers'))\n"
        "from agent_cir import Pipeline, Query, GalleryIndex\n"
        "print(json.dumps({'light': light, 'names': [Pipeline.__name__, Query.__name__, GalleryIndex.__name__]}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"light": True, "names": ["Pipeline", "Query", "GalleryIndex"]}


def test_unknown_attribute_is_an_attribute_error():
    import agent_cir

    try:
        agent_cir.NoSuchThing  # noqa: B018
    except AttributeError as err:
        assert "NoSuchThing" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_positional_and_keyword_ids_are_kept():
    assert Query("q1", "make it red").id == "q1" and Query("q1", "make it red").text == "make it red"
    assert Query(id="mine", image="a.jpg", text="x").id == "mine"


def test_auto_id_is_stable_across_processes_and_paths_become_strings():
    local = Query(image=Path("ref.jpg"), text="make it red")
    assert local.image == "ref.jpg" and re.fullmatch(r"q-[0-9a-f]{10}", local.id)
    code = "from agent_cir.types import Query; print(Query(image='ref.jpg', text='make it red').id)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert run.stdout.strip() == local.id


@given(st.text(max_size=40), st.one_of(st.none(), st.text(min_size=1, max_size=20)),
       st.one_of(st.none(), st.text(max_size=20)))
def test_auto_id_depends_on_text_image_and_target_only(text, image, target):
    query = Query(text=text, image=image, target_text=target)
    assert re.fullmatch(r"q-[0-9a-f]{10}", query.id)
    assert Query(text=text, image=image, target_text=target, meta={"x": 1}).id == query.id
    assert Query(text=text + "!", image=image, target_text=target).id != query.id
    assert Query(text=text, image=(image or "") + "x", target_text=target).id != query.id
    assert Query(text=text, image=image, target_text=(target or "") + "t").id != query.id
