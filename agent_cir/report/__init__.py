"""Interpretable query inspection: the static HTML report (``build_report``). The demo is ``agent_cir.demo``.

Modules, in the order a report is made: ``load`` (run folder, traces, and the one place that reads trace
records), ``analyse`` (statuses, ranks by stage, stage totals), ``chart`` (rank-by-stage SVG), ``images``
and ``thumbs`` (which images may be shown, and their thumbnails), ``render`` (page contexts, jinja2),
``folder`` (the output folder's marker and atomic writes), ``build`` (``build_report``).
"""

from agent_cir.report.analyse import FILTERS, STATUSES, QueryView, analyse
from agent_cir.report.build import build_report
from agent_cir.report.load import ReportError, TraceData, read_trace

__all__ = ["FILTERS", "STATUSES", "QueryView", "ReportError", "TraceData", "analyse", "build_report", "read_trace"]
