"""Interactive demo: pick or upload a reference image, type a modification, watch each stage's output
appear, then edit the target description and re-run from retrieval (the intervention).

The stage-by-stage views are plain data (``DemoView``, built by ``stream_query``) so they are tested
without a browser; ``build_demo`` lays them out with Gradio (the optional ``demo`` extra), which is
imported lazily. The server binds to 127.0.0.1 unless told otherwise; Gradio's analytics are switched
off and the theme uses system fonts, so the page makes no request beyond the machine it runs on.
"""

from __future__ import annotations

import atexit
import inspect
import ipaddress
import itertools
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.provenance import has_random_weights
from agent_cir.report.render import ORDER_SCORE_NAMES, RANDOM_ENCODER_BANNER, order_note, ordering_score
from agent_cir.report.served import GRID_SIDE, ServedImages, default_served, readable_name
from agent_cir.trace.build import partial_trace
from agent_cir.trace.load import salvage_trace
from agent_cir.trace.model import Trace
from agent_cir.trace.outputs import RankedItem
from agent_cir.types import Query, QueryState, Result, StageRecord

DEMO_CSS = """
#retrieval .caption-label, #final .caption-label { white-space: normal; max-width: 100%; opacity: 0.9; font-size: 12px; }
"""
"""Gallery captions (rank, score, name) wrap instead of being cut to '#1 0.31...'."""

MAX_PICKABLE = 500
"""How many gallery images the 'pick a reference' list offers (a long dropdown helps nobody)."""


class DemoError(AgentCirError):
    """The demo cannot start (Gradio missing, nothing to search, bad options) or a query cannot run as entered."""


@dataclass
class DemoView:
    """What the page shows after a stage finishes. Images are files in the demo's served folder."""

    log: str = ""
    captions: str = ""
    reasoning: str = ""
    description: str = ""
    description_source: str = ""
    retrieval: list[tuple[str, str]] = field(default_factory=list)
    grid: str | None = None
    edited: str | None = None
    """The imagine stage's edited reference (a served copy), when the recipe has that stage."""
    judge: str = ""
    final: list[tuple[str, str]] = field(default_factory=list)
    stages_done: list[str] = field(default_factory=list)
    warning: str = ""
    """Set when the trace says the encoder has random weights (the rankings mean nothing)."""
    trace: dict[str, Any] | None = None
    """The full trace record as JSON data, once the query finished."""


def item_label(rank: int, score: float | None, item_id: str, ground_truth: bool = False, *,
               ordered_by: str = "retrieval", retrieval_score: float | None = None) -> str:
    """A gallery caption: ``#1 0.312 · Chihuahua`` (rank, the score that placed it, a readable name). Ordered by a
    later stage, ``score`` is that stage's and is named, the retrieval score beside it:
    ``#1 judge 0.900 · cosine 0.312 · Chihuahua`` (``judge -``: the judge never saw it)."""
    if ordered_by == "retrieval":
        score_text = f" {score:.3f}" if score is not None else ""
    else:
        name = ORDER_SCORE_NAMES.get(ordered_by, ordered_by)
        score_text = f" {name} {score:.3f}" if score is not None else f" {name} -"
        score_text += f" · cosine {retrieval_score:.3f}" if retrieval_score is not None else ""
    return f"#{rank}{score_text} · {readable_name(item_id)}" + (" ★ ground truth" if ground_truth else "")


