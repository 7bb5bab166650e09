"""Refine stage: for a query the verifier did not accept, a model reads the modification, the current target
description and the verifier's findings, and writes a new target description (the rewriter's answer schema).
The query then starts its next round: retrieve and verify again (``next_stage`` -> ``retrieve``).

Runs only for queries the verifier sends here (``only_when_sent``). An answer no parser can read keeps the current
description (recorded as a fallback) and the round still runs, so the round count stays what the recipe says.
"""

from __future__ import annotations

import time
from typing import Any

from agent_cir.backends import invoke
from agent_cir.config import RefineConfig
from agent_cir.errors import AgentCirError
from agent_cir.parsing import answer_schema, parse_target_descriptions
from agent_cir.prompts import load_prompt
from agent_cir.trace.outputs import RefineOutput
from agent_cir.types import QueryState, StageRecord


def findings_of(verification: dict[str, Any] | None, limit: int) -> list[str]:
    """The verifier's best ``limit`` candidates as lines for the refiner: answer, confidence and reason."""
    items = list((verification or {}).get("items") or [])
    items.sort(key=lambda item: -(item.get("confidence") if item.get("confidence") is not None else -1.0))
    lines = []
    for item in items[:limit]:
        confidence = item.get("confidence")
        shown = "unreadable answer" if confidence is None else f"P(match) {confidence:.2f}"
        reason = item.get("reason") or "no reason given"
        lines.append(f"result {len(lines) + 1} ({shown}): {reason}")
    return lines


class RefineStage:
    """Writes ``state.target_descriptions`` (description_source ``refine``) and starts the next round."""

    name = "refine"
    only_when_sent = True

    def __init__(self, config: RefineConfig, model: Any, cache: Any = None) -> None:
        self.config = config
        self.model = model
        self.cache = cache
        self.prompt = load_prompt(config.prompt)
        self.schema = answer_schema(1) if config.structured_output else None

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name)
        query = state.query
        current = state.target_descriptions[0] if state.target_descriptions else query.text
        findings = findings_of(state.verification, self.config.findings)
        caption = state.captions[0] if state.captions else query.reference_caption
        messages = self.prompt.render_messages(modification=query.text, reference_caption=caption,
                                               current_description=current, findings=findings)
        try:
            call = invoke(self.model, messages, prompt=self.prompt, cache=self.cache, schema=self.schema)
        except AgentCirError as err:
            raise type(err)(f"query {query.id}, refine stage: {err}") from err
        parsed = parse_target_descriptions(call.raw, expected=1)
        call.parse_status = parsed.status  # type: ignore[assignment]
        record.calls.append(call)
        record.parse_status = parsed.status  # type: ignore[assignment]
        previous = list(state.target_descriptions)
        if parsed.status == "fallback" or not parsed.descriptions:
            record.parse_status = "fallback"
            record.notes.append(f"could not read a refined description from: {call.raw[:160]!r}; kept the current one")
        else:
            state.target_descriptions = parsed.descriptions[:1]
            state.description_source = "refine"
        record.output = RefineOutput(previous_description=current, target_descriptions=list(state.target_descriptions),
                                     reasoning=parsed.reasoning, findings=findings,
                                     changed=state.target_descriptions != previous)
        state.round += 1
        record.seconds = time.perf_counter() - started
        return record

    def next_stage(self, state: QueryState) -> str | None:
        return "retrieve"
