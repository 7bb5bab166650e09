"""The demo's conversation panel: a multi-turn session (``agent_cir.session``) in the browser, with the turns, each
turn's results, the agent's question, "pick result N as the next reference" and undo.

``ConversationPanel`` is the logic without a browser (tested directly); ``add_conversation_panel`` lays it out
with Gradio inside the demo's Blocks. Images shown are copies in the demo's served folder, as everywhere in the
demo.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.report.served import ServedImages, readable_name

SHOWN = 8
"""Results per turn on the page."""


class ConversationError(AgentCirError):
    """A conversation step cannot run as entered (no reference, an empty request, a result number out of range)."""


@dataclass
class TurnView:
    index: int
    kind: str
    text: str
    question: str | None
    description: str | None
    results: list[tuple[str, str]] = field(default_factory=list)
    """(served image path, label) per result, best first."""


@dataclass
class ConversationView:
    turns: list[TurnView] = field(default_factory=list)
    question: str | None = None
    reference: str | None = None
    """The served copy of the current reference image (after a pick: the picked result)."""
    log: str = ""


def _label(rank: int, score: float, item_id: str) -> str:
    return f"#{rank} {score:.3f} · {readable_name(item_id)}"


class ConversationPanel:
    """One browser tab's conversation over the demo's pipeline."""

    def __init__(self, pipeline: Any, served: ServedImages, path_of: Any = None) -> None:
        self.pipeline = pipeline
        self.served = served
        self.path_of = path_of or (lambda _item_id: None)
        """gallery id -> image file of a pickable reference (the demo's DemoSession.path_of)."""
        self.session: Any = None

    def start(self, text: str, uploaded: str | None = None, picked: str | None = None) -> ConversationView:
        """A new conversation from an uploaded image or a picked gallery item, with its first request."""
        if not (text or "").strip():
            raise ConversationError("type what should change in the reference image")
        image = uploaded or None
        reference_id = None
        if picked:
            image = self.path_of(picked)
            if image is None:
                raise ConversationError(f"gallery item {picked!r} has no image file; pick another or upload one")
            reference_id = picked
        if image is None:
            raise ConversationError("give a reference image first: upload one or pick one from the gallery")
        self.session = self.pipeline.session(reference=image, reference_id=reference_id, text=text)
        return self.view()

    def say(self, text: str) -> ConversationView:
        """The next request, or the answer to the agent's question when one is waiting."""
        session = self._session()
        if session.question:
            session.answer(text)
        else:
            session.refine(text)
        return self.view()

    def pick(self, number: int | float | None) -> ConversationView:
        """Result ``number`` (from 1) of the latest turn becomes the reference of the next requests."""
        session = self._session()
        results = session.results[:SHOWN]
        if number is None or int(number) != number or not 1 <= int(number) <= len(results):
            raise ConversationError(f"pick a result number from 1 to {len(results)}")
        session.pick(results[int(number) - 1].id)
        return self.view()

    def undo(self) -> ConversationView:
        self._session().undo()
        return self.view()

    def _session(self) -> Any:
        if self.session is None:
            raise ConversationError("start a conversation first: a reference image and a first request")
        return self.session

    def view(self) -> ConversationView:
        session = self.session
        if session is None:
            return ConversationView()
        turns = []
        lines = []
        for turn in session.history:
            results = [(self.served.image(r.path, readable_name(r.id)), _label(r.rank, r.score, r.id))
                       for r in turn.results[:SHOWN]]
            turns.append(TurnView(turn.index, turn.kind, turn.text, turn.question, turn.target_description, results))
            if turn.kind == "pick":
                lines.append(f"{turn.index + 1}. picked **{readable_name(turn.picked or '')}** as the new reference")
            else:
                said = f"answered *{turn.question}*: {turn.text}" if turn.question else turn.text
                lines.append(f"{turn.index + 1}. {said} → *{turn.target_description or ''}*")
            if turn.asked:
                lines.append(f"   agent asks: **{turn.asked}**")
        reference = session.reference
        preview = self.served.image(reference.image, readable_name(reference.gallery_id or "reference"), max_side=512) \
            if reference.image else None
        return ConversationView(turns=turns, question=session.question, reference=preview, log="\n".join(lines))


def add_conversation_panel(gr: Any, pipeline: Any, demo_session: Any, uploaded: Any, picked: Any) -> None:
    """The panel inside the demo's open ``gr.Blocks``; a conversation starts from the demo's reference inputs
    (``uploaded`` image, ``picked`` gallery id). One ConversationPanel per browser tab, kept here by a token in
    ``gr.State`` (Gradio copies State values, and a pipeline must not be copied)."""
    panels: dict[str, ConversationPanel] = {}
    tokens = itertools.count(1)
    lock = threading.Lock()

    def panel_of(token: str | None) -> tuple[str, ConversationPanel]:
        with lock:
            if not token or token not in panels:
                token = f"conversation-{next(tokens)}"
                panels[token] = ConversationPanel(pipeline, demo_session.served, demo_session.path_of)
            return token, panels[token]

    with gr.Accordion("Conversation: refine over several turns", open=False):
        token_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(label="Current reference", type="filepath", interactive=False,
                                     elem_id="conversation-reference", height=220)
                request = gr.Textbox(label="Request (or your answer to the agent's question)", lines=2,
                                     elem_id="conversation-request", placeholder="e.g. now with long sleeves")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="conversation-send")
                    undo = gr.Button("Undo", elem_id="conversation-undo")
                with gr.Row():
                    number = gr.Number(label="Result number", value=1, precision=0, minimum=1,
                                       elem_id="conversation-number")
                    pick = gr.Button("Use as the next reference", elem_id="conversation-pick")
            with gr.Column(scale=2):
                log = gr.Markdown(elem_id="conversation-log")
                latest = gr.Gallery(label="Latest results (rank, score, name)", columns=4, height="auto",
                                    elem_id="conversation-results")

        outputs = [log, latest, reference, token_state]

        def render(view: ConversationView, token: str) -> tuple:
            searches = [turn for turn in view.turns if turn.kind != "pick"]
            shown = searches[-1].results if searches else []
            text = _escape_markdown(view.log)
            return text, shown, view.reference, token

        def step(action: str, token: str | None, image: str | None, picked: str | None, text: str, value: Any):
            token, panel = panel_of(token)
            try:
                if action == "send":
                    view = panel.say(text) if panel.session is not None else panel.start(text, image, picked)
                elif action == "pick":
                    view = panel.pick(value)
                else:
                    view = panel.undo()
            except AgentCirError as err:
                raise gr.Error(str(err)) from None
            return render(view, token)

        send.click(lambda token, text, image, item: step("send", token, image, item, text, None),
                   inputs=[token_state, request, uploaded, picked], outputs=outputs)
        pick.click(lambda token, value: step("pick", token, None, None, "", value), inputs=[token_state, number],
                   outputs=outputs)
        undo.click(lambda token: step("undo", token, None, None, "", None), inputs=[token_state], outputs=outputs)


def _escape_markdown(text: str) -> str:
    """Model and user text in the log: control characters dropped, HTML tags made inert (Markdown is rendered)."""
    import re

    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", " ", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")
