"""Imports every command module so that it registers itself on the app (``--help`` order: cli.COMMAND_ORDER)."""

from agent_cir.cli import (  # noqa: F401  (the submodules, not the package namespace)
    chat_cmd,
    demo_cmd,
    eval_cmd,
    index_cmd,
    quickstart_cmd,
    report_cmd,
    search_cmd,
)
