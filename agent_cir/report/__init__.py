"""Interpretable query inspection: the static HTML report (``build_report``). The demo is ``agent_cir.demo``.

Modules, in the order a report is made: ``load`` (the run folder and its traces, read as
``agent_cir.trace.model.Trace``), ``analyse`` (statuses, ranks by stage, stage totals), ``chart`` (rank-by-stage
SVG), ``images``
and ``thumbs`` (which images may be shown, and their thumbnails), ``render`` (page contexts, jinja2),
``folder`` (the output folder's marker and atomic writes), ``build`` (``build_report``).
"""

from agent_cir.report.analyse import FILTERS, STATUSES, QueryView, analyse
from agent_cir.report.build import build_report
from agent_cir.report.load import ReportError

__all__ = ["FILTERS", "STATUSES", "QueryView", "ReportError", "analyse", "build_report"]
