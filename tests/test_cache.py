"""The SQLite model cache: keys, counters, default location, and several processes writing at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from agent_cir.cache import CacheError, ModelCache, default_cache_path
from agent_cir.config import CacheConfig


def test_round_trip_and_counters(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "c.sqlite")
    key = cache.make_key(backend="fake", model="m", params={"temperature": 0.0})
    assert cache.get(key) is None
    cache.put(key, {"raw": "answer", "usage": {"input_tokens": 3}})
    assert cache.get(key) == {"raw": "answer", "usage": {"input_tokens": 3}}
    assert cache.stats == {"hits": 1, "misses": 1}
    cache.put(key, {"raw": "replaced"})  # upsert, never a constraint error
    assert cache.get(key) == {"raw": "replaced"} and len(cache) == 1
    reopened = ModelCache(tmp_path / "c.sqlite")
    assert reopened.get(key) == {"raw": "replaced"} and key in reopened
    assert reopened.stats == {"hits": 1, "misses": 0}  # counters are per instance


def test_make_key_is_stable_and_sensitive() -> None:
    a = ModelCache.make_key(model="m", params={"temperature": 0.0, "seed": 1}, images=["h1"])
    b = ModelCache.make_key(images=["h1"], params={"seed": 1, "temperature": 0.0}, model="m")
    assert a == b
    assert a != ModelCache.make_key(model="m", params={"temperature": 0.0, "seed": 2}, images=["h1"])
    assert a != ModelCache.make_key(model="m", params={"temperature": 0.0, "seed": 1}, images=["h2"])


def test_default_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_CIR_CACHE", str(tmp_path / "env" / "x.sqlite"))
    assert default_cache_path() == tmp_path / "env" / "x.sqlite"
    cache = ModelCache()
    assert cache.path == tmp_path / "env" / "x.sqlite" and cache.path.is_file()
    monkeypatch.delenv("AGENT_CIR_CACHE")
    assert default_cache_path() == Path.home() / ".cache" / "agent_cir" / "cache.sqlite"


def test_from_config(tmp_path: Path) -> None:
    assert ModelCache.from_config(CacheConfig(enabled=False)) is None
    cache = ModelCache.from_config(CacheConfig(path=str(tmp_path / "r.sqlite")))
    assert cache is not None and cache.path == tmp_path / "r.sqlite"


def test_wal_mode_and_unusable_file(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "c.sqlite")
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal" and cache.path.exists()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match="bad.sqlite"):
        ModelCache(bad)


def _writer(path: str, worker: int, count: int, barrier) -> None:  # noqa: ANN001 - multiprocessing target
    cache = ModelCache(path)
    barrier.wait()
    for index in range(count):
        cache.put(ModelCache.make_key(i=index), {"raw": f"shared {index}", "worker": worker})  # same keys
        cache.put(ModelCache.make_key(worker=worker, i=index), {"raw": f"own {worker} {index}"})
        cache.get(ModelCache.make_key(i=(index * 7) % count))


def test_processes_writing_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    count, workers = 150, 3
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    processes = [context.Process(target=_writer, args=(path, w, count, barrier)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * workers  # no 'database is locked' anywhere
    cache = ModelCache(path)
    assert len(cache) == count + workers * count
    for worker in range(workers):
        for index in range(0, count, 17):
            assert cache.get(ModelCache.make_key(worker=worker, i=index)) == {"raw": f"own {worker} {index}"}
    assert cache.get(ModelCache.make_key(i=5))["raw"] == "shared 5"


def test_threads_share_one_cache(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "t.sqlite")

    def work(offset: int) -> None:
        for index in range(50):
            cache.put(cache.make_key(n=offset * 100 + index), {"v": index})
            assert cache.get(cache.make_key(n=offset * 100 + index)) == {"v": index}

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 200 and cache.stats == {"hits": 200, "misses": 0}


@pytest.mark.parametrize("stored", ["not json", "[1, 2]", "null", '"text"', '{"raw": 5}', '{"structured": true}',
                                    "[" * 5000 + "]" * 5000])
def test_a_damaged_value_is_a_counted_miss_and_is_overwritten(tmp_path: Path, stored: str) -> None:
    cache = ModelCache(tmp_path / "c.sqlite")
    key = cache.make_key(n=1)
    sqlite3.connect(cache.path, isolation_level=None).execute(
        "INSERT INTO model_cache (key, value, created) VALUES (?, ?, 0)", (key, stored))
    has_raw = lambda value: isinstance(value.get("raw"), str)  # noqa: E731
    assert cache.lookup(key, has_raw) == (None, "damaged")
    assert cache.get(key, has_raw) is None
    assert cache.damaged == 2 and cache.stats == {"hits": 0, "misses": 2}
    cache.put(key, {"raw": "fresh"})
    assert cache.lookup(key, has_raw) == ({"raw": "fresh"}, "hit") and cache.damaged == 2


def test_invoke_recomputes_a_damaged_answer_and_notes_it(tmp_path: Path, make_fake_model) -> None:
    from agent_cir.backends import invoke
    from agent_cir.prompts import load_prompt

    cache = ModelCache(tmp_path / "c.sqlite")
    handle = make_fake_model(["the answer"])
    prompt = load_prompt("caption")
    first = invoke(handle, [("user", "q")], prompt=prompt, cache=cache)
    sqlite3.connect(cache.path, isolation_level=None).execute("UPDATE model_cache SET value = '{\"raw\": null}'")
    second = invoke(handle, [("user", "q")], prompt=prompt, cache=cache)
    assert (first.cache, second.cache) == ("miss", "miss") and second.raw == "the answer"
    assert "damaged" in second.params["cache_note"] and cache.damaged == 1
    third = invoke(handle, [("user", "q")], prompt=prompt, cache=cache)
    assert third.cache == "hit" and "cache_note" not in third.params


# --- bounded waits: another process holding the write lock (issue 18, case 13) ---------------------------

_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute(sys.argv[2])
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(60)
"""


