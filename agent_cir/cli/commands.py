"""Imports every command module so that it registers itself on the app."""

from agent_cir.cli import index_cmd, search_cmd  # noqa: F401
