"""A ranking kept column-wise: gallery positions and scores as numpy arrays, objects only for the head.

A benchmark ranks the whole gallery (2,297 images on CIRR) for every query, but a person or a model only
ever looks at the first few dozen. ``Ranking`` holds the order as arrays; ``head(n)`` builds the
``Candidate`` objects of the first ``n``; rerank and verify reorder (or replace) only the head with
``with_head``; the eval reads target ranks and subset members from the arrays (``rank_of``).

Score columns: ``retrieval`` (the search score of every entry) and optional per-stage columns (``judge``,
``verify``, ``final``) that are NaN where the stage did not score the entry. ``ordered_by`` names the column
whose order the ranking follows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from agent_cir.types import Candidate

OrderedBy = Literal["retrieval", "judge", "fused", "verifier"]
SCORE_COLUMNS = ("judge", "verify", "final")


def _float_or_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass(frozen=True)
class Ranking:
    """An ordered ranking of gallery positions. Immutable: reordering returns a new ``Ranking``."""

    positions: np.ndarray
    """int64 gallery positions, best first."""
    retrieval: np.ndarray
    """float64 retrieval score of each entry (aligned with ``positions``)."""
    ids: Sequence[str]
    """The gallery's id table (shared, never copied): ``ids[positions[r]]`` is the id at rank r + 1."""
    paths: Sequence[str | None]
    lookup: Callable[[str], int | None]
    """Gallery id -> gallery position (None when the id is not in the gallery)."""
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Per-stage scores aligned with ``positions`` (NaN where the stage did not score the entry)."""
    ordered_by: OrderedBy = "retrieval"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, positions: np.ndarray, retrieval: np.ndarray, ids: Sequence[str],
                    paths: Sequence[str | None], lookup: Callable[[str], int | None]) -> Ranking:
        return cls(np.asarray(positions, dtype=np.int64), np.asarray(retrieval, dtype=np.float64), ids, paths, lookup)

    @classmethod
    def from_candidates(cls, candidates: Sequence[Candidate]) -> Ranking:
        """A ranking of exactly these candidates, in this order (fake stages, tests, rankings from elsewhere)."""
        ids = [c.id for c in candidates]
        paths = [c.path for c in candidates]
        where = {gallery_id: i for i, gallery_id in enumerate(ids)}
        columns = {}
        for name in SCORE_COLUMNS:
            values = [getattr(c, f"{name}_score") for c in candidates]
            if any(v is not None for v in values):
                columns[name] = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        return cls(np.arange(len(ids), dtype=np.int64), np.asarray([c.score for c in candidates], dtype=np.float64),
                   ids, paths, where.get, columns)

    @classmethod
    def empty(cls) -> Ranking:
        return cls.from_candidates([])

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.positions)

    def head(self, n: int | None = None) -> list[Candidate]:
        """``Candidate`` objects of the first ``n`` entries (all when None), ranks 1..n."""
        n = len(self.positions) if n is None else max(0, min(int(n), len(self.positions)))
        ranked = self.positions[:n].tolist()
        ids, paths = self.ids, self.paths
        scores = self.retrieval[:n].tolist()
        candidates = list(map(Candidate, [ids[p] for p in ranked], scores, [paths[p] for p in ranked], range(1, n + 1)))
        for name, values in self.columns.items():
            attribute = f"{name}_score"
            for candidate, value in zip(candidates, values[:n].tolist()):
                setattr(candidate, attribute, _float_or_none(value))
        return candidates

    def head_ids(self, n: int | None = None) -> list[str]:
        ids = self.ids
        return [ids[p] for p in self.positions[: (len(self.positions) if n is None else n)].tolist()]

    def _ranks(self) -> np.ndarray:
        """Rank (0-based) of every gallery position, -1 when the position is not ranked. Built once."""
        cached = self.__dict__.get("_rank_cache")
        if cached is None:
            size = int(self.positions.max()) + 1 if len(self.positions) else 0
            cached = np.full(size, -1, dtype=np.int64)
            cached[self.positions] = np.arange(len(self.positions), dtype=np.int64)
            object.__setattr__(self, "_rank_cache", cached)
        return cached

    def rank_of(self, gallery_id: str) -> int | None:
        """1-based rank of ``gallery_id``; None when it is not in this ranking."""
        position = self.lookup(str(gallery_id))
        if position is None:
            return None
        ranks = self._ranks()
        if position >= len(ranks) or ranks[position] < 0:
            return None
        return int(ranks[position]) + 1

    # ------------------------------------------------------------------ reordering
    def without(self, gallery_ids: Sequence[str]) -> Ranking:
        """This ranking with the given ids removed (CIRR scores the ranking without its reference)."""
        drop = [p for p in (self.lookup(str(i)) for i in gallery_ids) if p is not None]
        if not drop:
            return self
        keep = ~np.isin(self.positions, np.asarray(drop, dtype=np.int64))
        return self._select(keep, self.ordered_by)

    def _select(self, index: np.ndarray, ordered_by: OrderedBy) -> Ranking:
        return Ranking(self.positions[index], self.retrieval[index], self.ids, self.paths, self.lookup,
                       {name: values[index] for name, values in self.columns.items()}, ordered_by)

    def with_head(self, order: Sequence[int], ordered_by: OrderedBy, **columns: Sequence[float | None]) -> Ranking:
        """A new ranking whose head is the entries at ranks ``order`` (0-based indices into this ranking, in
        their new order), followed by every other entry in its current order. ``columns``: scores of the new
        head (one per entry of ``order``); the tail's values of those columns are NaN."""
        order = np.asarray(list(order), dtype=np.int64)
        if len(order) and (order.min() < 0 or order.max() >= len(self.positions)):
            raise IndexError("with_head: an index is outside the ranking")
        if len(np.unique(order)) != len(order):
            raise ValueError("with_head: an entry appears twice in the new head")
        rest = np.ones(len(self.positions), dtype=bool)
        rest[order] = False
        index = np.concatenate([order, np.flatnonzero(rest)])
        ranking = self._select(index, ordered_by)
        new_columns = dict(ranking.columns)
        for name, values in columns.items():
            if name not in SCORE_COLUMNS:
                raise ValueError(f"unknown score column {name!r}; expected one of {SCORE_COLUMNS}")
            if len(values) != len(order):
                raise ValueError(f"column {name!r} needs one score per head entry")
            column = np.full(len(index), np.nan, dtype=np.float64)
            column[: len(order)] = [np.nan if v is None else float(v) for v in values]
            new_columns[name] = column
        return Ranking(ranking.positions, ranking.retrieval, self.ids, self.paths, self.lookup, new_columns, ordered_by)

    def positions_of_head(self, n: int) -> list[int]:
        return self.positions[:n].tolist()

    def lead_with(self, positions: Sequence[int], retrieval: Sequence[float], ordered_by: OrderedBy,
                  **columns: Sequence[float | None]) -> Ranking:
        """A new ranking headed by these gallery ``positions`` (with their own retrieval scores: they may come
        from another round's ranking), followed by this ranking's other entries in their current order."""
        head = np.asarray(list(positions), dtype=np.int64)
        if len(np.unique(head)) != len(head):
            raise ValueError("lead_with: a gallery position appears twice in the new head")
        keep = ~np.isin(self.positions, head)
        tail = self._select(keep, ordered_by)
        merged_columns = {}
        for name in set(tail.columns) | set(columns):
            if name not in SCORE_COLUMNS:
                raise ValueError(f"unknown score column {name!r}; expected one of {SCORE_COLUMNS}")
            given = columns.get(name)
            top = (np.full(len(head), np.nan) if given is None
                   else np.asarray([np.nan if v is None else float(v) for v in given], dtype=np.float64))
            if len(top) != len(head):
                raise ValueError(f"column {name!r} needs one score per head entry")
            rest = tail.columns.get(name, np.full(len(tail), np.nan))
            merged_columns[name] = np.concatenate([top, rest])
        return Ranking(np.concatenate([head, tail.positions]),
                       np.concatenate([np.asarray(list(retrieval), dtype=np.float64), tail.retrieval]),
                       self.ids, self.paths, self.lookup, merged_columns, ordered_by)
