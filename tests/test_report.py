"""The static HTML report: right query pages, right statuses and highlights, filters, thumbnails, CLI."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_cir.report import ReportError, build_report
from agent_cir.trace.io import TraceWriter
from tests.fixtures.report import QUERIES, gallery_id, make_trace, write_run


class _Page(HTMLParser):
    """Collects what the assertions need: images, placeholders, links, highlighted items, table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.placeholders = 0
        self.links: list[str] = []
        self.targets: list[str] = []
        self.items: list[str] = []
        self.rows: dict[str, str] = {}
        self.manual_badges = 0
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "img":
            self.images.append(a.get("src") or "")
        if "placeholder" in classes:
            self.placeholders += 1
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag == "figure" and "item" in classes:
            self.items.append(a.get("data-id") or "")
            if "target" in classes:
                self.targets.append(a.get("data-id") or "")
        if tag == "tr" and a.get("data-query-id"):
            self.rows[a["data-query-id"] or ""] = a.get("data-status") or ""
        if tag == "span" and "manual" in classes:
            self.manual_badges += 1
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"] or "")
        if tag == "link":
            self.stylesheets.append(a.get("href") or "")


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_statuses_ranks_and_one_page_per_query(synthetic_run, tmp_path):
    out = tmp_path / "report"
    index = build_report(synthetic_run.run_dir, out)
    assert index == out / "index.html"
    data = summary(out)
    assert {q["id"]: q["status"] for q in data["queries"]} == synthetic_run.expected_status
    assert {q["id"]: (q["retrieve_rank"], q["final_rank"]) for q in data["queries"]} == synthetic_run.expected_ranks
    page = parse(index)
    assert page.rows == synthetic_run.expected_status
    query_links = [link for link in page.links if link.startswith("queries/")]
    assert sorted(query_links) == sorted(q["page"] for q in data["queries"])
    for link in query_links:
        assert (out / link).is_file()
    # metrics.json and the per-stage totals are on the index
    html = index.read_text()
    assert "recall@1" in html and "0.400" in html and "a note from the runner" in html
    assert 'data-stage="rerank"' in html and 'data-stage="retrieve"' in html
    assert not page.scripts and not any(s.startswith("http") for s in page.stylesheets), "no external assets"


def _query_page(out: Path, query_id: str) -> Path:
    entry = next(q for q in summary(out)["queries"] if q["id"] == query_id)
    return out / entry["page"]


def test_ground_truth_highlighted_only_on_ground_truth_items(synthetic_run, tmp_path):
    out = tmp_path / "report"
    build_report(synthetic_run.run_dir, out)
    improved = parse(_query_page(out, "q-improved"))
    # retrieval list + final ranking + ground-truth panel all mark img03 and only img03
    assert set(improved.targets) == {gallery_id(3)}
    assert improved.targets.count(gallery_id(3)) == 3
    # page order: ground-truth panel, then the retrieval top-k in retrieval order
    assert improved.items[1:7] == [gallery_id(n) for n in QUERIES["q-improved"][1]]
    html = _query_page(out, "q-improved").read_text()
    assert 'data-stage="retrieve" data-rank="#4"' in html and 'data-stage="rerank" data-rank="#1"' in html
    assert "Ranking: 4 &gt; 1 &gt; 3" in html, "the judge's raw answer is shown"
    assert "window 0, pass 0: appended_missing (appended: [2])" in html, "repairs are shown (they agree with the answer)"

    lost = parse(_query_page(out, "q-lost"))
    assert lost.targets == [gallery_id(10)], "a lost target appears only in the ground-truth panel"
    assert 'data-rank="&gt; 6"' in _query_page(out, "q-lost").read_text()

    unknown_html = _query_page(out, "q-unknown").read_text()
    assert parse(_query_page(out, "q-unknown")).targets == []
    assert "rank-chart" not in unknown_html


