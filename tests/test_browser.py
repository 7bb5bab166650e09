"""The report and the demo in a real headless browser (Debian chromium driven by Playwright).

Every image must load (naturalWidth > 0), no request may leave the machine, and a screenshot of each page
is saved: into the test's tmp folder, or into $AGENT_CIR_SCREENSHOTS (scripts/screenshots.py uses this to
make the README's pictures with this same code).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.fixtures.report import DEMO_CAPTION, DEMO_MODIFICATION, DEMO_TARGET

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    executable = _chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (scripts/install.sh installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("AGENT_CIR_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _watch_requests(page, allowed_hosts: set[str]) -> list[str]:
    """Collects every request that would leave the machine (the pages must not make any)."""
    outside: list[str] = []

    def check(request) -> None:
        url = urlparse(request.url)
        if url.scheme in ("data", "blob", "file", "about"):
            return
        if url.hostname not in allowed_hosts:
            outside.append(request.url)

    page.on("request", check)
    return outside


def _images_state(page) -> list[dict]:
    return page.eval_on_selector_all(
        "img", "els => els.map(e => ({src: e.getAttribute('src'), complete: e.complete, width: e.naturalWidth}))")


def _assert_all_images_loaded(page) -> int:
    page.wait_for_load_state("load")
    images = _images_state(page)
    broken = [img["src"] for img in images if not (img["complete"] and img["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    return len(images)


def test_report_pages_open_from_disk_with_every_image(browser, synthetic_run, tmp_path, screenshots):
    from agent_cir.report import build_report

    index = build_report(synthetic_run.run_dir, tmp_path / "report")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = _watch_requests(page, allowed_hosts=set())
    page.goto(index.resolve().as_uri())
    assert _assert_all_images_loaded(page) == 6, "one reference thumbnail per query row"
    assert page.locator("tr[data-status]").count() == 6
    page.screenshot(path=str(screenshots / "report-index.png"), full_page=True)

    # the client-side filter shows only the chosen status
    page.click("button[data-filter='lost']")
    visible = page.locator("tr[data-status]:visible")
    assert visible.count() == 1 and visible.first.get_attribute("data-query-id") == "q-lost"
    page.click("button[data-filter='all']")
    assert page.locator("tr[data-status]:visible").count() == 6

    page.click("a:text-is('q-improved')")
    page.wait_for_url("**/queries/q-improved-*.html")
    count = _assert_all_images_loaded(page)
    assert count >= 1 + 1 + 6 + 1 + 6, "reference, ground truth, top-k, grid, final ranking"
    assert page.locator("#retrieval figure.target").count() == 1
    assert page.locator("svg.rank-chart circle").count() == 2
    page.screenshot(path=str(screenshots / "report-query.png"), full_page=True)
    page.close()
    assert outside == [], f"the report made requests off the machine: {outside}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_demo_shows_each_stage_and_reruns_from_an_edited_description(browser, demo_pipeline, screenshots):
    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    from agent_cir.demo import build_demo, launch_app

    app = build_demo(demo_pipeline, title="agent_cir demo")
    port = _free_port()
    launch_app(app, demo_pipeline, host="127.0.0.1", port=port, artifacts_dir=demo_pipeline.artifacts_dir,
               block=False)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        outside = _watch_requests(page, allowed_hosts={"127.0.0.1", "localhost"})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#run", timeout=60_000)
        page.set_input_files("#reference input[type=file]", demo_pipeline.gallery.paths[3])
        page.wait_for_selector("#reference img", timeout=30_000)
        page.fill("#modification textarea", DEMO_MODIFICATION)
        page.click("#run")
        page.wait_for_selector("#stage-log :text('rerank')", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('#final img').length >= 8", timeout=30_000)
        assert page.input_value("#captions textarea") == DEMO_CAPTION
        assert page.input_value("#description textarea") == DEMO_TARGET
        assert "ranking" in page.input_value("#judge textarea")
        log = page.inner_text("#stage-log")
        for stage in ("caption", "rewrite", "retrieve", "rerank"):
            assert stage in log
        page.wait_for_function("document.querySelector('#grid img') && document.querySelector('#grid img').naturalWidth > 0",
                               timeout=30_000)
        assert page.locator("#retrieval img").count() >= 8
        _assert_all_images_loaded(page)
        page.screenshot(path=str(screenshots / "demo.png"), full_page=True)

        # intervention: edit the description and re-run from retrieval
        page.fill("#description textarea", "a green square on a white table")
        page.click("#rerun")
        page.wait_for_selector("#stage-log :text('set by hand')", timeout=60_000)
        log = page.inner_text("#stage-log")
        assert "caption: skipped" in log and "rewrite: skipped" in log
        assert page.input_value("#captions textarea") == DEMO_CAPTION, "the earlier caption stays on screen"
        page.close()
        assert outside == [], f"the demo page made requests off the machine: {outside}"
    finally:
        app.close()
