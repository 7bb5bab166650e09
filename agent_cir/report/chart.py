"""The ground truth's rank after each stage as coordinates for a small inline SVG (no plotting library:
the report is static HTML that opens from disk)."""

from __future__ import annotations

import math
from typing import Any

from agent_cir.report.analyse import StagePoint


def rank_chart(points: list[StagePoint], width: int = 300, height: int = 150) -> dict[str, Any] | None:
    """Coordinates for the inline SVG: rank on a log scale (1 at the top), 'not in list' below the axis."""
    if not points:
        return None
    depth = max([p.depth for p in points] + [p.rank or 1 for p in points] + [2])
    left, right, top, plot_bottom = 70, 40, 18, height - 42
    missing_y = height - 16
    span = plot_bottom - top

    def y_of(rank: int | None) -> float:
        if rank is None:
            return missing_y
        return top + span * math.log(rank) / math.log(depth)

    step = (width - left - right) / max(1, len(points) - 1)
    drawn = []
    for index, point in enumerate(points):
        x = left + step * index if len(points) > 1 else (left + width - right) / 2
        drawn.append({"x": round(x, 1), "y": round(y_of(point.rank), 1), "stage": point.stage,
                      "label": f"#{point.rank}" if point.rank else f"> {point.depth}"})
    ticks = sorted({1, depth} | ({10} if depth > 20 else set()))
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top,
        "plot_bottom": plot_bottom, "missing_y": missing_y,
        "ticks": [{"y": round(y_of(t), 1), "label": str(t)} for t in ticks],
        "points": drawn,
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in drawn),
    }


__all__ = ["rank_chart"]
