"""Test-wide guards: fully offline, deterministic, no writes outside tmp folders.

Fixtures live in tests/fixtures/<area>.py, one module per area of the code, loaded below.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# OpenMP threads (faiss, torch) spin while waiting: on a busy 2-core machine that slows faiss ~10-50x
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = [
    "tests.fixtures.encoders",
    "tests.fixtures.chat",
    "tests.fixtures.rerank",
    "tests.fixtures.eval",
    "tests.fixtures.report",
    "tests.fixtures.pipeline",
    "tests.fixtures.tiny_models",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"

_LOOPBACK_PREFIXES = ("127.", "::1", "localhost", "0:0:0:0:0:0:0:1")
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if isinstance(address, tuple) and address:
        host = str(address[0])
        return host.startswith(_LOOPBACK_PREFIXES)
    return False


def _guarded_connect(self: socket.socket, address: object):  # type: ignore[no-untyped-def]
    if not _is_local(address):
        raise RuntimeError(f"test tried to open a network connection to {address!r}; tests must stay offline")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object):  # type: ignore[no-untyped-def]
    if not _is_local(address):
        raise RuntimeError(f"test tried to open a network connection to {address!r}; tests must stay offline")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own model-output cache, so no test sees another's cached answers."""
    monkeypatch.setenv("AGENT_CIR_CACHE", str(tmp_path_factory.mktemp("cache") / "cache.sqlite"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"optional dev data (real sample photos and benchmark files, kept beside the clone at "
                    f"{SHARED_DATA}) not found; only these tests need it, the rest of the suite does not")
    return SHARED_DATA


@pytest.fixture(scope="session")
def photos_dir(shared_data: Path) -> Path:
    return shared_data / "photos" / "imagenet-samples"