def view_from_trace(trace: Trace | dict[str, Any], gallery: Any = None, ground_truth: set[str] | None = None,
                    served: ServedImages | None = None) -> DemoView:
    """Turn a (partial or finished) trace into what the page shows; images are written into ``served``. A plain
    record is read for display (``salvage_trace``)."""
    ground_truth = ground_truth or set()
    served = served or default_served()
    data = trace if isinstance(trace, Trace) else salvage_trace({"query_id": "", **trace})[0]

    def path_of(row: RankedItem) -> str | None:
        if gallery is not None:  # the gallery's own path for the id: a trace path is not trusted on its own
            position = gallery.position(row.id)
            if position is not None:
                return gallery.paths[position]
            return None
        return row.path or None

    def items(rows: list[RankedItem], ordered_by: str = "retrieval") -> list[tuple[str, str]]:
        return [(served.image(path_of(row), readable_name(row.id)),
                 item_label(row.rank, ordering_score(row, ordered_by), row.id, row.id in ground_truth,
                            ordered_by=ordered_by, retrieval_score=row.score)) for row in rows]

    view = DemoView()
    lines = []
    for record in data.stages:
        view.stages_done.append(record.stage)
        if record.skipped:
            lines.append(f"- **{record.stage}**: skipped ({record.skipped})")
        else:
            parse = f", parse: {record.parse_status}" if record.parse_status not in ("", "not_applicable") else ""
            lines.append(f"- **{record.stage}**: done in {record.seconds:.2f} s, {record.model_calls} model call(s), "
                         f"{record.cache_hits} cache hit(s){parse}")
    lines += round_lines(data)
    if data.has_results and data.final_order_by != "retrieval":
        lines.append(f"- final order: {order_note(data.final_order_by, data.result_rows)}")
    if data.retrieval is not None:
        view.retrieval = items(data.retrieval.output.rows)
    rerank = data.rerank
    if rerank is not None and not rerank.skipped:
        grids = [g.path for g in rerank.output.grids if g.path]
        view.grid = served.image(grids[0], "grid", max_side=GRID_SIDE) if grids else None
        view.judge = "\n\n".join(call.raw for call in rerank.calls)
        if rerank.output.repair_lines:
            view.judge += "\n\nrepairs:\n" + "\n".join(rerank.output.repair_lines)
    imagine = data.stage("imagine")
    if imagine is not None and not imagine.skipped and imagine.output.path:
        view.edited = served.image(imagine.output.path, "imagined target", max_side=GRID_SIDE)
    view.log = "\n".join(lines)
    view.captions = "\n".join(data.captions)
    view.reasoning = data.reasoning or ""
    view.description = "\n".join(data.target_descriptions)
    view.description_source = data.description_source or ""
    if data.encoder is not None and data.encoder.random_weights:
        view.warning = f"**{RANDOM_ENCODER_BANNER}** (the encoder has random, untrained weights)"
    if data.has_results:
        view.final = items(data.result_rows, data.final_order_by)
        view.trace = data.to_json_dict()
    return view


def gallery_has_random_encoder(pipeline: Any) -> bool:
    """Whether the pipeline's gallery says it was embedded by an encoder with random weights."""
    info = getattr(getattr(pipeline, "gallery", None), "encoder_info", None)
    return isinstance(info, dict) and bool(info) and has_random_weights(info)


def round_lines(trace: Trace) -> list[str]:
    """The loop as a timeline for the stage log: per round, what it searched, what the verifier decided, why."""
    lines = []
    for entry in trace.rounds:
        best = entry.best_confidence
        best_text = "no readable answer" if best is None else f"best P(yes) {best:.2f}"
        lines.append(f"- **round {entry.round}**: {best_text} -> {entry.decision} "
                     f"({entry.calls} call(s), {entry.seconds:.2f} s)")
        refine = trace.refine_before(entry.round)
        if refine is not None:
            lines.append(f"  - refined from \"{refine.previous_description}\" to "
                         f"\"{' | '.join(refine.target_descriptions)}\"")
            lines += [f"  - {finding}" for finding in refine.findings[:3]]
    return lines


def supports_stage_callback(pipeline: Any) -> bool:
    """Whether ``pipeline.run`` accepts ``on_stage`` (called after each stage with the record and state)."""
    try:
        return "on_stage" in inspect.signature(pipeline.run).parameters
    except (TypeError, ValueError):
        return False


def stream_query(pipeline: Any, query: Query, ground_truth: set[str] | None = None,
                 served: ServedImages | None = None) -> Iterator[DemoView]:
    """Run ``query`` and yield a view after each stage, then the finished view (with the trace).

    The pipeline runs in a worker thread and reports each finished stage through ``on_stage``; a
    pipeline without that hook still works, its stages then appear together when the query ends.
    """
    gallery = getattr(pipeline, "gallery", None)
    if not supports_stage_callback(pipeline):
        result = pipeline.run(query)
        yield view_from_trace(result.trace, gallery, ground_truth, served)
        return
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_stage(record: StageRecord, state: QueryState) -> None:
        events.put(("stage", partial_trace(state)[0]))

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
            yield view_from_trace(payload, gallery, ground_truth, served)
        elif kind == "done":
            result: Result = payload
            yield view_from_trace(result.trace, gallery, ground_truth, served)
            break
        else:
            worker.join()
            raise payload
    worker.join()


class DemoSession:
    """The demo's logic without the UI: builds queries from what was entered and runs them."""

    def __init__(self, pipeline: Any, served: ServedImages | None = None) -> None:
        self.pipeline = pipeline
        self.served = served or ServedImages()
        """The folder of images the page shows (the only folder Gradio may serve)."""
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

    def preview_of(self, gallery_id: str) -> str | None:
        """The served copy of a pickable gallery image (what the page shows for a picked reference)."""
        path = self.path_of(gallery_id)
        return self.served.image(path, readable_name(gallery_id), max_side=512) if path else None

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
        yield from stream_query(self.pipeline, self.make_query(modification, uploaded, picked, target_text),
                                served=self.served)


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


