"""scripts/install.sh checks the torch build pip really installed against the one it wanted (issue 20.2)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _checker():
    spec = importlib.util.spec_from_file_location("check_torch_build", ROOT / "scripts" / "check_torch_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("wanted, version, cuda, ok", [
    ("cpu", "2.14.1+cpu", None, True),
    ("cpu", "2.14.1", "12.8", False),  # the silent fallback: default index, CUDA build
    ("cuda", "2.14.1", "12.8", True),
    ("cuda", "2.14.1+cpu", None, False),
])
def test_the_verdict_compares_the_build_got_with_the_one_wanted(wanted, version, cuda, ok):
    matches, message = _checker().verdict(wanted, version, cuda)
    assert matches is ok
    if not ok:
        assert message.startswith("WARNING: torch build mismatch") and f"wanted {wanted}" in message
        assert "pip install --force-reinstall" in message  # how to get the other build
    if wanted == "cpu" and not ok:
        assert "--index-url https://download.pytorch.org/whl/cpu" in message


def test_a_cuda_build_on_a_cpu_install_is_said_loudly_on_stderr(monkeypatch, capsys):
    fake = types.ModuleType("torch")
    fake.__version__ = "2.14.1"
    fake.version = types.SimpleNamespace(cuda="12.8")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert _checker().main(["cpu"]) == 3
    err = capsys.readouterr().err
    assert "!" * 20 in err and "CUDA 12.8" in err


def test_install_sh_runs_the_check_after_installing_the_pair():
    script = (ROOT / "scripts" / "install.sh").read_text()
    pair = script.index('"${PIP[@]}" "${TORCH_PAIR[@]}"')
    check = script.index('scripts/check_torch_build.py "$VARIANT"')
    package = script.index('-e ".[all]"')
    assert pair < check < package
    assert "a few minutes" in script  # the long silent step says what it does and how long
