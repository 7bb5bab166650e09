"""Reranking the top-k retrieved candidates with an MLLM judge.

Modules, one job each:
- ``parse``: judge answers -> a full ranking of cells (``parse_ranking``) or a yes/no score
  (``parse_yes_no``); total and linear-time on any text.
- ``aggregate``: Borda / reciprocal-rank aggregation of passes (``AGGREGATIONS``), Kendall tau and top-1
  agreement, retrieval/judge score fusion.
- ``windows``: cell orders per pass, sliding windows, tournaments, and the guard against grids that
  cannot make progress (``check_can_progress``).
- ``judges``: the ``Judge`` interface and its implementations in the ``JUDGES`` registry
  (``grid``, ``pointwise``, ``logits``).
- ``context``: one query's candidates, grid settings and trace accumulators.
- ``stage``: ``RerankStage``, the pipeline stage.
"""

from agent_cir.rerank.aggregate import (
    AGGREGATIONS,
    aggregate_rankings,
    fuse_scores,
    kendall_tau,
    pass_agreement,
    rank_to_unit,
)
from agent_cir.rerank.judges import JUDGES, GridJudge, GridJudgement, Judge, LogitJudge, PointwiseJudge, make_judge
from agent_cir.rerank.parse import ParsedRanking, parse_ranking, parse_yes_no
from agent_cir.rerank.stage import RerankStage
from agent_cir.rerank.windows import (
    RerankConfigError,
    check_can_progress,
    listwise_order,
    pass_permutation,
    sliding_windows,
    tournament_call_bound,
)

__all__ = [
    "AGGREGATIONS",
    "JUDGES",
    "GridJudge",
    "GridJudgement",
    "Judge",
    "LogitJudge",
    "ParsedRanking",
    "PointwiseJudge",
    "RerankConfigError",
    "RerankStage",
    "aggregate_rankings",
    "check_can_progress",
    "fuse_scores",
    "kendall_tau",
    "listwise_order",
    "make_judge",
    "parse_ranking",
    "parse_yes_no",
    "pass_agreement",
    "pass_permutation",
    "rank_to_unit",
    "sliding_windows",
    "tournament_call_bound",
]