def test_manual_description_badge(synthetic_run, tmp_path):
    out = tmp_path / "report"
    build_report(synthetic_run.run_dir, out)
    manual = parse(_query_page(out, "q-manual"))
    assert manual.manual_badges == 1
    assert "manual target description" in _query_page(out, "q-manual").read_text()
    assert parse(_query_page(out, "q-hit")).manual_badges == 0
    assert parse(out / "index.html").manual_badges == 1


@pytest.mark.parametrize("status, expected", [("lost", ["q-lost"]), ("improved", ["q-improved"]),
                                              ("hurt", ["q-hurt"]), ("hit", ["q-hit", "q-manual"])])
def test_filter_selects_the_right_queries(synthetic_run, tmp_path, status, expected):
    out = tmp_path / status
    build_report(synthetic_run.run_dir, out, filter=status)
    assert list(parse(out / "index.html").rows) == expected
    assert sorted(p.name.rsplit("-", 1)[0] for p in (out / "queries").glob("*.html")) == sorted(expected)
    # counts still describe the whole run
    assert summary(out)["counts"] == {"lost": 1, "improved": 1, "hurt": 1, "hit": 2, "unknown": 1}


def test_every_image_link_resolves_and_thumbnails_are_cached(synthetic_run, tmp_path):
    out = tmp_path / "report"
    build_report(synthetic_run.run_dir, out)
    pages = [out / "index.html", *sorted((out / "queries").glob("*.html"))]
    for page_path in pages:
        for src in parse(page_path).images:
            assert src and not src.startswith(("http:", "https:", "/")), src
            assert (page_path.parent / src).is_file(), f"{page_path.name}: {src} missing"
    first = summary(out)["thumbnails"]
    assert first["generated"] > 0
    build_report(synthetic_run.run_dir, out)
    second = summary(out)["thumbnails"]
    assert second["generated"] == 0 and second["reused"] == first["generated"]
    # a changed image gets a new thumbnail
    changed = synthetic_run.gallery_dir / gallery_id(3)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    build_report(synthetic_run.run_dir, out)
    assert summary(out)["thumbnails"]["generated"] == 1


def test_caption_only_run_draws_placeholders_not_broken_images(tmp_path):
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        writer.write(make_trace("surrogate-1", None, None, ground_truth=[2], retrieve_order=[1, 2, 3, 4, 5, 0],
                                rerank_order=None))
    out = tmp_path / "report"
    build_report(traces, out)
    page = parse(_query_page(out, "surrogate-1"))
    assert page.images == []
    assert page.placeholders == 6 + 1 + 1  # top-k + reference + ground truth; the final ranking is not repeated
    assert page.targets.count(gallery_id(2)) == 2
    assert "no rerank stage ran" in _query_page(out, "surrogate-1").read_text()
    assert summary(out)["queries"][0]["status"] == "hit"


def test_surrogate_eval_run_shows_gallery_captions_in_placeholders(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({gallery_id(n): [f"caption of picture {n}"] for n in range(12)}))
    (run_dir / "run.json").write_text(json.dumps({"dataset": "cirr", "gallery_captions": {"path": str(captions)}}))
    with TraceWriter(run_dir / "traces.jsonl", mode="w") as writer:
        writer.write(make_trace("s-1", None, None, ground_truth=[2], retrieve_order=[1, 2, 3, 4, 5, 0], rerank_order=None))
    out = tmp_path / "report"
    build_report(run_dir, out)
    html = _query_page(out, "s-1").read_text()
    for n in (1, 2, 3, 4, 5, 0, 9):  # top-k, ground truth, reference (img09)
        assert f"caption of picture {n}<" in html


