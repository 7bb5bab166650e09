"""Multigrain stage: CoTMR's multi-grained scoring (MGS) of the retrieved ranking.

CoTMR's one LVLM call (our ``one_stage`` with the ``cotmr_reason`` prompt) answers with the image-scale target
caption and object-scale lists: objects that must be present and objects that must be absent. The description
stage keeps the caption (retrieval embeds it); this stage reads the two object lists from that same answer
(:func:`parse_target_objects`, tolerant of whatever the model wrote), embeds them with the retrieval encoder
and scores every entry of the ranking again with :func:`agent_cir.retrieval.multigrain.multigrain_scores`:

    S(v) = mean_c cos(c, v) + w_present * agg_{o in O+} cos(o, v) - w_absent * agg_{o in O-} cos(o, v)

The ranking is then ordered by S (its retrieval column becomes S). Entries are those retrieval returned
(``retrieve.k``; the benchmarks rank the whole gallery), so the order is exact for them.
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any

import numpy as np

from agent_cir.config import MultigrainConfig
from agent_cir.parsing import extract_json
from agent_cir.retrieval.multigrain import multigrain_scores
from agent_cir.retrieval.ranking import Ranking
from agent_cir.trace.outputs import MultigrainOutput, RankedItem
from agent_cir.types import QueryState, StageRecord

PRESENT_KEYS = ("present_objects", "existent_objects", "existing_objects", "present", "must_have", "objects")
ABSENT_KEYS = ("absent_objects", "nonexistent_objects", "non_existent_objects", "absent", "must_not_have")
MAX_OBJECT_CHARS = 80
DESCRIPTION_STAGES = ("one_stage", "rewrite", "refine")
SCORE_CHUNK = 8192
"""Ranked entries scored per step (the ranking of a benchmark holds the whole gallery)."""


def _clean_phrase(value: Any) -> str | None:
    if isinstance(value, dict):  # {"name": "a dog"} / {"object": ...}
        value = next((v for k, v in value.items() if str(k).lower() in ("name", "object", "phrase", "text")), None)
    if not isinstance(value, str):
        return None
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in value)
    text = " ".join(text.split()).strip(" .,;:\"'`*-")
    return text[:MAX_OBJECT_CHARS] or None


def _phrases(value: Any, limit: int) -> list[str]:
    if isinstance(value, str):
        value = value.split(",") if value.strip().lower() not in ("", "none", "n/a", "nothing") else []
    if not isinstance(value, list):
        return []
    found: list[str] = []
    for item in value:
        phrase = _clean_phrase(item)
        if phrase and phrase.lower() not in {p.lower() for p in found}:
            found.append(phrase)
        if len(found) >= limit:
            break
    return found


def parse_target_objects(raw: str | None, limit: int = 8) -> tuple[list[str], list[str]]:
    """(objects that must be present, objects that must be absent) from a CoTMR-style answer; never raises.

    Reads the first JSON object of the answer (fenced or not); the lists may be lists of strings, of
    {"name": ...} objects, or one comma-separated string. Phrases are cleaned of control characters, bounded
    in length and count, deduplicated (case-insensitively); a phrase in both lists is kept only as present.
    No usable JSON: two empty lists (the caption alone is scored)."""
    try:
        data = extract_json(raw or "", prefer=dict)
        if not isinstance(data, dict):
            return [], []
        lowered = {str(key).lower(): value for key, value in data.items()}
        present = next((_phrases(lowered[k], limit) for k in PRESENT_KEYS if k in lowered), [])
        absent = next((_phrases(lowered[k], limit) for k in ABSENT_KEYS if k in lowered), [])
        kept = {p.lower() for p in present}
        return present, [a for a in absent if a.lower() not in kept]
    except Exception:  # noqa: BLE001 - hostile model text must never fail the query
        return [], []


def _description_answer(state: QueryState) -> str | None:
    """The raw answer of this round's description stage (one_stage / rewrite / refine), or None."""
    for record in reversed(state.records):
        if record.stage in DESCRIPTION_STAGES and record.calls:
            return record.calls[-1].raw
    return None


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.size == 0:
        return matrix.reshape(0, matrix.shape[-1] if matrix.ndim == 2 else 0)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


class MultigrainStage:
    """Re-scores the ranking with the target caption and the present / absent objects."""

    name = "multigrain"

    def __init__(self, config: MultigrainConfig, encoder: Any, gallery: Any) -> None:
        self.config = config
        self.encoder = encoder
        self.gallery = gallery

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, int(self.encoder.dim)))
        return _unit(self.encoder.encode_texts(texts))

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name)
        ranking = state.ranking
        if ranking is None or not len(ranking):
            record.skipped = "no ranking to score (retrieval returned none)"
            return record
        if getattr(self.gallery, "image_embeddings", None) is None:
            record.skipped = "the gallery has no image embeddings: multi-grained scoring compares texts with images"
            return record
        if not state.target_descriptions:
            record.skipped = "no target description to score with"
            return record
        present, absent = parse_target_objects(_description_answer(state), self.config.max_objects)
        template = self.config.object_template
        captions = self._embed(list(state.target_descriptions))
        present_vectors = self._embed([template.format(p) for p in present])
        absent_vectors = self._embed([template.format(a) for a in absent])
        scores = np.empty(len(ranking.positions), dtype=np.float64)
        for start in range(0, len(scores), SCORE_CHUNK):  # a whole-gallery ranking, a bounded slice at a time
            rows = ranking.positions[start:start + SCORE_CHUNK]
            images = _unit(np.asarray(self.gallery.image_embeddings[rows], dtype=np.float32))
            scores[start:start + len(rows)] = multigrain_scores(
                captions, present_vectors, absent_vectors, images, present_weight=self.config.present_weight,
                absent_weight=self.config.absent_weight, aggregate=self.config.aggregate)
        order = np.argsort(-scores, kind="stable")
        state.ranking = Ranking.from_arrays(ranking.positions[order], scores[order], ranking.ids, ranking.paths,
                                            ranking.lookup)
        state.candidates = state.ranking.head(len(state.candidates))
        if not present and not absent:
            record.notes.append("no present / absent objects in the description answer: the caption alone scored")
        record.parse_status = "ok" if present or absent else "fallback"
        record.output = MultigrainOutput(
            target_descriptions=list(state.target_descriptions), present_objects=present, absent_objects=absent,
            present_weight=self.config.present_weight, absent_weight=self.config.absent_weight,
            aggregate=self.config.aggregate, rescored=len(order),
            head=[RankedItem(rank=c.rank, id=c.id, path=c.path, score=c.score) for c in state.candidates[:10]],
        )
        record.seconds = time.perf_counter() - started
        return record
