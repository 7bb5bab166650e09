"""The judge's grid a demo query made is served to gradio_client when it lies in the demo's own temporary folder
(the trace view names it), and nothing wider is (issue 20 leftover): gallery files, the folder above the demo's
temporary folder and a user's own ``--artifacts-dir`` stay refused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _strings(data: object) -> list[str]:
    if isinstance(data, dict):
        return [s for value in data.values() for s in _strings(value)]
    if isinstance(data, list):
        return [s for value in data for s in _strings(value)]
    return [data] if isinstance(data, str) else []


@pytest.fixture
def own_artifacts_demo(tmp_path, tiny_open_clip_config):
    """A demo started without --artifacts-dir: its grids go to a temporary folder it made itself."""
    import yaml

    pytest.importorskip("gradio")
    from agent_cir.config import EncoderConfig
    from agent_cir.demo import launch_demo
    from agent_cir.encoders import create_encoder
    from agent_cir.index import GalleryIndex
    from tests.fixtures.report import demo_recipe_dict, make_gallery_images

    gallery = tmp_path / "gallery"
    make_gallery_images(gallery, count=6)
    encoder = create_encoder(EncoderConfig(model=str(tiny_open_clip_config), pretrained="none", batch_size=8))
    GalleryIndex.build(gallery, tmp_path / "index", encoder, workers=0, progress=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(demo_recipe_dict()), encoding="utf-8")
    port = _free_port()
    app = launch_demo(recipe, tmp_path / "index", port=port, block=False)
    yield app, f"http://127.0.0.1:{port}", gallery
    app.close()


@pytest.mark.slow
def test_the_grid_the_trace_names_is_served_from_the_demos_own_folder_and_nothing_wider(own_artifacts_demo) -> None:
    import httpx
    from gradio_client import Client

    app, base, gallery = own_artifacts_demo
    client = Client(f"{base}/", download_files=False, verbose=False)
    outputs = client.predict(None, "photo_02.png", "make it red", api_name="/on_run")
    trace = outputs[8]  # the "Trace record" JSON, as gradio_client receives it
    grids = [s for s in _strings(trace) if s.endswith((".png", ".jpg")) and "rerank" in Path(s).name]
    assert grids, json.dumps(trace)[:500]
    artifacts = Path(grids[0]).parents[1]
    assert artifacts.name.startswith("agent_cir_demo_")  # the folder launch_demo made (mkdtemp)
    planted = artifacts.parent / f"{artifacts.name}-neighbour.txt"  # beside it: must not be served
    planted.write_text("not for you", encoding="utf-8")
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            for grid in grids:
                response = http.get(f"/gradio_api/file={grid}")
                assert response.status_code == 200 and response.headers["content-type"].startswith("image/"), grid
            for refused in (gallery / "photo_01.png", planted, Path(f"{artifacts}/../{planted.name}"), artifacts.parent):
                response = http.get(f"/gradio_api/file={refused}")
                assert response.status_code in (403, 404), refused
                assert b"not for you" not in response.content
    finally:
        planted.unlink()


def test_only_the_demos_own_artifacts_folder_is_allowed(tmp_path) -> None:
    from types import SimpleNamespace

    from agent_cir.demo import served_paths

    served = tmp_path / "served"
    session = SimpleNamespace(served=SimpleNamespace(folder=served.resolve()))
    pipeline = SimpleNamespace(gallery=None)
    own = tmp_path / "agent_cir_demo_x"
    allowed, blocked = served_paths(session, pipeline, own, own_artifacts=True)
    assert allowed == [str(served.resolve()), str(own.resolve())] and str(own.resolve()) not in blocked
    users = tmp_path / "my-artifacts"  # --artifacts-dir: a user's folder is never served, only blocked
    allowed, blocked = served_paths(session, pipeline, users)
    assert allowed == [str(served.resolve())] and str(users.resolve()) in blocked