def test_pagination_and_limit(tmp_path):
    run_dir = write_run(tmp_path, repeat=2)  # 12 queries
    out = tmp_path / "report"
    build_report(run_dir, out, page_size=5)
    data = summary(out)
    assert data["index_pages"] == ["index.html", "index-2.html", "index-3.html"]
    seen: list[str] = []
    for name in data["index_pages"]:
        page = parse(out / name)
        seen += list(page.rows)
        assert {"index.html", "index-2.html", "index-3.html"} - {name} <= set(page.links)
    assert len(seen) == 12 and len(set(seen)) == 12
    query = next(q for q in data["queries"] if q["index_page"] == "index-3.html")
    assert "../index-3.html" in parse(out / query["page"]).links

    build_report(run_dir, out, limit=5, page_size=5)
    assert len(summary(out)["queries"]) == 5
    assert not (out / "index-2.html").exists(), "stale pages of a larger report are removed"
    assert len(list((out / "queries").glob("*.html"))) == 5
    assert not (out / "index-3.html").exists()


def test_duplicate_ids_keep_last_record_and_torn_line_is_skipped(tmp_path):
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        writer.write(make_trace("dup", None, None, ground_truth=[9], retrieve_order=[0, 1, 2, 3, 4, 5], rerank_order=None))
        writer.write(make_trace("dup", None, None, ground_truth=[1], retrieve_order=[0, 1, 2, 3, 4, 5], rerank_order=None))
    with open(traces, "a") as handle:
        handle.write('{"query_id": "torn", "sta')
    out = tmp_path / "report"
    build_report(traces, out)
    data = summary(out)
    assert [(q["id"], q["status"], q["retrieve_rank"]) for q in data["queries"]] == [("dup", "hit", 2)]
    assert "1 query id(s) appear more than once in traces.jsonl (e.g. dup)" in (out / "index.html").read_text()


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(ReportError, match="no such file or folder"):
        build_report(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ReportError, match="without traces.jsonl"):
        build_report(tmp_path / "empty_run", tmp_path / "out")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ReportError, match="no trace records"):
        build_report(tmp_path / "empty.jsonl", tmp_path / "out")
    (tmp_path / "empty_run" / "traces.jsonl").write_text("")
    with pytest.raises(ReportError, match="unknown filter"):
        build_report(tmp_path / "empty_run", tmp_path / "out", filter="bogus")


def test_cli_report(synthetic_run, tmp_path):
    from agent_cir.cli import _register, app

    _register()
    runner = CliRunner()
    out = tmp_path / "cli-report"
    result = runner.invoke(app, ["report", str(synthetic_run.run_dir), "--out", str(out), "--filter", "hurt"])
    assert result.exit_code == 0, result.output
    assert "report written" in result.output
    assert list(parse(out / "index.html").rows) == ["q-hurt"]
    bad = runner.invoke(app, ["report", str(tmp_path / "nowhere"), "--out", str(out)])
    assert bad.exit_code == 2
    assert "no such file or folder" in bad.output and "Traceback" not in bad.output
    assert re.search(r"error: .*nowhere", bad.output)


def test_report_of_real_pipeline_traces_with_an_intervention(demo_pipeline, tmp_path):
    """Traces written by the real Pipeline (tiny open_clip, scripted models) render with their grids."""
    from agent_cir.types import Query

    reference = demo_pipeline.gallery.paths[3]
    first = demo_pipeline.run(Query(id="real-1", text="make it red", image=reference, reference_id="photo_03.png"))
    retrieved = first.trace.stage("retrieve").output.candidates
    target = retrieved[2].id  # the scripted judge puts cell 3 first: the rerank improves this target
    meta = {"ground_truth": [target]}
    runs = [
        demo_pipeline.run(Query(id="real-1", text="make it red", image=reference, reference_id="photo_03.png", meta=meta)),
        demo_pipeline.run(Query(id="real-2", text="make it red", image=reference, reference_id="photo_03.png",
                                target_text="a green square", meta=meta)),
    ]
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        for result in runs:
            writer.write(result.trace)
    out = tmp_path / "report"
    build_report(traces, out)
    page = parse(out / next(q for q in summary(out)["queries"] if q["id"] == "real-1")["page"])
    assert not [src for src in page.images if not src.startswith("../grids/")], \
        "a bare traces file names no gallery folder: its gallery images are not shown"
    assert "outside the gallery" in (out / "index.html").read_text()
    build_report(traces, out, gallery=[Path(demo_pipeline.gallery.paths[0]).parent, demo_pipeline.artifacts_dir])
    entries = {q["id"]: q for q in summary(out)["queries"]}
    assert entries["real-1"]["status"] == "improved"
    assert (entries["real-1"]["retrieve_rank"], entries["real-1"]["final_rank"]) == (3, 1)
    page = parse(out / entries["real-1"]["page"])
    assert len([src for src in page.images if src.startswith("../grids/")]) == 1, "the judge's grid is shown"
    assert all((out / "queries" / src).is_file() for src in page.images)
    manual = parse(out / entries["real-2"]["page"])
    assert manual.manual_badges == 1
    assert "target description set by hand" in (out / entries["real-2"]["page"]).read_text()


