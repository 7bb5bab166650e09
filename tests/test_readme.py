"""The README stays true: CI runs exactly the test command it prints, its first command is the install +
quickstart, and its Python example runs as written (offline, on the packaged example gallery)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _fenced_after(heading: str, text: str, language: str = "bash|sh") -> str:
    match = re.search(re.escape(heading) + rf".*?```(?:{language})?\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no code block after {heading!r}"
    return match.group(1).strip()


def readme_commands() -> tuple[str, str]:
    """(install-and-run command, test command): the first code blocks under the two set-up headings."""
    readme = (ROOT / "README.md").read_text()
    return _fenced_after("## Install and run", readme), _fenced_after("## Run the tests", readme)


def test_ci_runs_the_readme_test_command():
    _, test_command = readme_commands()
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines(), f"{test_command!r} must appear as a line of .ci/run"
    lines = ci_script.splitlines()
    assert lines.index("bash scripts/install.sh --dev --browser") < lines.index(test_command)
    assert 'if [ "$status" -eq 5 ]' in ci_script, "pytest's 'no tests collected' must fail CI"


def test_readme_commands_install_from_the_clone_then_quickstart_and_test():
    install, test_command = readme_commands()
    assert install == "bash scripts/install.sh && .venv/bin/agent-cir quickstart"
    # a fresh clone has no .venv: the test command must make it first
    assert test_command == "bash scripts/install.sh --dev && .venv/bin/python -m pytest -q"
    assert "../shared" not in install


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path: Path):
    readme = (ROOT / "README.md").read_text()
    code = _fenced_after("## Python API", readme, language="python")
    assert len(code.splitlines()) <= 12, "the README's example stays short"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "AGENT_CIR_CACHE": str(tmp_path / "cache.sqlite"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    query_id, descriptions = lines[0].split(" ", 1)
    assert re.fullmatch(r"q-[0-9a-f]{10}", query_id)
    assert "Two green circles on a blue background." in descriptions  # the scripted rewrite reached the trace
    ranked = [line.split() for line in lines[1:]]
    assert [int(row[0]) for row in ranked] == [1, 2, 3, 4, 5]
    assert "two_red_circles_on_blue.jpg" not in [row[1] for row in ranked], "the reference is excluded"
    assert [p.name for p in (tmp_path / "tmp").glob("agent_cir_example_*/idx/CURRENT")] == ["CURRENT"]  # published
    assert not (tmp_path / "idx").exists(), "the example writes into the folder it names, not the current one"


def test_readme_offline_example_fits_the_shapes_gallery_and_writes_outside_the_clone():
    readme = (ROOT / "README.md").read_text()
    block = _fenced_after("**Every stage, offline, in seconds.**", readme)
    assert "examples/offline_shapes.yaml" in block and "agent_cir/examples_data/gallery" in block
    written = re.findall(r"(?:-o|--out|--trace|--artifacts)\s+(\S+)", block)
    assert written and all(path.startswith("/tmp/") for path in written), written
    for path in re.findall(r"(?:--config|--image)\s+(\S+)", block):
        assert (ROOT / path).is_file(), path
