"""Interactive demo: pick or upload a reference image, type a modification, watch each stage's output
appear, then edit the target description and re-run from retrieval (the intervention).

The stage-by-stage views are plain data (``DemoView``, built by ``stream_query``) so they are tested
without a browser; ``build_demo`` lays them out with Gradio (the optional ``demo`` extra), which is
imported lazily. The server binds to 127.0.0.1 unless told otherwise; Gradio's analytics are switched
off and the theme uses system fonts, so the page makes no request beyond the machine it runs on.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.report.load import repair_lines
from agent_cir.types import Query, QueryState, Result, StageRecord, record_to_dict

MAX_PICKABLE = 500
"""How many gallery images the 'pick a reference' list offers (a long dropdown helps nobody)."""


class DemoError(AgentCirError):
    """The demo cannot start (Gradio missing, nothing to search) or a query cannot run as entered."""


@dataclass
class DemoView:
    """What the page shows after a stage finishes. Images are file paths (placeholders for missing ones)."""

    log: str = ""
    captions: str = ""
    reasoning: str = ""
    description: str = ""
    description_source: str = ""
    retrieval: list[tuple[str, str]] = field(default_factory=list)
    grid: str | None = None
    judge: str = ""
    final: list[tuple[str, str]] = field(default_factory=list)
    stages_done: list[str] = field(default_factory=list)
    trace: dict[str, Any] | None = None
    """The full trace record, once the query finished."""


def _placeholder_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / "agent_cir_demo_placeholders"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def placeholder_image(label: str) -> str:
    """A small grey image with the id written on it, for gallery items that have no image file."""
    from PIL import Image, ImageDraw

    path = _placeholder_dir() / f"{hashlib.sha1(label.encode('utf-8')).hexdigest()[:16]}.png"
    if not path.is_file():
        image = Image.new("RGB", (160, 160), (226, 230, 236))
        draw = ImageDraw.Draw(image)
        for row, start in enumerate(range(0, min(len(label), 96), 16)):
            draw.text((8, 8 + 14 * row), label[start:start + 16], fill=(60, 60, 60))
        partial = path.with_suffix(".part.png")
        image.save(partial)
        os.replace(partial, path)
    return str(path)


def _image_or_placeholder(path: str | None, label: str) -> str:
    return path if path and Path(path).is_file() else placeholder_image(label)


def view_from_trace(trace: dict[str, Any], gallery: Any = None, ground_truth: set[str] | None = None) -> DemoView:
    """Turn a (partial or finished) trace into what the page shows."""
    ground_truth = ground_truth or set()

    def path_of(item_id: str, given: str | None) -> str | None:
        if given:
            return given
        if gallery is not None:
            position = gallery.position(item_id)
            if position is not None:
                return gallery.paths[position]
        return None

    def items(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
        shown = []
        for position, row in enumerate(rows, start=1):
            item_id = str(row.get("id"))
            mark = " ★ ground truth" if item_id in ground_truth else ""
            label = f"#{row.get('rank') or position} {item_id} ({float(row.get('score') or 0.0):.3f}){mark}"
            shown.append((_image_or_placeholder(path_of(item_id, row.get("path")), item_id), label))
        return shown

    view = DemoView()
    stages = trace.get("stages") or []
    lines = []
    for record in stages:
        name = record.get("stage")
        view.stages_done.append(str(name))
        if record.get("skipped"):
            lines.append(f"- **{name}**: skipped ({record['skipped']})")
        else:
            lines.append(f"- **{name}**: done in {float(record.get('seconds') or 0):.2f} s, "
                         f"{record.get('model_calls', 0)} model call(s), {record.get('cache_hits', 0)} cache hit(s)"
                         + (f", parse: {record.get('parse_status')}" if record.get("parse_status") not in (None, "not_applicable") else ""))
        if name == "retrieve":
            view.retrieval = items(sorted((record.get("output") or {}).get("candidates") or [],
                                          key=lambda c: c.get("rank") or 0))
        if name == "rerank" and not record.get("skipped"):
            output = record.get("output") or {}
            grids = [g.get("path") for g in output.get("grids") or [] if g.get("path")]
            view.grid = grids[0] if grids else None
            view.judge = "\n\n".join(str(call.get("raw")) for call in record.get("calls") or [])
            repairs = repair_lines(output.get("repairs"))
            if repairs:
                view.judge += "\n\nrepairs:\n" + "\n".join(repairs)
    view.log = "\n".join(lines)
    view.captions = "\n".join(trace.get("captions") or [])
    view.reasoning = trace.get("reasoning") or ""
    view.description = "\n".join(trace.get("target_descriptions") or [])
    view.description_source = trace.get("description_source") or ""
    if "results" in trace:
        view.final = items(trace.get("results") or [])
        view.trace = trace
    return view


def _partial_trace(state: QueryState) -> dict[str, Any]:
    records = [record_to_dict(record) for record in state.records]
    return {
        "captions": list(state.captions),
        "reasoning": state.reasoning,
        "target_descriptions": list(state.target_descriptions),
        "description_source": state.description_source,
        "stages": records,
    }


def supports_stage_callback(pipeline: Any) -> bool:
    """Whether ``pipeline.run`` accepts ``on_stage`` (called after each stage with the record and state)."""
    try:
        return "on_stage" in inspect.signature(pipeline.run).parameters
    except (TypeError, ValueError):
        return False


def stream_query(pipeline: Any, query: Query, ground_truth: set[str] | None = None) -> Iterator[DemoView]:
    """Run ``query`` and yield a view after each stage, then the finished view (with the trace).

    The pipeline runs in a worker thread and reports each finished stage through ``on_stage``; a
    pipeline without that hook still works, its stages then appear together when the query ends.
    """
    gallery = getattr(pipeline, "gallery", None)
    if not supports_stage_callback(pipeline):
        result = pipeline.run(query)
        yield view_from_trace(result.trace, gallery, ground_truth)
        return
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_stage(record: StageRecord, state: QueryState) -> None:
        events.put(("stage", _partial_trace(state)))

    def work() -> None:
        try:
            events.put(("done", pipeline.run(query, on_stage=on_stage)))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            events.put(("error", err))

    worker = threading.Thread(target=work, name=f"agent-cir-demo-{query.id}", daemon=True)
    worker.start()
    while True:
        kind, payload = events.get()
        if kind == "stage":
            yield view_from_trace(payload, gallery, ground_truth)
        elif kind == "done":
            result: Result = payload
            yield view_from_trace(result.trace, gallery, ground_truth)
            break
        else:
            worker.join()
            raise payload
    worker.join()


class DemoSession:
    """The demo's logic without the UI: builds queries from what was entered and runs them."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._numbers = itertools.count(1)
        gallery = getattr(pipeline, "gallery", None)
        self.pickable: list[tuple[str, str]] = []
        """(gallery id, image path) pairs offered as references."""
        if gallery is not None:
            for item_id, path in zip(gallery.ids, gallery.paths):
                if path:
                    self.pickable.append((item_id, str(path)))
                if len(self.pickable) >= MAX_PICKABLE:
                    break

    def path_of(self, gallery_id: str) -> str | None:
        return dict(self.pickable).get(gallery_id)

    def make_query(self, modification: str, uploaded: str | None = None, picked: str | None = None,
                   target_text: str | None = None) -> Query:
        """``picked`` (a gallery id) wins over ``uploaded``; ``target_text`` set means 'skip caption and rewrite'."""
        modification = (modification or "").strip()
        target_text = (target_text or "").strip() or None
        reference_id = None
        image = uploaded or None
        if picked:
            image = self.path_of(picked)
            if image is None:
                raise DemoError(f"gallery item {picked!r} has no image file; pick another or upload one")
            reference_id = picked
        if not modification and not target_text:
            raise DemoError("type a modification (what should change in the reference image)")
        if image is None and not target_text:
            raise DemoError("give a reference image: upload one or pick one from the gallery")
        return Query(id=f"demo-{next(self._numbers)}", text=modification, image=image, reference_id=reference_id,
                     target_text=target_text)

    def run(self, modification: str, uploaded: str | None = None, picked: str | None = None,
            target_text: str | None = None) -> Iterator[DemoView]:
        yield from stream_query(self.pipeline, self.make_query(modification, uploaded, picked, target_text))