def test_metrics_files_flat_or_nested():
    from agent_cir.report.analyse import split_metrics

    nested = split_metrics({"dataset": "cirr", "metrics": {"recall@1": 0.3}, "notes": ["n1"], "surrogate_note": "n2",
                            "categories": None, "queries": {"selected": 3}})
    assert nested == {"scores": {"recall@1": 0.3}, "facts": {"dataset": "cirr", "queries": {"selected": 3}},
                      "notes": ["n1", "n2"]}
    flat = split_metrics({"recall@1": 0.3, "recall@5": 0.5, "benchmark": "x"})
    assert flat == {"scores": {"recall@1": 0.3, "recall@5": 0.5}, "facts": {"benchmark": "x"}, "notes": []}
    assert split_metrics(None)["scores"] is None


# ------------------------------------------------------------------------------------ the output folder


def test_a_folder_with_files_of_its_own_is_refused_and_left_untouched(synthetic_run, tmp_path):
    out = tmp_path / "mine"
    (out / "queries").mkdir(parents=True)
    keep = {out / "queries" / "notes.html": "my notes", out / "index-2.html": "my page", out / "todo.txt": "x"}
    for path, text in keep.items():
        path.write_text(text)
    with pytest.raises(ReportError, match=r"is not empty .* Choose a new or empty folder for --out"):
        build_report(synthetic_run.run_dir, out)
    assert {p: p.read_text() for p in keep} == keep
    assert sorted(p.name for p in out.rglob("*")) == ["index-2.html", "notes.html", "queries", "todo.txt"]

    from agent_cir.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["report", str(synthetic_run.run_dir), "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not empty" in result.output and {p: p.read_text() for p in keep} == keep
    with pytest.raises(ReportError, match="is a file"):
        build_report(synthetic_run.run_dir, out / "todo.txt")


def test_a_report_folder_is_reused_and_only_its_own_files_are_removed(tmp_path):
    from agent_cir.report.folder import MARKER_NAME, read_marker

    run_dir = write_run(tmp_path, repeat=2)  # 12 queries
    out = tmp_path / "report"
    build_report(run_dir, out, page_size=5)
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["format"] == "agent_cir-report" and marker["version"] == 1
    listed = set(marker["files"])
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MARKER_NAME,
                                                                                           ".agent_cir_report.lock"}
    assert listed == on_disk, "the marker lists exactly the files the report wrote"
    assert not list(out.rglob("*.part")), "no temporary file is left"
    # the user adds files of their own to the report folder
    (out / "queries" / "my-notes.html").write_text("mine")
    (out / "README.txt").write_text("mine too")
    build_report(run_dir, out, limit=3, page_size=5)
    assert (out / "queries" / "my-notes.html").read_text() == "mine" and (out / "README.txt").read_text() == "mine too"
    assert len(list((out / "queries").glob("*-*.html"))) == 3 + 1  # three pages + the user's
    assert not (out / "index-2.html").exists()
    assert "queries/my-notes.html" not in read_marker(out)
    # a file of the user's where the next report wants to write is refused, not overwritten
    wanted = next(q["page"] for q in summary(out)["queries"])
    build_report(run_dir, out, page_size=5)  # the full report again: 12 pages
    victim = out / "index-3.html"
    victim.unlink()
    victim.write_text("the user's own page")
    marker = json.loads((out / MARKER_NAME).read_text())
    marker["files"].remove("index-3.html")
    (out / MARKER_NAME).write_text(json.dumps(marker))
    with pytest.raises(ReportError, match="was not written by an earlier report"):
        build_report(run_dir, out, page_size=5)
    assert victim.read_text() == "the user's own page"
    assert (out / wanted).is_file()


