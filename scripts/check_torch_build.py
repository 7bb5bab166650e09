"""Says whether the torch build pip installed is the one install.sh wanted, loudly when it is not.

pip falls back to the default index without failing when PyTorch's CPU index cannot be reached, so a
CPU-only machine can silently get the CUDA build (+4 GB of nvidia packages). install.sh runs this after
installing the pair: ``python scripts/check_torch_build.py cpu|cuda``; exit code 0 on a match, 3 otherwise.
"""

from __future__ import annotations

import sys

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def build_of(version: str, cuda: str | None) -> str:
    """``cpu`` or ``cuda`` for a torch ``__version__`` and ``torch.version.cuda``."""
    return "cuda" if cuda else "cpu"  # a +cpu wheel and a ROCm/MPS-less CPU wheel both report cuda None


def verdict(wanted: str, version: str, cuda: str | None) -> tuple[bool, str]:
    """(matches, message) for the build ``wanted`` (cpu or cuda) against the one installed."""
    got = build_of(version, cuda)
    label = f"torch {version} ({'CUDA ' + cuda if cuda else 'CPU only'})"
    if got == wanted:
        return True, f"torch build: {label}, as wanted ({wanted})"
    if wanted == "cpu":
        how = (f"The CPU index ({CPU_INDEX}) could not be reached or had no wheel, so pip took the default "
               "index's CUDA build (about 4 GB more, unused without a GPU). To get the CPU build: "
               f".venv/bin/python -m pip install --force-reinstall -c requirements/constraints.txt "
               f"--index-url {CPU_INDEX} torch torchvision (or keep this one: it works, on the CPU)")
    else:
        how = ("A CUDA build was wanted (a GPU was found or AGENT_CIR_TORCH=cuda) but this build has no CUDA. "
               "To get it: AGENT_CIR_TORCH=cuda bash scripts/install.sh after removing .venv, or .venv/bin/python -m "
               "pip install --force-reinstall -c requirements/constraints.txt torch torchvision")
    return False, f"WARNING: torch build mismatch: wanted {wanted}, got {label}. {how}"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("cpu", "cuda"):
        print("usage: check_torch_build.py cpu|cuda", file=sys.stderr)
        return 2
    import torch

    ok, message = verdict(argv[0], torch.__version__, torch.version.cuda)
    if ok:
        print(message)
        return 0
    bar = "!" * 78
    print(f"{bar}\n{message}\n{bar}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
