"""The README's two set-up commands in a fresh copy of the repository with nothing beside it (no ../shared).

Fast form (always): the working tree's files git would ship (tracked + untracked-but-not-ignored) are
copied into an empty temporary folder; the quickstart runs there with this environment's Python on the
copy's package (PYTHONPATH), exactly as `.venv/bin/agent-cir quickstart` would after the install; and the
whole test suite must collect there. Full form (AGENT_CIR_TEST_INSTALL=1): `bash scripts/install.sh` really
runs in the copy, then the README's command line as written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_readme import readme_commands

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    clone = tmp_path_factory.mktemp("fresh") / "agent_cir"
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():  # a tracked file deleted in the working tree is not shipped
            target = clone / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert not (clone.parent / "shared").exists() and not (clone / ".venv").exists()
    return clone


def _env(clone: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env.update(PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               AGENT_CIR_CACHE=str(clone.parent / "cache.sqlite"))
    return env


def _check_quickstart_output(run: subprocess.CompletedProcess, clone: Path) -> None:
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    installed = [n for n, line in enumerate(lines) if line.startswith("agent_cir installed in .venv")]
    lines = lines[installed[-1] + 1:] if installed else lines  # the quickstart's own output starts here
    assert lines[0].startswith("OFFLINE:"), lines[:3]
    assert any(line.strip().startswith("1 ") for line in lines), "a ranking is printed"
    report = Path(next(line for line in lines if line.startswith("report: ")).split(": ", 1)[1])
    assert report.is_file() and report.is_relative_to(clone)
    # the first report shows pictures: every image of its pages is a thumbnail, none "outside the gallery"
    html = "\n".join(page.read_text(encoding="utf-8") for page in report.parent.rglob("*.html"))
    shown = set(re.findall(r"""thumbs/[\w.-]+\.(?:jpg|png|webp)""", html))
    assert "outside the gallery" not in html and len(shown) >= 10
    assert all((report.parent / name).is_file() for name in shown)


@pytest.mark.slow
def test_quickstart_runs_in_a_fresh_clone_without_shared_data(fresh_clone: Path):
    install, _ = readme_commands()
    assert install == "bash scripts/install.sh && .venv/bin/agent-cir quickstart"
    # The command's second half, with this environment standing in for the .venv that install.sh makes
    run = subprocess.run([sys.executable, "-m", "agent_cir.cli", "quickstart"], cwd=fresh_clone, env=_env(fresh_clone),
                         capture_output=True, text=True, timeout=1200)
    _check_quickstart_output(run, fresh_clone)
    assert (fresh_clone / "agent_cir_quickstart" / "report" / "index.html").is_file()


@pytest.mark.slow
def test_the_test_suite_collects_in_a_fresh_clone(fresh_clone: Path):
    """The README's test command on a fresh clone: every test module imports without ../shared (tests that
    need it skip at run time)."""
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=fresh_clone, env=_env(fresh_clone), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "error" not in run.stdout.lower().split("\n")[-2]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("AGENT_CIR_TEST_INSTALL") != "1",
                    reason="set AGENT_CIR_TEST_INSTALL=1 to run scripts/install.sh in a fresh clone (minutes, registry)")
def test_readme_install_command_as_written_in_a_fresh_clone(fresh_clone: Path):
    install, _ = readme_commands()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", AGENT_CIR_CACHE=str(fresh_clone.parent / "cache.sqlite"))
    run = subprocess.run(["bash", "-c", install], cwd=fresh_clone, env=env, capture_output=True, text=True,
                         timeout=3600)
    _check_quickstart_output(run, fresh_clone)
