"""``python -m agent_cir.cli``: the same as the ``agent-cir`` command."""

from agent_cir.cli import main

main()
