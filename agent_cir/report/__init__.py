"""Interpretable query inspection: the static HTML report (``build_report``). The demo is ``agent_cir.demo``."""

from agent_cir.report.writer import FILTERS, STATUSES, QueryView, ReportError, analyse, build_report

__all__ = ["FILTERS", "STATUSES", "QueryView", "ReportError", "analyse", "build_report"]