def test_a_tampered_marker_never_deletes_outside_the_folder(synthetic_run, tmp_path):
    from agent_cir.report.folder import MARKER_NAME

    out = tmp_path / "report"
    build_report(synthetic_run.run_dir, out)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    marker = json.loads((out / MARKER_NAME).read_text())
    marker["files"] += ["../precious.txt", str(outside), "queries/../../precious.txt", "", 7, "sub\\..\\x"]
    (out / MARKER_NAME).write_text(json.dumps(marker))
    build_report(synthetic_run.run_dir, out, filter="lost")
    assert outside.read_text() == "keep me"
    # a symlinked folder inside the report folder is not followed for deletion either
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "page.html").write_text("not the report's")
    os.symlink(elsewhere, out / "linked")
    marker = json.loads((out / MARKER_NAME).read_text())
    marker["files"].append("linked/page.html")
    (out / MARKER_NAME).write_text(json.dumps(marker))
    build_report(synthetic_run.run_dir, out)
    assert (elsewhere / "page.html").read_text() == "not the report's"


def test_an_interrupted_report_is_finished_by_the_next_one(synthetic_run, tmp_path, monkeypatch):
    from agent_cir.report import folder as folder_module

    out = tmp_path / "report"

    def crash(self, keep_prefixes=()):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(folder_module.ReportFolder, "commit", crash)
        with pytest.raises(KeyboardInterrupt):
            build_report(synthetic_run.run_dir, out)
    assert (out / "index.html").is_file() and not (out / folder_module.MARKER_NAME).exists()
    build_report(synthetic_run.run_dir, out, filter="hurt")  # its files are known to be the report's own
    assert list(parse(out / "index.html").rows) == ["q-hurt"]
    assert len(list((out / "queries").glob("*.html"))) == 1
    assert not (out / folder_module.JOURNAL_NAME).exists()


def test_a_second_writer_into_the_same_folder_is_refused(synthetic_run, tmp_path):
    from filelock import FileLock

    from agent_cir.report.folder import LOCK_NAME

    out = tmp_path / "report"
    out.mkdir()
    with FileLock(str(out / LOCK_NAME)):
        with pytest.raises(ReportError, match="another report is being written"):
            build_report(synthetic_run.run_dir, out)
    build_report(synthetic_run.run_dir, out)


# --------------------------------------------------------------------------------------- image paths


def _one_trace_run(tmp_path: Path, rows: list[dict], image_path: str | None = None) -> Path:
    """An eval run folder whose gallery is tmp/gallery, with one trace naming ``rows`` as its ranking."""
    gallery = tmp_path / "gallery"
    gallery.mkdir(exist_ok=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"name": "paths", "images_root": str(gallery)}))
    trace = make_trace("paths-1", None, None, ground_truth=[], retrieve_order=[0], rerank_order=None)
    trace["results"] = rows
    trace["stages"] = [s for s in trace["stages"] if s["stage"] != "retrieve"]
    trace["query"]["image_path"] = image_path
    with TraceWriter(run_dir / "traces.jsonl", mode="w") as writer:
        writer.write(trace)
    return run_dir