LOOPBACK_HOST_NAMES = ("127.0.0.1", "localhost", "::1")


def allowed_host_names(host: str) -> frozenset[str]:
    """Host names the demo answers: the loopback names, plus ``--host`` when it names something else.
    Any other ``Host:`` header (a DNS-rebinding page that resolved its own name to 127.0.0.1) gets 421."""
    names = set(LOOPBACK_HOST_NAMES)
    given = host.strip().lower().strip("[]")
    if given and given not in ("0.0.0.0", "::"):  # a wildcard bind is not a name a browser sends
        names.add(given)
    return frozenset(names)


def _host_name(header: str) -> str:
    """``Host:`` header value -> its name without port: ``[::1]:7860`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostAllowList:
    """ASGI middleware: requests whose ``Host:`` is not an allowed name are answered 421 Misdirected Request."""

    def __init__(self, app: Any, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            name = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"421 Misdirected Request: this demo answers only its own host names\n"
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def network_warning(host: str) -> str | None:
    """The warning printed when the demo binds an interface other machines can reach."""
    if is_loopback(host):
        return None
    return (f"warning: --host {host} makes the demo reachable from the network: anyone who can reach this machine "
            "can run queries and see the gallery's images. Add --auth USER:PASSWORD, or use the default 127.0.0.1.")


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` -> (user, password) for Gradio's own login page; None when not given."""
    if value is None or value == "":
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise DemoError("--auth must be USER:PASSWORD (both non-empty), e.g. --auth alice:s3cret")
    return user.strip(), password


def served_paths(
    session: DemoSession, pipeline: Any, artifacts_dir: Path | None, own_artifacts: bool = False
) -> tuple[list[str], list[str]]:
    """Gradio's ``allowed_paths`` (the served folder, plus the artifacts folder when ``own_artifacts``: the
    temporary folder the demo made for its grids, which the trace view names and gradio_client fetches) and
    ``blocked_paths`` (the gallery, index and a user's artifacts folder, as a second wall), leaving out any
    blocked folder that holds an allowed one or Gradio's own upload folder (blocking those would break the page)."""
    allowed = [str(session.served.folder)]
    own = Path(artifacts_dir).expanduser().resolve() if own_artifacts and artifacts_dir else None
    if own is not None:
        allowed.append(str(own))
    gallery = getattr(pipeline, "gallery", None)
    candidates: list[Path] = []
    index = getattr(gallery, "index", None)
    for folder in (getattr(index, "directory", None), getattr(index, "images_dir", None), artifacts_dir):
        if folder:
            candidates.append(Path(folder))
    parents = {Path(p).parent for p in (gallery.paths if gallery is not None else [])[:10_000] if p}
    if len(parents) <= 64:
        candidates.extend(sorted(parents))
    upload = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    keep_open = [session.served.folder, upload.resolve(), *([own] if own is not None else [])]
    blocked: list[str] = []
    for folder in candidates:
        real = folder.expanduser().resolve()
        if any(kept == real or kept.is_relative_to(real) for kept in keep_open):
            continue
        if str(real) not in blocked:
            blocked.append(str(real))
    return allowed, blocked


