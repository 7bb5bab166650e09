"""Imports every command module so that it registers itself on the app."""

from agent_cir.cli import demo_cmd, eval_cmd, index_cmd, report_cmd, search_cmd  # noqa: F401