def _allowed_paths(pipeline: Any, extra: list[Path]) -> list[str]:
    """Folders Gradio may serve files from: the gallery's image folders and where grids are written."""
    gallery = getattr(pipeline, "gallery", None)
    parents = sorted({str(Path(p).resolve().parent) for p in (gallery.paths if gallery is not None else []) if p})
    if len(parents) > 64:
        common = os.path.commonpath(parents)
        parents = [common] if common not in ("/", "") else parents
    return parents + [str(p) for p in extra]


def build_demo(pipeline: Any, title: str = "agent_cir demo") -> Any:
    """The Gradio Blocks app around ``pipeline`` (not launched)."""
    gr = _import_gradio()
    session = DemoSession(pipeline)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\nReference image + modification → caption → reasoning and target description → "
                    "retrieval → judge → final ranking. Edit the target description and re-run from retrieval.")
        last_query = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                uploaded = gr.Image(label="Reference image (upload)", type="filepath", sources=["upload"],
                                    elem_id="reference", height=260)
                picked = gr.Dropdown(choices=[item_id for item_id, _ in session.pickable], value=None,
                                     label="…or pick a gallery image", elem_id="pick", allow_custom_value=False)
                modification = gr.Textbox(label="Modification", placeholder="e.g. make it red and add a dog",
                                          elem_id="modification", lines=2)
                run_button = gr.Button("Run", variant="primary", elem_id="run")
                log = gr.Markdown(elem_id="stage-log")
            with gr.Column(scale=2):
                captions = gr.Textbox(label="Caption(s)", elem_id="captions", interactive=False, lines=2)
                reasoning = gr.Textbox(label="Reasoning", elem_id="reasoning", interactive=False, lines=3)
                description = gr.Textbox(label="Target description (edit, then re-run from retrieval)",
                                         elem_id="description", interactive=True, lines=2)
                rerun_button = gr.Button("Re-run from retrieval with this description", elem_id="rerun")
                retrieval = gr.Gallery(label="Retrieval top-k", elem_id="retrieval", columns=6, height=260)
                with gr.Row():
                    grid = gr.Image(label="Judge's grid", elem_id="grid", type="filepath", interactive=False, height=320)
                    judge = gr.Textbox(label="Judge's answer", elem_id="judge", interactive=False, lines=6)
                final = gr.Gallery(label="Final ranking", elem_id="final", columns=6, height=260)
                with gr.Accordion("Trace record", open=False):
                    trace_json = gr.JSON(elem_id="trace")

        outputs = [log, captions, reasoning, description, retrieval, grid, judge, final, trace_json, last_query]

        def render(view: DemoView, query_state: dict[str, Any] | None, note: str = "") -> tuple:
            return (note + view.log, view.captions, view.reasoning, view.description, view.retrieval, view.grid,
                    view.judge, view.final, view.trace, query_state)

        def on_pick(item_id: str | None):
            return session.path_of(item_id) if item_id else None

        def on_run(image_path: str | None, item_id: str | None, text: str):
            try:
                query = session.make_query(text, uploaded=image_path, picked=item_id)
            except DemoError as err:
                raise gr.Error(str(err)) from None
            state = {"text": query.text, "image": query.image, "reference_id": query.reference_id}
            for view in stream_query(pipeline, query):
                yield render(view, state)

        def on_rerun(state: dict[str, Any] | None, edited: str, shown_captions: str):
            if not state:
                raise gr.Error("run a query first; then edit its target description and re-run")
            if not (edited or "").strip():
                raise gr.Error("the target description is empty; write what the target image shows")
            query = Query(id=f"demo-{next(session._numbers)}", text=state["text"], image=state["image"],
                          reference_id=state["reference_id"], target_text=edited.strip())
            for view in stream_query(pipeline, query):
                view.captions = view.captions or shown_captions
                yield render(view, state, note="*target description set by hand*\n\n")

        picked.change(on_pick, inputs=[picked], outputs=[uploaded])
        run_button.click(on_run, inputs=[uploaded, picked, modification], outputs=outputs)
        rerun_button.click(on_rerun, inputs=[last_query, description, captions], outputs=outputs)
    app.agent_cir_session = session
    return app


