"""Test-only fault injection at the indexer's write steps (the crash-safety tests kill the build at each one).

``AGENT_CIR_TEST_CRASH_AT=<step>``: the process SIGKILLs itself when it reaches ``step``.
``AGENT_CIR_TEST_PAUSE_AT=<step>`` with ``AGENT_CIR_TEST_PAUSE_FILE=<path>``: at ``step`` it creates
``<path>.reached`` and waits until ``<path>`` exists (to hold the lock while another writer tries its luck).
Unset (always, outside tests), ``fault_point`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CRASH_ENV = "AGENT_CIR_TEST_CRASH_AT"
PAUSE_ENV = "AGENT_CIR_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "AGENT_CIR_TEST_PAUSE_FILE"

WRITE_STEPS = (
    "checkpoint-opened",
    "gen-embeddings",
    "gen-faiss",
    "gen-manifest",
    "gen-meta",
    "gen-sealed",
    "pointer-tmp",
    "published",
    "old-generations-removed",
    "checkpoints-removed",
)
"""Every step of a build after which a crash must leave a loadable index (plus ``encoded-batch-<n>``)."""


def batch_step(number: int) -> str:
    return f"encoded-batch-{number}"


def fault_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) == step:
        release = Path(os.environ[PAUSE_FILE_ENV])
        Path(f"{release}.reached").touch()
        while not release.exists():
            time.sleep(0.05)
