"""Pairwise judge: ImageScope's stage 3 (pairwise evaluation of the top candidates).

The top ``rerank.k`` candidates (ImageScope: alpha = 3) are evaluated one at a time, in their current order:
the MLLM sees ONE image, the reference on the left and the candidate on the right, and answers whether the
candidate matches the instruction ("ANSWER: Yes" / "ANSWER: No" on its first line, then why). The first
candidate judged yes moves to rank 1 and no further candidate is asked; the others keep their order. No yes:
the order is unchanged.

Official (pengfei-luo/ImageScope @ 7e33f14): imagescope.py:617-699 (the top alpha of stage 2's order, the
accepted candidate moved to the front), utils/inference_entrypoint_ray.py:260-380 (turn by turn, a query
leaves after its first yes; reference and candidate resized to 800 x 800 and concatenated by
utils/function.py:58-100; decision = "ANSWER: Yes" in the answer). Our reading of the answer also accepts
case and markdown variants ("answer: **yes**").
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from agent_cir.rerank.context import RerankContext
from agent_cir.rerank.judge_base import MethodJudge

PAIR_SIDE = 800
"""Each half is resized to this square (utils/inference_entrypoint_ray.py:323-331)."""
PAIR_GAP = 45
"""White space between the halves (utils/function.py:61-72: a 40 px margin and a 5 px line)."""
NOT_ASKED = 0.5
"""Judge score of a candidate after the first yes: never shown to the evaluator."""
_ANSWER = re.compile(r"answer\s*[:：]\s*[*_`\"'\[\s]*(yes|no)\b", re.IGNORECASE)


def evaluator_says_yes(raw: str | None) -> bool | None:
    """True / False from the answer line; None when there is no "ANSWER: yes|no" anywhere."""
    match = _ANSWER.search((raw or "")[:4000])
    if match is None:
        return None
    return match.group(1).lower() == "yes"


def side_by_side(reference: str | None, candidate: str, side: int = PAIR_SIDE) -> bytes:
    """PNG bytes of the reference (left; black when there is none, as the official code) and the candidate
    (right), each resized to ``side`` x ``side``."""
    from PIL import Image

    canvas = Image.new("RGB", (2 * side + PAIR_GAP, side), "white")
    if reference is not None:
        with Image.open(reference) as image:
            canvas.paste(image.convert("RGB").resize((side, side)), (0, 0))
    else:
        canvas.paste(Image.new("RGB", (side, side), "black"), (0, 0))
    with Image.open(candidate) as image:
        canvas.paste(image.convert("RGB").resize((side, side)), (side + PAIR_GAP, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


class PairwiseJudge(MethodJudge):
    """ImageScope's evaluator over (reference, candidate) pairs, best-first, stopping at the first yes."""

    name = "pairwise"
    prompt_field = "pairwise_prompt"

    def rank(self, ctx: RerankContext) -> tuple[list[int], list[float]]:
        n = len(ctx.top)
        scores = [NOT_ASKED] * n
        accepted: int | None = None
        messages = self.prompt.render_messages(**ctx.variables)
        for index, candidate in enumerate(ctx.top):
            if not candidate.path or not Path(candidate.path).is_file():
                ctx.parsed.append({"item": index, "id": candidate.id, "status": "fallback", "decision": None,
                                   "source": "missing_image"})
                ctx.repairs.append({"item": index, "repairs": ["missing_image_not_evaluated"]})
                continue
            pair = side_by_side(ctx.reference_path, candidate.path)
            entry: dict[str, Any] = {"path": None, "cells": {"left": "reference", "right": candidate.id},
                                     "pass": 0, "window": index, "kind": "pairwise", "round": 0}
            if ctx.state.artifacts_dir is not None:
                path = Path(ctx.state.artifacts_dir) / f"rerank_pair{index:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(pair)
                entry["path"] = str(path)
            ctx.grids.append(entry)
            call = self._invoke(ctx, messages, [pair])
            decision = evaluator_says_yes(call.raw)
            status = "ok" if decision is not None else "fallback"
            call.parse_status = status  # type: ignore[assignment]
            ctx.parsed.append({"item": index, "id": candidate.id, "status": status, "decision": decision})
            ctx.repairs.append({"item": index, "repairs": [] if decision is not None else ["no_answer_line_is_no"]})
            scores[index] = 1.0 if decision else 0.0
            if decision:
                accepted = index
                break  # the official evaluator asks no further candidate of this query
        order = list(range(n)) if accepted is None else [accepted] + [i for i in range(n) if i != accepted]
        ctx.windows.append({"window": 0, "kind": "pairwise", "items": [c.id for c in ctx.top], "agreement": None,
                            "order": [ctx.top[i].id for i in order]})
        return order, scores
