"""k beyond one grid: which items each judge call sees, in which cell order, and how the answers combine.

Pure functions of sizes and a ``judge_window(items, kind, round) -> local order`` callback, so the plans
(and their termination) are testable without images or models.

Termination. With grid capacity s (candidates per grid) and n > s items:
- sliding windows: ``ceil((n - s) / step) + 1`` calls per pass (step clamped to 1..s);
- tournament: round r judges ``g = ceil(n_r / s)`` round-robin groups and ``g * max(1, s // g)`` items
  advance. For s >= 2 that is fewer than n_r (at most s when g <= s, else g = ceil(n_r / s) < n_r), so
  every round shrinks and the last is one final grid. Calls per pass: at most
  ``ceil(n/s) + ceil(n/s^2) + ... + 1 <= n / (s - 1) + log_s(n) + 1``.
  With s = 1 every item "wins" its group of one and the rounds never end: such grids are refused up front
  (:func:`check_can_progress`), as is any grid of fewer than 2 candidates when k needs more than one grid.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from agent_cir.errors import AgentCirError

JudgeWindow = Callable[[list[int], str, int], list[int]]
"""(items, kind, round index) -> the window-local order (a permutation of range(len(items)), best first)."""


class RerankConfigError(AgentCirError, ValueError):
    """A rerank setting that cannot work (a grid with no room to compare candidates)."""


def check_can_progress(capacity: int, k: int, *, rows: int, cols: int, reference: str) -> None:
    """Refuse grids in which the judge could never compare two candidates (or would never finish)."""
    where = f"rerank.grid ({rows}x{cols}, reference={reference!r})"
    if capacity < 1:
        raise RerankConfigError(
            f"{where} leaves no cell for candidates; use a larger grid or reference: separate"
        )
    if capacity < 2 and k > capacity:
        raise RerankConfigError(
            f"{where} holds {capacity} candidate per grid, so with rerank.k={k} the judge never compares two "
            "candidates (and overflow: tournament would never finish: every candidate wins its group of one). "
            "What to do: use a grid with room for at least 2 candidates (e.g. rows: 1, cols: 2, or "
            "reference: separate instead of cell), or set rerank.k: 1"
        )


def pass_permutation(n: int, pass_index: int, seed: int, window: int) -> list[int]:
    """Display order for a pass: item shown in cell j+1 is ``perm[j]``. Pass 0 keeps retrieval order,
    pass 1 reverses it (the strongest position-bias contrast), later passes are seeded shuffles."""
    order = list(range(n))
    if pass_index == 0:
        return order
    if pass_index == 1:
        return order[::-1]
    rng = random.Random(f"agent_cir-rerank:{seed}:{window}:{pass_index}")  # str seeds are stable across runs
    rng.shuffle(order)
    return order


def sliding_windows(n: int, size: int, step: int) -> list[tuple[int, int]]:
    """RankGPT windows ``[start, end)`` from the bottom of a list of n up to the top; the last starts at 0."""
    if size < 1 or step < 1:
        raise ValueError("window size and step must be at least 1")
    if n <= size:
        return [(0, n)]
    windows: list[tuple[int, int]] = []
    end = n
    while True:
        start = max(0, end - size)
        windows.append((start, end))
        if start == 0:
            return windows
        end -= step


def sliding_order(n: int, size: int, step: int, judge_window: JudgeWindow) -> list[int]:
    """RankGPT: judge each window bottom-up and write its order back before the next window."""
    current = list(range(n))
    for start, end in sliding_windows(n, size, min(step, size)):
        items = current[start:end]
        local = judge_window(items, "sliding", 0)
        current[start:end] = [items[i] for i in local]
    return current


def tournament_order(items: list[int], size: int, judge_window: JudgeWindow, round_index: int = 0) -> list[int]:
    """Round-robin groups (each group gets a share of the strong and the weak), the top of each group
    advances to the next round, the rest follow by their rank in their group, then input position."""
    if size < 2 and len(items) > size:
        raise RerankConfigError(f"a tournament over grids of {size} candidate(s) cannot finish")
    if len(items) <= size:
        local = judge_window(items, "final" if round_index else "single", round_index)
        return [items[i] for i in local]
    n_groups = math.ceil(len(items) / size)
    groups = [items[g::n_groups] for g in range(n_groups)]
    advance_per_group = max(1, size // n_groups)
    advancing: list[tuple[int, int, int]] = []  # (rank in group, input position, item)
    staying: list[tuple[int, int, int]] = []
    position_of = {item: position for position, item in enumerate(items)}
    for group in groups:
        local = judge_window(group, "group", round_index)
        for rank, index in enumerate(local):
            item = group[index]
            (advancing if rank < advance_per_group else staying).append((rank, position_of[item], item))
    advancing.sort()
    staying.sort()
    winners = tournament_order([item for _, _, item in advancing], size, judge_window, round_index + 1)
    return winners + [item for _, _, item in staying]


def listwise_order(n: int, size: int, overflow: str, step: int | None, judge_window: JudgeWindow) -> list[int]:
    """The judge's order of n items with grids of ``size``: one grid, sliding windows or a tournament."""
    if n <= size:
        local = judge_window(list(range(n)), "single", 0)
        return local
    if overflow == "tournament":
        return tournament_order(list(range(n)), size, judge_window)
    return sliding_order(n, size, step or max(1, size // 2), judge_window)


def tournament_call_bound(n: int, size: int) -> float:
    """Upper bound on the calls of one tournament pass: n / (s - 1) + log_s(n) + 1 (1 when n <= s)."""
    if n <= size:
        return 1.0
    return n / (size - 1) + math.log(n, size) + 1