def test_only_images_inside_the_gallery_are_embedded(tmp_path):
    from PIL import Image

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(gallery / "inside.png")
    private = tmp_path / "private"
    private.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(private / "secret.png")
    os.symlink(private / "secret.png", gallery / "link-out.png")
    rows = [
        {"rank": 1, "id": "inside.png", "path": str(gallery / "inside.png"), "score": 0.9},
        {"rank": 2, "id": "abs", "path": str(private / "secret.png"), "score": 0.8},
        {"rank": 3, "id": "dotdot", "path": str(gallery / ".." / "private" / "secret.png"), "score": 0.7},
        {"rank": 4, "id": "relative", "path": "../private/secret.png", "score": 0.6},
        {"rank": 5, "id": "link", "path": str(gallery / "link-out.png"), "score": 0.5},
        {"rank": 6, "id": "../private/secret.png", "path": None, "score": 0.4},
    ]
    run_dir = _one_trace_run(tmp_path, rows, image_path=str(private / "secret.png"))
    out = tmp_path / "report"
    build_report(run_dir, out)
    page_path = out / summary(out)["queries"][0]["page"]
    page = parse(page_path)
    assert len(page.images) == 1, "only the image inside the gallery is shown"
    html = page_path.read_text()
    assert html.count("outside the gallery") >= 5  # abs, dotdot, relative, link, and the reference
    thumbs = list((out / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 1
    with Image.open(thumbs[0]) as thumb:
        assert thumb.convert("RGB").getpixel((5, 5))[0] > 150, "the thumbnail is of the gallery image, not the secret"
    index = (out / "index.html").read_text()
    assert "outside the gallery folders recorded for this run" in index and "--gallery" in index
    assert summary(out)["images_outside_gallery"] >= 4
    # naming the folder on purpose shows it
    out2 = tmp_path / "report2"
    build_report(run_dir, out2, gallery=[private])
    assert len(parse(out2 / summary(out2)["queries"][0]["page"]).images) == 6  # 5 rows with paths + reference


def test_a_bomb_or_broken_image_in_the_gallery_is_a_placeholder_not_a_traceback(tmp_path):
    from PIL import Image

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.new("1", (10_000, 10_000)).save(gallery / "bomb.png")  # 100 MP: over PIL's bomb limit, a tiny file
    (gallery / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (gallery / "recipe.yaml").write_text("name: x\n")
    rows = [{"rank": i + 1, "id": name, "path": str(gallery / name), "score": 0.5}
            for i, name in enumerate(["bomb.png", "broken.jpg", "recipe.yaml"])]
    run_dir = _one_trace_run(tmp_path, rows, image_path=str(gallery / "bomb.png"))
    out = tmp_path / "report"
    build_report(run_dir, out)
    html = (out / summary(out)["queries"][0]["page"]).read_text()
    assert parse(out / summary(out)["queries"][0]["page"]).images == []
    assert "decompression bomb" in html and "not a usable image" in html
    assert "decompression bomb" in (out / "index.html").read_text(), "the index notes list what could not be shown"


# ------------------------------------------------------------------------------------- what pages say


def test_lost_query_shows_the_official_rank_and_k_is_worded_consistently(synthetic_run, tmp_path):
    from tests.fixtures.report import GALLERY_SIZE, LOST_OFFICIAL_RANK, RETRIEVE_K

    out = tmp_path / "report"
    build_report(synthetic_run.run_dir, out)
    index = (out / "index.html").read_text()
    expected = f"rank {LOST_OFFICIAL_RANK} (outside the top {RETRIEVE_K} kept)"
    row = re.search(r'data-query-id="q-lost">(.*?)</tr>', index, re.S).group(1)
    assert expected in row and f"not in top {RETRIEVE_K}" in row
    assert next(q for q in summary(out)["queries"] if q["id"] == "q-lost")["official_rank"] == LOST_OFFICIAL_RANK
    lost = _query_page(out, "q-lost").read_text()
    assert expected in lost
    assert f"Retrieval: top {RETRIEVE_K} of {GALLERY_SIZE} ranked" in lost
    assert f"k (items the stage was asked to rank): {GALLERY_SIZE}" in lost
    assert f"the trace keeps the top {RETRIEVE_K}" in lost
    assert "Retrieval top-" not in lost
    # the query table comes before the run's details, which are collapsible
    assert index.index('id="query-table"') < index.index('id="run-details"') < index.index('id="metrics"')
    assert re.search(r'<details class="card" id="run-details">', index)


def test_random_init_encoder_banner(tmp_path):
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        for number, random_weights in enumerate([True, False, None]):
            trace = make_trace(f"e-{number}", None, None, ground_truth=[1], retrieve_order=[0, 1], rerank_order=None)
            if random_weights is not None:
                trace["encoder"] = {"backend": "open_clip", "model": "ViT-B-32", "pretrained": None,
                                    "preprocess": {}, "random_weights": random_weights}
            writer.write(trace)
    out = tmp_path / "report"
    build_report(traces, out)
    banner = "random-init encoder: rankings are meaningless"
    assert banner in (out / "index.html").read_text() and "1 of 3 queries" in (out / "index.html").read_text()
    assert banner in _query_page(out, "e-0").read_text()
    assert banner not in _query_page(out, "e-1").read_text() and banner not in _query_page(out, "e-2").read_text()
    plain = tmp_path / "plain.jsonl"
    with TraceWriter(plain, mode="w") as writer:
        writer.write(make_trace("p", None, None, ground_truth=[1], retrieve_order=[0, 1], rerank_order=None))
    build_report(plain, tmp_path / "plain-report")
    assert banner not in (tmp_path / "plain-report" / "index.html").read_text()


PAYLOADS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "{{ 7*7 }}", "</pre><b>bold</b>"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_trace_text_is_escaped_everywhere(tmp_path, payload):
    trace = make_trace("x", None, None, ground_truth=[1], retrieve_order=[0, 1, 2, 3], rerank_order=[1, 0, 2, 3])
    trace["query_id"] = trace["query"]["id"] = f"id {payload}"
    trace["query"]["text"] = payload
    trace["captions"] = [payload]
    trace["reasoning"] = payload
    trace["target_descriptions"] = [payload]
    trace["query"]["meta"]["note"] = payload
    rerank = next(s for s in trace["stages"] if s["stage"] == "rerank")
    rerank["calls"][0]["raw"] = payload
    rerank["output"]["repairs"] = [payload]
    trace["results"][0]["id"] = payload
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        writer.write(trace)
    out = tmp_path / "report"
    build_report(traces, out)
    for page in [out / "index.html", *(out / "queries").glob("*.html")]:
        html = page.read_text()
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
        if payload == "{{ 7*7 }}":
            assert payload in html, "template syntax in data is shown as text, never evaluated"
    escaped = payload.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
    assert escaped in (out / "index.html").read_text(), "the modification text is shown, escaped"


# --- issue 18, case 21: stale partial files, file modes, undecodable lines ------------------------------------


def test_a_killed_reports_partial_files_are_removed_by_the_next_report(synthetic_run, tmp_path):
    out = tmp_path / "report"
    build_report(synthetic_run.run_dir, out)
    # What a report killed mid-write leaves: temporary names of its own files (old and current naming).
    stale = [out / ".index.html.12345-0a1b2c3d.part", out / ".index.html.k3j_x9az.part",
             out / ".agent_cir_report.q8w7e6r5.part"]
    page = next((out / "queries").glob("*.html"))
    stale.append(page.parent / f".{page.name}.777-deadbeef.part")
    for path in stale:
        path.write_text("half")
    users = [out / "notes.part", out / ".mine.12345-0a1b2c3d.part"]  # not a temporary of a report file
    for path in users:
        path.write_text("mine")
    build_report(synthetic_run.run_dir, out)
    assert not any(path.exists() for path in stale)
    assert all(path.read_text() == "mine" for path in users)


def test_report_files_get_the_umasks_mode_not_0600(synthetic_run, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "report"
        build_report(synthetic_run.run_dir, out)
    finally:
        os.umask(previous)
    for name in ("index.html", "summary.json", ".agent_cir_report"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    assert next((out / "queries").glob("*.html")).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("bad_line", [b'{"query_id": "bad", "x": "\xff\xfe"}\n', b'{"query_id": "torn", "t": "\xe2\x82'],
                         ids=["invalid-utf8-middle", "torn-multibyte-last-line"])
def test_an_undecodable_line_is_skipped_with_its_line_number_not_fatal(tmp_path, bad_line):
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        writer.write(make_trace("one", None, None, ground_truth=[1], retrieve_order=[0, 1, 2], rerank_order=None))
    with open(traces, "ab") as handle:
        handle.write(bad_line)
        if bad_line.endswith(b"\n"):
            handle.write(json.dumps(make_trace("two", None, None, ground_truth=[1], retrieve_order=[0, 1, 2],
                                               rerank_order=None)).encode() + b"\n")
    out = tmp_path / "report"
    build_report(traces, out)
    ids = [q["id"] for q in summary(out)["queries"]]
    assert ids == (["one", "two"] if bad_line.endswith(b"\n") else ["one"])
    assert "not valid UTF-8 and were skipped (line 2)" in (out / "index.html").read_text()


@pytest.mark.parametrize("ordered_by, field, name", [("judge", "judge_score", "judge"),
                                                     ("fused", "final_score", "fused"),
                                                     ("verifier", "verify_score", "verifier")])
def test_final_rows_show_the_score_that_ordered_them_beside_the_retrieval_score(tmp_path, ordered_by, field, name):
    trace = make_trace("o", None, None, ground_truth=[1], retrieve_order=[0, 1, 2, 3], rerank_order=[1, 0, 2, 3])
    trace["ordered_by"] = ordered_by
    for row, value in zip(trace["results"], [0.91, 0.42]):  # the last two rows were never judged
        row[field] = value
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        writer.write(trace)
    out = tmp_path / "report"
    build_report(traces, out)
    page = _query_page(out, "o").read_text()
    assert "the scores shown are the retrieval scores" not in page
    note = re.search(r'id="ordered-by">(.*?)</p>', page, re.S).group(1)
    assert f"each row shows the {name} score, then the retrieval score (cosine)" in note
    assert "rows with &#39;-&#39; were not shown to the" in note
    final = re.findall(r"<figcaption>(#.*?)</figcaption>", page[page.index('id="ordered-by"'):], re.S)
    # item 1 was retrieved second (cosine 0.85) and ordered first by the later stage's 0.91
    assert f"{name} 0.910" in final[0] and "cosine 0.850" in final[0]
    assert f"{name} 0.420" in final[1] and "cosine 0.900" in final[1]
    assert f"{name} -" in final[2] and "cosine 0.800" in final[2]
    # the retrieval rows name their score too, and carry no later stage's
    retrieval = re.findall(r"<figcaption>(#.*?)</figcaption>", page[:page.index('id="ordered-by"')], re.S)
    assert "cosine 0.900" in retrieval[0] and f"{name} " not in retrieval[0]


def test_a_retrieval_ordered_run_says_so_and_shows_one_score(tmp_path):
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces, mode="w") as writer:
        writer.write(make_trace("r", None, None, ground_truth=[1], retrieve_order=[0, 1], rerank_order=None))
    out = tmp_path / "report"
    build_report(traces, out)
    page = _query_page(out, "r").read_text()
    captions = re.findall(r"<figcaption>(#.*?)</figcaption>", page, re.S)
    assert len(captions) == 2 and all("cosine 0." in caption for caption in captions)
    assert not re.search(r"(judge|fused|verifier) (\d|-)", page)
