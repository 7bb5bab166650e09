"""One query's rerank: the candidates, the grid settings that apply to it, and what goes into the trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_cir.config import GridConfig, RerankConfig
from agent_cir.grid import grid_capacity
from agent_cir.types import Candidate, ModelCall, QueryState


class RerankContext:
    """The work of one query: the top candidates, prompt variables, and the trace accumulators every judge
    appends to (calls, grids, parsed answers, repairs, windows, notes)."""

    def __init__(
        self,
        config: RerankConfig,
        state: QueryState,
        top: list[Candidate],
        *,
        candidate_captions: list[str | None] | None,
        reference_caption: str | None,
    ) -> None:
        self.config = config
        self.state = state
        self.top = top
        self.calls: list[ModelCall] = []
        self.grids: list[dict[str, Any]] = []
        self.parsed: list[dict[str, Any]] = []
        self.repairs: list[dict[str, Any]] = []
        self.windows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.images_sent = 0
        self.window_counter = 0
        query = state.query
        reference_path = query.image if query.image and Path(query.image).is_file() else None
        self.reference_path = reference_path
        grid_config = config.grid
        if grid_config.reference == "cell" and reference_path is None:
            # No reference image: the R cell would be empty, so the candidates get all cells.
            grid_config = grid_config.model_copy(update={"reference": "none"})
            self.notes.append("grid.reference='cell' but the query has no reference image: grid without R cell")
        self.grid_config: GridConfig = grid_config
        self.capacity = grid_capacity(grid_config)
        self.captions = candidate_captions if grid_config.caption_strip else None
        if grid_config.caption_strip and not any(self.captions or []):
            self.notes.append("grid.caption_strip is on but no candidate captions were given: strip left empty")
            self.grid_config = grid_config.model_copy(update={"caption_strip": False})
            self.captions = None
        self.variables = {
            "modification": query.text or "",
            "target_descriptions": list(state.target_descriptions),
            "reference_caption": reference_caption if config.include_caption else None,
        }

    def add_call(self, call: ModelCall, images: int) -> None:
        self.calls.append(call)
        self.images_sent += images
        note = call.params.get("cache_note")
        if note:
            self.notes.append(f"cache: {note}")

    def agreement_summary(self) -> dict[str, Any] | None:
        per_window = [w["agreement"] for w in self.windows if w.get("agreement")]
        if not per_window:
            return None
        return {
            "kendall_tau_mean": round(sum(a["kendall_tau_mean"] for a in per_window) / len(per_window), 6),
            "top1_agreement": round(sum(a["top1_agreement"] for a in per_window) / len(per_window), 6),
            "windows": len(per_window),
        }