def build_demo(pipeline: Any, title: str = "agent_cir demo") -> Any:
    """The Gradio Blocks app around ``pipeline`` (not launched)."""
    gr = _import_gradio()
    session = DemoSession(pipeline)
    random_gallery = gallery_has_random_encoder(pipeline)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\nReference image + modification → caption → reasoning and target description → "
                    "retrieval → judge → final ranking. Edit the target description and re-run from retrieval.")
        if random_gallery:
            gr.Markdown(f"**{RANDOM_ENCODER_BANNER}**: the gallery was embedded by an encoder with random, untrained "
                        "weights; the images it ranks first are no better than chance.", elem_id="random-encoder")
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
                retrieval = gr.Gallery(label="Retrieval top-k (rank, retrieval score, name)", elem_id="retrieval",
                                       columns=5, height="auto")
                with gr.Row():
                    grid = gr.Image(label="Judge's grid", elem_id="grid", type="filepath", interactive=False, height=320)
                    judge = gr.Textbox(label="Judge's answer", elem_id="judge", interactive=False, lines=6)
                    edited = gr.Image(label="Imagined target (the edited reference)", elem_id="edited",
                                      type="filepath", interactive=False, height=320)
                final = gr.Gallery(label="Final ranking (rank, the score that ordered it, cosine, name)",
                                   elem_id="final", columns=5, height="auto")
                with gr.Accordion("Trace record", open=False):
                    trace_json = gr.JSON(elem_id="trace")

        from agent_cir.demo_session import add_conversation_panel

        add_conversation_panel(gr, pipeline, session, uploaded=uploaded, picked=picked)
        outputs = [log, captions, reasoning, description, retrieval, grid, judge, final, trace_json, last_query, edited]

        def render(view: DemoView, query_state: dict[str, Any] | None, note: str = "") -> tuple:
            warning = view.warning + "\n\n" if view.warning else ""
            return (warning + note + view.log, view.captions, view.reasoning, view.description, view.retrieval, view.grid,
                    view.judge, view.final, view.trace, query_state, view.edited)

        def on_pick(item_id: str | None):
            return session.preview_of(item_id) if item_id else None

        def on_run(image_path: str | None, item_id: str | None, text: str):
            try:
                query = session.make_query(text, uploaded=image_path, picked=item_id)
            except DemoError as err:
                raise gr.Error(str(err)) from None
            state = {"text": query.text, "image": query.image, "reference_id": query.reference_id}
            for view in stream_query(pipeline, query, served=session.served):
                yield render(view, state)

        def on_rerun(state: dict[str, Any] | None, edited: str, shown_captions: str):
            if not state:
                raise gr.Error("run a query first; then edit its target description and re-run")
            if not (edited or "").strip():
                raise gr.Error("the target description is empty; write what the target image shows")
            query = Query(id=f"demo-{next(session._numbers)}", text=state["text"], image=state["image"],
                          reference_id=state["reference_id"], target_text=edited.strip())
            for view in stream_query(pipeline, query, served=session.served):
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
               artifacts_dir: Path | None = None, block: bool = True, auth: str | tuple[str, str] | None = None,
               own_artifacts: bool = False) -> Any:
    """Start the server. ``block=False`` returns at once (tests); call ``app.close()`` to stop it.

    Gradio may serve only the demo's own folder of images it wrote (see ``agent_cir.report.served``);
    ``auth`` (``"user:password"``) puts Gradio's login page in front; a non-loopback ``host`` prints a warning.
    """
    from starlette.middleware import Middleware

    credentials = parse_auth(auth) if isinstance(auth, str) or auth is None else auth
    warning = network_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    allowed, blocked = served_paths(app.agent_cir_session, pipeline, artifacts_dir, own_artifacts)
    return app.queue().launch(
        server_name=host, server_port=port, share=False, inbrowser=False, quiet=not block,
        prevent_thread_lock=not block, allowed_paths=allowed, blocked_paths=blocked or None, ssr_mode=False,
        mcp_server=False, theme=demo_theme(), css=DEMO_CSS, footer_links=[], show_error=True, auth=credentials,
        app_kwargs={"middleware": [Middleware(HostAllowList, allowed=allowed_host_names(host))]},
    )


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM end the process like Ctrl-C (KeyboardInterrupt: Gradio's server loop stops, then the
    atexit handlers remove the demo's temporary folders). By default SIGTERM kills without running them.
    Only from the main thread, and only when no one else has set a SIGTERM handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def launch_demo(config: str | Path, index: str | Path, host: str = "127.0.0.1", port: int | None = None,
                artifacts_dir: str | Path | None = None, models: dict[str, Any] | None = None,
                block: bool = True, auth: str | None = None) -> Any:
    """Build the pipeline from a recipe and an index folder, then serve the demo."""
    _import_gradio()
    parse_auth(auth)  # a malformed --auth fails before any model loads
    from agent_cir.pipeline import Pipeline

    if artifacts_dir:
        artifacts = Path(artifacts_dir)
    else:  # our own temporary folder (grids): removed when the process ends, Ctrl-C and SIGTERM included
        artifacts = Path(tempfile.mkdtemp(prefix="agent_cir_demo_"))
        atexit.register(shutil.rmtree, str(artifacts), True)
    if block:
        exit_cleanly_on_sigterm()
    pipeline = Pipeline.from_config(config, index=index, models=models, artifacts_dir=artifacts)
    app = build_demo(pipeline, title=f"agent_cir demo · {pipeline.recipe.name}")
    launch_app(app, pipeline, host=host, port=port, artifacts_dir=artifacts, block=block, auth=auth,
               own_artifacts=not artifacts_dir)
    return app
