"""A multi-turn search: each turn the dialogue (reference caption, every request so far, what was picked or passed
over) is rewritten into one target description by the ``dialogue_rewrite`` prompt, and the pipeline searches with
it; a result can become the next reference; the agent may ask one clarifying question.

The session drives a ``Pipeline`` it is given (it never imports the pipeline module: ``Pipeline.session`` builds
it) and keeps one ``TurnRecord`` per turn. Each turn's search is an ordinary ``Pipeline.run`` whose query carries
the rewritten description as its target text, so retrieval, verify, refine and rerank run as the recipe says and
the turn's trace is the pipeline's trace.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_cir.backends import ChatModelHandle, create_chat_model, invoke
from agent_cir.errors import AgentCirError
from agent_cir.parsing import answer_schema, parse_target_descriptions
from agent_cir.prompts import PromptTemplate, load_prompt
from agent_cir.session.dialogue import dialogue_view, one_line, read_question, uncertainty_of
from agent_cir.session.turns import (
    CallRecord,
    Reference,
    SessionError,
    SessionRecord,
    ShownResult,
    TurnKind,
    TurnRecord,
    load_session,
    save_session,
)
from agent_cir.types import ModelCall, Query, QueryState, Result

if TYPE_CHECKING:
    from agent_cir.pipeline import Pipeline

SHOWN_RESULTS = 10
"""Results of a turn kept in its record (what a user looks at and may pick from)."""


def _call_record(call: ModelCall) -> CallRecord:
    return CallRecord(prompt_name=call.prompt_name, prompt_hash=call.prompt_hash, model=call.model, raw=call.raw,
                      cache=call.cache, seconds=call.seconds, parse_status=call.parse_status)


class Session:
    """``s = pipeline.session(reference="ref.jpg", text="make it red")``; ``s.refine("with long sleeves")``,
    ``s.pick(candidate_id)``, ``s.undo()``, ``s.results``, ``s.history``, ``s.question`` / ``s.answer(text)``,
    ``s.save(folder)`` and ``Session.resume(folder, pipeline)``."""

    def __init__(self, pipeline: Pipeline, reference: str | Path | None = None, *, reference_id: str | None = None,
                 reference_caption: str | None = None, session_id: str | None = None) -> None:
        self.pipeline = pipeline
        self.config = pipeline.recipe.session
        image = str(Path(reference).expanduser()) if reference is not None else None
        if image is not None and not Path(image).is_file():
            raise SessionError(f"reference image {image} does not exist; give the path of an image file")
        if reference_id is not None and pipeline.gallery.position(reference_id) is None:
            raise SessionError(f"reference {reference_id!r} is not in the gallery ({len(pipeline.gallery)} items)")
        start = Reference(image=image, gallery_id=reference_id, caption=one_line(reference_caption) or None)
        self.record = SessionRecord(session_id=session_id or uuid.uuid4().hex[:12], recipe=pipeline.recipe.name,
                                    recipe_hash=pipeline.recipe_hash, start=start)
        self.last_result: Result | None = None
        """The pipeline's Result of the latest search of this process (not saved; the record keeps its trace)."""
        self._model_name = self.config.model or (pipeline.recipe.rewrite.model if pipeline.recipe.rewrite.enabled else None)
        self._model: ChatModelHandle | None = None
        self._captions: dict[str, str | None] = {}

    # ---------- what the session knows ----------
    @property
    def history(self) -> list[TurnRecord]:
        """Every turn so far, oldest first (copies: editing them changes nothing)."""
        return [turn.model_copy(deep=True) for turn in self.record.turns]

    @property
    def results(self) -> list[ShownResult]:
        """The results of the latest search turn (empty before the first)."""
        search = self._last_search()
        return list(search.results) if search else []

    @property
    def question(self) -> str | None:
        """The agent's question waiting for :meth:`answer`, if it asked one after the latest turn."""
        return self.record.turns[-1].asked if self.record.turns else None

    @property
    def reference(self) -> Reference:
        """What the next turn searches from: the latest picked result, else the start."""
        for turn in reversed(self.record.turns):
            if turn.kind == "pick":
                return turn.reference
        return self.record.start

    def _last_search(self) -> TurnRecord | None:
        return next((turn for turn in reversed(self.record.turns) if turn.kind != "pick"), None)

    # ---------- the user's moves ----------
    def refine(self, text: str) -> TurnRecord:
        """A request ("now with long sleeves"): rewrite the whole dialogue with it and search."""
        words = one_line(text)
        if not words:
            raise SessionError("the request is empty: say what should change (e.g. 'make it red')")
        kind: TurnKind = "query" if not any(turn.kind != "pick" for turn in self.record.turns) else "refine"
        return self._search_turn(kind, words, question=None)

    def answer(self, text: str) -> TurnRecord:
        """The user's answer to :attr:`question`: a turn of the dialogue (searched like a request)."""
        question = self.question
        if question is None:
            raise SessionError("there is no question to answer; use refine(text) for a new request")
        words = one_line(text)
        if not words:
            raise SessionError(f"the answer is empty; answer the question {question!r} or make a new request")
        return self._search_turn("answer", words, question=question)

    def ask(self) -> str:
        """Ask the clarifying question now, whatever the uncertainty (the benchmark's protocol asks every turn)."""
        turn = self._last_search()
        if turn is None or not self.record.turns:
            raise SessionError("nothing to ask about yet: make a request first")
        question, call = self._ask_question()
        last = self.record.turns[-1]
        last.calls.append(_call_record(call))
        last.asked = question
        return question

    def pick(self, candidate_id: str) -> TurnRecord:
        """Make one of the latest results the reference of the next turns (no search: the next request runs from it)."""
        shown = {result.id: result for result in self.results}
        if candidate_id not in shown:
            listed = ", ".join(list(shown)[:5]) or "none"
            raise SessionError(f"{candidate_id!r} is not among the latest results (first ones: {listed}); pick one of them")
        started = time.perf_counter()
        chosen = shown[candidate_id]
        reference = Reference(image=chosen.path, gallery_id=chosen.id, caption=self._gallery_caption(chosen.id))
        turn = TurnRecord(index=len(self.record.turns), kind="pick", picked=chosen.id, reference=reference,
                          seconds=time.perf_counter() - started)
        self.record.turns.append(turn)
        return turn.model_copy(deep=True)

    def undo(self) -> TurnRecord:
        """Take back the latest turn (a search, an answer or a pick); returns it."""
        if not self.record.turns:
            raise SessionError("nothing to undo: the session has no turns")
        self.last_result = None
        return self.record.turns.pop()

    # ---------- saving ----------
    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the session to ``folder/session.json`` (atomic, locked; another session's file is kept unless
        ``overwrite``)."""
        return save_session(self.record, folder, overwrite=overwrite)

    @classmethod
    def resume(cls, folder: str | Path, pipeline: Pipeline, allow_other_recipe: bool = False) -> Session:
        """The session saved in ``folder``, continued with ``pipeline`` (its recipe must be the one that saved it,
        unless ``allow_other_recipe``)."""
        record = load_session(folder)
        if record.recipe_hash != pipeline.recipe_hash and not allow_other_recipe:
            raise SessionError(
                f"the session in {folder} was made with recipe {record.recipe!r} ({record.recipe_hash[:12]}), not "
                f"{pipeline.recipe.name!r} ({pipeline.recipe_hash[:12]}): load that recipe, or pass allow_other_recipe=True"
            )
        session = cls(pipeline, session_id=record.session_id)
        session.record = record
        return session

    # ---------- one search turn ----------
    def _handle(self) -> ChatModelHandle | None:
        if self._model_name is None:
            return None
        if self._model is None:
            pipe = self.pipeline
            if self._model_name in pipe.models:
                self._model = pipe.models[self._model_name]
            elif self._model_name in pipe.recipe.models:
                self._model = create_chat_model(pipe.recipe.models[self._model_name])
            else:
                known = ", ".join(sorted(pipe.recipe.models)) or "none"
                raise SessionError(f"session.model names {self._model_name!r}, which is not under 'models:' (defined: {known})")
        return self._model

    def _gallery_caption(self, gallery_id: str | None) -> str | None:
        if not gallery_id:
            return None
        captions = self.pipeline.gallery.captions.get(gallery_id) or []
        first = next((one_line(text) for text in captions if one_line(text)), None)
        return first

    def _describe(self, gallery_id: str) -> str:
        return self._gallery_caption(gallery_id) or gallery_id

    def _reference_caption(self, reference: Reference, first_text: str, calls: list[CallRecord]) -> str | None:
        """The reference's caption: given, the gallery's, else the recipe's caption stage on its image (once)."""
        if reference.caption:
            return reference.caption
        caption = self._gallery_caption(reference.gallery_id)
        if caption or not reference.image:
            return caption
        if reference.image in self._captions:
            return self._captions[reference.image]
        stage = next((stage for stage in self.pipeline.stages if stage.name == "caption"), None)
        if stage is None:
            return None
        state = QueryState(query=Query(text=first_text, image=reference.image))
        record = stage.run(state)
        calls.extend(_call_record(call) for call in record.calls)
        caption = one_line(state.captions[0]) if state.captions else None
        self._captions[reference.image] = caption
        return caption

    def _rewrite(self, variables: dict[str, Any], requests: list[str]) -> tuple[str, str, ModelCall | None]:
        """(target description, its source, the call). Without a model the requests joined are the description."""
        handle = self._handle()
        joined = ". ".join(requests)
        if handle is None:
            return joined, "joined", None
        prompt = load_prompt(self.config.rewrite_prompt)
        messages = prompt.render_messages(**variables)
        schema = answer_schema(1) if self.pipeline.recipe.rewrite.structured_output else None
        call = self._invoke(handle, messages, prompt, schema)
        parsed = parse_target_descriptions(call.raw, expected=1)
        call.parse_status = parsed.status  # type: ignore[assignment]
        if parsed.status == "fallback" or not parsed.descriptions:
            return joined, "fallback", call
        return parsed.descriptions[0], "dialogue", call

    def _invoke(self, handle: ChatModelHandle, messages: list[tuple[str, str]], prompt: PromptTemplate,
                schema: Any = None) -> ModelCall:
        try:
            return invoke(handle, messages, prompt=prompt, cache=self.pipeline.cache, schema=schema)
        except AgentCirError as err:
            raise type(err)(f"session {self.record.session_id}, {prompt.name}: {err}") from err

    def _ask_question(self) -> tuple[str, ModelCall]:
        handle = self._handle()
        if handle is None:
            raise SessionError(f"recipe {self.pipeline.recipe.name!r} has no language model to ask a question with: "
                               "set session.model (a model under 'models:') or enable rewrite")
        reference = self.reference
        view = dialogue_view(self.record.turns, reference.caption, self.config.rejected_per_turn, self._describe)
        candidates = [self._describe(shown.id) for shown in self.results[: self.config.question_candidates]]
        prompt = load_prompt(self.config.question_prompt)
        call = self._invoke(handle, prompt.render_messages(**view.question_variables(candidates)), prompt)
        question = read_question(call.raw)
        call.parse_status = "ok" if question else "fallback"  # type: ignore[assignment]
        return question or "Can you describe the image you want in more detail?", call

    def _search_turn(self, kind: TurnKind, text: str, question: str | None) -> TurnRecord:
        started = time.perf_counter()
        calls: list[CallRecord] = []
        base = self.reference
        caption = self._reference_caption(base, text, calls)
        reference = base.model_copy(update={"caption": caption})
        pending = TurnRecord(index=len(self.record.turns), kind=kind, text=text, question=question, reference=reference)
        view = dialogue_view([*self.record.turns, pending], caption, self.config.rejected_per_turn, self._describe)
        requests = view.requests()
        description, source, call = self._rewrite(view.rewrite_variables(), requests)
        if call is not None:
            calls.append(_call_record(call))
        query = Query(
            id=f"{self.record.session_id}-t{pending.index}",
            text=". ".join(requests),
            image=reference.image,
            reference_id=reference.gallery_id,
            reference_caption=caption,
            target_text=description if source != "joined" else None,
            # the trace carries what made the target description (the rewrite stage is skipped: "set by hand")
            meta={"session": self.record.session_id, "turn": pending.index, "requests": requests,
                  "description_source": source, "dialogue_prompt": call.prompt_name if call else None,
                  "dialogue_prompt_hash": call.prompt_hash if call else None},
        )
        result = self.pipeline.run(query)  # errors leave the session as it was
        shown = [ShownResult(rank=c.rank, id=c.id, path=c.path, score=float(c.score), verify_score=c.verify_score,
                             final_score=c.final_score) for c in result.candidates[:SHOWN_RESULTS]]
        pending.dialogue_seen = requests
        pending.target_description = description
        pending.description_source = source
        pending.calls = calls
        pending.results = shown
        pending.query_id = query.id
        pending.trace = result.trace
        pending.uncertainty = uncertainty_of(shown, self.config.confidence, self.config.margin)
        self.record.turns.append(pending)
        self.last_result = result
        if self.config.clarify and pending.uncertainty.uncertain and self._handle() is not None:
            try:
                asked, question_call = self._ask_question()
            except AgentCirError as err:  # the search stands; only the question is lost
                pending.notes.append(f"no clarifying question: {err}")
            else:
                pending.calls.append(_call_record(question_call))
                pending.asked = asked
        pending.seconds = time.perf_counter() - started
        return pending.model_copy(deep=True)
