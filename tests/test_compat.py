"""The torchvision/open_clip import fix: works here (broken CUDA torchvision on CPU torch), inert elsewhere.

Each scenario runs in a fresh interpreter: the fix acts once per process, before torchvision is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(script: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_open_clip_imports_after_agent_cir_and_a_second_call_is_harmless() -> None:
    result = _run(
        """
import json, sys
import agent_cir
torch_loaded_by_agent_cir = "torch" in sys.modules
import open_clip, torchvision
from agent_cir import _compat
declared = _compat.torchvision_ops_were_declared()
_compat.ensure_torchvision_importable()
_compat.ensure_torchvision_importable()
import torch
nms_has_cpu_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU")
print(json.dumps({"nms_has_cpu_kernel": nms_has_cpu_kernel, "torch_loaded_by_agent_cir": torch_loaded_by_agent_cir, "declared": declared,
                  "hooks": sum(type(h).__name__ == "_TorchvisionImportHook" for h in sys.meta_path),
                  "still_declared": _compat.torchvision_ops_were_declared(),
                  "open_clip": open_clip.__version__, "torchvision": torchvision.__version__}))
"""
    )
    assert result["open_clip"] and result["torchvision"]
    # `import agent_cir` stays light: the check waits until torchvision is actually imported.
    assert result["torch_loaded_by_agent_cir"] is False
    assert result["hooks"] == 0
    assert result["declared"] == result["still_declared"]
    # The fix acts exactly when torchvision's compiled ops are unusable (no CPU kernel for nms).
    assert result["declared"] is (not result["nms_has_cpu_kernel"])


def test_inert_when_compiled_ops_load_or_torchvision_is_absent() -> None:
    result = _run(
        """
import json, sys
from agent_cir import _compat  # importing agent_cir armed the import hook; start from a clean slate
_compat._remove_hook()
find_package = _compat._torchvision_package_dir

# torchvision not installed: no hook, nothing imported, nothing declared.
_compat._torchvision_package_dir = lambda: None
_compat.ensure_torchvision_importable()
absent = {"hook": _compat._hook is not None, "torch": "torch" in sys.modules,
          "declared": _compat.torchvision_ops_were_declared()}

# A healthy install: torchvision's compiled ops load, so no schema may be declared by us.
_compat._torchvision_package_dir = find_package
_compat._compiled_ops_load = lambda package_dir: True
import torch
_compat.ensure_torchvision_importable()
healthy = {"declared": _compat.torchvision_ops_were_declared(), "nms_defined": _compat._op_exists("nms")}
print(json.dumps({"absent": absent, "healthy": healthy}))
"""
    )
    assert result["absent"] == {"hook": False, "torch": False, "declared": False}
    assert result["healthy"] == {"declared": False, "nms_defined": False}