def _import_gradio() -> Any:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # the demo promises no calls beyond this machine
    try:
        import gradio as gr
    except ImportError:
        raise DemoError("the demo needs Gradio: pip install 'agent-cir[demo]'") from None
    return gr


def demo_theme() -> Any:
    """Gradio's default theme with system fonts: the stock theme would fetch fonts from Google."""
    gr = _import_gradio()
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch_app(app: Any, pipeline: Any, host: str = "127.0.0.1", port: int | None = None,
               artifacts_dir: Path | None = None, block: bool = True) -> Any:
    """Start the server. ``block=False`` returns at once (tests); call ``app.close()`` to stop it."""
    extra = [artifacts_dir] if artifacts_dir else []
    return app.queue().launch(
        server_name=host, server_port=port, share=False, inbrowser=False, quiet=not block,
        prevent_thread_lock=not block, allowed_paths=_allowed_paths(pipeline, extra), ssr_mode=False,
        mcp_server=False, theme=demo_theme(), footer_links=[], show_error=True,
    )


def launch_demo(config: str | Path, index: str | Path, host: str = "127.0.0.1", port: int | None = None,
                artifacts_dir: str | Path | None = None, models: dict[str, Any] | None = None,
                block: bool = True) -> Any:
    """Build the pipeline from a recipe and an index folder, then serve the demo."""
    _import_gradio()
    from agent_cir.pipeline import Pipeline

    artifacts = Path(artifacts_dir) if artifacts_dir else Path(tempfile.mkdtemp(prefix="agent_cir_demo_"))
    pipeline = Pipeline.from_config(config, index=index, models=models, artifacts_dir=artifacts)
    app = build_demo(pipeline, title=f"agent_cir demo · {pipeline.recipe.name}")
    launch_app(app, pipeline, host=host, port=port, artifacts_dir=artifacts, block=block)
    return app
