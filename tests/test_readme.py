"""The README's two set-up commands stay true: CI runs exactly the test command the README prints."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fenced_after(heading: str, text: str) -> str:
    match = re.search(re.escape(heading) + r".*?```(?:bash|sh)?\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no code block after {heading!r}"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_command = _fenced_after("Run the tests", readme)
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines(), f"{test_command!r} must appear as a line of .ci/run"


def test_readme_install_command_uses_the_install_script_and_the_cli():
    readme = (ROOT / "README.md").read_text()
    install = _fenced_after("Install and run", readme)
    assert "bash scripts/install.sh" in install
    assert "agent-cir index" in install and "agent-cir search" in install
