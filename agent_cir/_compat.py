"""Guarded work-arounds for broken third-party installs. Each one is inert on a healthy machine.

torchvision on a CPU-only torch: the only torchvision wheels for torch 2.13 are CUDA builds whose compiled
ops (``torchvision/_C.so``) cannot be loaded without the CUDA runtime. ``import torchvision`` then fails
with ``operator torchvision::nms does not exist`` (its fake-tensor registrations need the op schemas), and
that breaks open_clip and transformers' image utilities, which import torchvision. Declaring the two op
schemas lets the import succeed; the ops themselves stay unavailable (nothing we use calls them).

The check runs lazily, when torchvision is first imported, so ``import agent_cir`` does not import torch.
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.util
import os
import sys
import threading
from typing import Any

_TORCHVISION_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_lock = threading.RLock()
_checked = False
_declared_library: Any = None
"""The torch.library.Library holding our declarations; kept alive because dropping it unregisters them."""


def torchvision_ops_were_declared() -> bool:
    """True when the fallback acted (torchvision's compiled ops failed to load and we declared the schemas)."""
    return _declared_library is not None


def _torchvision_package_dir() -> str | None:
    try:
        spec = importlib.util.find_spec("torchvision")  # locates the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _op_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _compiled_ops_load(package_dir: str) -> bool:
    """Load torchvision's compiled ops the way torchvision itself does; False when that fails."""
    import torch

    libraries = [p for p in glob.glob(os.path.join(package_dir, "_C.*")) if p.endswith((".so", ".pyd", ".dylib"))]
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
    except (OSError, ImportError, RuntimeError):
        return False
    return _op_exists("nms")


def _fix_torchvision_ops() -> None:
    global _checked, _declared_library
    with _lock:
        if _checked:
            return
        _checked = True
        _remove_hook()
        package_dir = _torchvision_package_dir()
        if package_dir is None or "torchvision" in sys.modules:
            return
        if all(_op_exists(name) for name in _TORCHVISION_OP_SCHEMAS):
            return
        if _compiled_ops_load(package_dir):
            return  # healthy install: torchvision will find its ops
        import torch

        library = torch.library.Library("torchvision", "DEF")
        for name, schema in _TORCHVISION_OP_SCHEMAS.items():
            if not _op_exists(name):
                library.define(schema)
        _declared_library = library


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    """Runs the check right before torchvision is first imported, then steps aside."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "torchvision":
            _remove_hook()
            _fix_torchvision_ops()
        return None  # the normal finders do the import


_hook: _TorchvisionImportHook | None = None


def _remove_hook() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` work on a CPU-only torch with a CUDA torchvision wheel.

    Does nothing when torchvision is not installed, when it is already imported, or when its compiled
    ops load (a healthy install). Safe to call any number of times.
    """
    global _hook
    if _checked or _hook is not None:
        return
    if "torchvision" in sys.modules:
        return
    if "torch" in sys.modules:
        _fix_torchvision_ops()  # torch is loaded anyway: check now, no need for a hook
        return
    if _torchvision_package_dir() is None:
        return
    _hook = _TorchvisionImportHook()
    sys.meta_path.insert(0, _hook)