def _hold_write_lock(path, journal_mode="DELETE"):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path), f"PRAGMA journal_mode={journal_mode}"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_opening_a_cache_another_process_keeps_locked_fails_within_the_wait_naming_the_file(tmp_path):
    import time

    from agent_cir.cache import CacheBusyError

    path = tmp_path / "held.sqlite"
    holder = _hold_write_lock(path)
    try:
        started = time.monotonic()
        with pytest.raises(CacheBusyError) as err:
            ModelCache(path, wait_seconds=1.0)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert waited < 4.0  # was 20 retries x 60 s busy timeout
    message = str(err.value)
    assert str(path) in message and "another process" in message and "enabled: false" in message


def test_a_put_while_another_process_holds_the_lock_warns_and_keeps_going(tmp_path):
    import time

    from agent_cir.cache import CacheBusyWarning

    path = tmp_path / "shared.sqlite"
    cache = ModelCache(path, wait_seconds=1.0)
    cache.put("before", {"raw": "a"})
    holder = _hold_write_lock(path, journal_mode="WAL")
    try:
        started = time.monotonic()
        with pytest.warns(CacheBusyWarning, match="not cached"):
            cache.put("during", {"raw": "b"})
        waited = time.monotonic() - started
        assert cache.get("before") == {"raw": "a"}  # reads still work under WAL
    finally:
        holder.kill()
        holder.wait()
    assert 0.5 < waited < 4.0
    cache.put("after", {"raw": "c"})  # the lock is gone: writes work again
    assert cache.get("after") == {"raw": "c"} and cache.get("during") is None


def test_the_cache_wait_comes_from_the_environment(tmp_path, monkeypatch):
    from agent_cir.cache import DEFAULT_WAIT_S

    assert ModelCache(tmp_path / "a.sqlite").wait_seconds == DEFAULT_WAIT_S <= 15
    monkeypatch.setenv("AGENT_CIR_CACHE_WAIT", "2.5")
    assert ModelCache.from_config(CacheConfig(path=str(tmp_path / "c.sqlite"))).wait_seconds == 2.5
    monkeypatch.setenv("AGENT_CIR_CACHE_WAIT", "soon")
    with pytest.raises(CacheError, match="AGENT_CIR_CACHE_WAIT"):
        ModelCache(tmp_path / "d.sqlite")
