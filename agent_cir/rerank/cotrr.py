"""CoTRR judge: one listwise chain-of-thought rerank of the top candidates (CoTRR: the top 10).

One call per query. The MLLM is shown the prompt, then the reference image after the label "Reference Image:",
then each candidate as its own image after the label "Image i:" (1-based), NOT a grid; it reasons step by step
(reference elements, the modification's changes, each candidate, a comparison) and ends with JSON holding the
ordered image numbers. Final order: the valid numbers in the model's order, then the candidates it left out in
their retrieval order; the rest of the ranking follows.

Official (freshfish15/CoTRR @ 424e87b): models/mllm_reranker.py:132-170 (the message: prompt, "Reference
Image:" + image, "Candidate Images:", "Image i:" + image for each), models/prompts.py:59-130 (the prompt),
models/mllm_reranker.py:185-203 (first {...} -> JSON -> the index list; out-of-range indices dropped, the
unmentioned candidates appended in CLIP order), models/config/config.py:20 (TOP_N_FOR_RERANK = 10).
Our parser (:func:`agent_cir.rerank.parse.parse_ranking`) also drops repeated numbers (the official list
keeps repeats) and reads rankings outside JSON; docs/PROTOCOLS.md lists the differences.
"""

from __future__ import annotations

from pathlib import Path

from agent_cir.rerank.context import RerankContext
from agent_cir.rerank.judge_base import MethodJudge
from agent_cir.rerank.parse import parse_ranking
from agent_cir.rerank.aggregate import rank_to_unit

REFERENCE_LABEL = "Reference Image:"
CANDIDATES_HEADER = "Candidate Images:"


def candidate_labels(n: int) -> list[str]:
    """The text before each candidate image: CoTRR's "Image i:", the first after the candidates' header."""
    return [(f"{CANDIDATES_HEADER}\nImage 1:" if i == 0 else f"Image {i + 1}:") for i in range(n)]


class CotrrJudge(MethodJudge):
    """CoTRR's listwise chain-of-thought judge over separately shown images."""

    name = "cotrr"
    prompt_field = "cotrr_prompt"

    def rank(self, ctx: RerankContext) -> tuple[list[int], list[float]]:
        n = len(ctx.top)
        shown = [i for i, c in enumerate(ctx.top) if c.path and Path(c.path).is_file()]
        if len(shown) < n:
            ctx.notes.append(f"cotrr: {n - len(shown)} candidate(s) without an image file are not shown; "
                             "they follow the shown ones in retrieval order")
        images: list[str] = []
        labels: list[str] = []
        if ctx.reference_path:
            images.append(ctx.reference_path)
            labels.append(REFERENCE_LABEL)
        images += [str(ctx.top[i].path) for i in shown]
        labels += candidate_labels(len(shown))
        messages = self.prompt.render_messages(**ctx.variables, n_candidates=len(shown))
        call = self._invoke(ctx, messages, images, image_labels=labels)
        parsed = parse_ranking(call.raw, len(shown))
        call.parse_status = parsed.status  # type: ignore[assignment]
        ctx.parsed.append({"window": 0, "pass": 0, "status": parsed.status, **parsed.to_dict()})
        ctx.repairs.append({"window": 0, "pass": 0, "repairs": parsed.repairs, "out_of_range": parsed.out_of_range,
                            "duplicates": parsed.duplicates, "not_numbers": parsed.not_numbers,
                            "appended": parsed.appended})
        order = [shown[number - 1] for number in parsed.ranking] + [i for i in range(n) if i not in shown]
        unit = rank_to_unit(n)
        scores = [0.0] * n
        for position, index in enumerate(order):
            scores[index] = unit[position]
        ctx.grids.append({"path": None, "cells": {str(j + 1): ctx.top[i].id for j, i in enumerate(shown)},
                          "pass": 0, "window": 0, "kind": "separate_images", "round": 0})
        ctx.windows.append({"window": 0, "kind": "cotrr", "items": [c.id for c in ctx.top], "agreement": None,
                            "order": [ctx.top[i].id for i in order]})
        return order, scores
