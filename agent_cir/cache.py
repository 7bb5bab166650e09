"""SQLite model-output cache: re-running an experiment costs no model calls.

Keys are stable hashes of everything that decides a model's answer (backend, model id, prompt-template
hash, rendered messages, image content hashes, sampling parameters); values are small JSON dicts.
Several processes may read and write one file at once: WAL journal, a busy timeout, one connection per
thread, and upserts so that two writers of the same key never fail.

A damaged value (not JSON, not an object, or failing the caller's shape check, e.g. no ``raw`` text) is a
miss: the caller computes the answer again and its ``put`` overwrites the entry. Damaged values are counted
(``ModelCache.damaged``, in ``stats``) and the caller notes them in its record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.hashing import stable_hash

CACHE_ENV = "AGENT_CIR_CACHE"
CACHE_WAIT_ENV = "AGENT_CIR_CACHE_WAIT"
DEFAULT_WAIT_S = 15.0
"""Longest a cache operation waits, in total, for another process that holds the file's write lock
(``$AGENT_CIR_CACHE_WAIT`` seconds overrides it). Not a recipe key: it changes no result, and a new recipe
key would change the resume identity of every existing run."""


def default_wait_seconds() -> float:
    raw = os.environ.get(CACHE_WAIT_ENV)
    if not raw:
        return DEFAULT_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        raise CacheError(f"${CACHE_WAIT_ENV}={raw!r} is not a number of seconds; set it to e.g. 15") from None
    if not 0 <= value <= 86_400:
        raise CacheError(f"${CACHE_WAIT_ENV}={raw!r} must be between 0 and 86400 seconds")
    return value
_SCHEMA = "CREATE TABLE IF NOT EXISTS model_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"


class CacheError(AgentCirError, OSError):
    """The cache file cannot be opened or written."""


class CacheBusyError(CacheError):
    """Another process held the cache file's lock for longer than the cache waits."""


class CacheBusyWarning(UserWarning):
    """A value was not stored because another process held the cache file's lock too long."""


def default_cache_path() -> Path:
    """``$AGENT_CIR_CACHE`` if set, else ``~/.cache/agent_cir/cache.sqlite``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "agent_cir" / "cache.sqlite"


class ModelCache:
    """A key -> JSON-dict store in one SQLite file, shared safely by threads and processes."""

    def __init__(self, path: str | Path | None = None, wait_seconds: float | None = None) -> None:
        """``wait_seconds`` bounds the total wait for another process's lock, per operation. Opening a cache
        another process keeps locked past it raises :class:`CacheBusyError` (before any model is called:
        nothing is lost); a ``put`` past it warns (:class:`CacheBusyWarning`) and leaves that one answer
        uncached, so a busy cache can slow a run by at most ``wait_seconds`` per write, never stop it."""
        self.path = Path(path).expanduser() if path else default_cache_path()
        self.wait_seconds = default_wait_seconds() if wait_seconds is None else max(0.0, float(wait_seconds))
        self.hits = 0
        self.misses = 0
        self.damaged = 0
        """Values found unreadable or of the wrong shape (counted as misses too)."""
        self._counter_lock = threading.Lock()
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(
                f"model cache folder {self.path.parent} cannot be created ({err}); set cache.path in the recipe "
                f"or ${CACHE_ENV} to a writable file, or disable the cache (cache: {{enabled: false}})"
            ) from err
        self._connection()  # fail early, with a clear message, if the file is unusable

    @classmethod
    def from_config(cls, config: Any) -> ModelCache | None:
        """A cache from a recipe's ``cache:`` block (``agent_cir.config.CacheConfig``); None when disabled."""
        if config is None or not getattr(config, "enabled", True):
            return None
        return cls(getattr(config, "path", None))

    @staticmethod
    def make_key(**parts: Any) -> str:
        """A stable hash of the named parts (dict order and float formatting independent of call site)."""
        return stable_hash(parts)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            deadline = time.monotonic() + self.wait_seconds  # one budget for the whole opening
            conn = sqlite3.connect(str(self.path), timeout=self.wait_seconds, isolation_level=None)
            self._retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"), deadline, conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._retry_locked(lambda: conn.execute(_SCHEMA), deadline, conn)
        except CacheBusyError:
            raise
        except sqlite3.Error as err:
            raise CacheError(
                f"model cache {self.path} cannot be opened ({err}); delete the file if it is corrupt, "
                f"or point cache.path / ${CACHE_ENV} elsewhere"
            ) from err
        self._local.conn = conn
        return conn

    def _busy_error(self, waited: float) -> CacheBusyError:
        return CacheBusyError(
            f"model cache {self.path} is locked by another process (an agent-cir run or a tool holding a write "
            f"transaction on it); waited {waited:.1f} s. Wait for that process to finish, point cache.path / "
            f"${CACHE_ENV} at another file, or run without the cache (cache: {{enabled: false}})"
        )

    def _retry_locked(self, action: Any, deadline: float | None = None, conn: sqlite3.Connection | None = None) -> Any:
        # Locked/busy errors are retried until one total deadline, whatever SQLite's own busy handler did:
        # the busy timeout of each try is cut to the time left, so waits never add up past wait_seconds.
        started = time.monotonic()
        deadline = started + self.wait_seconds if deadline is None else deadline
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if conn is not None:
                conn.execute(f"PRAGMA busy_timeout={max(0, int(left * 1000))}")
            try:
                return action()
            except sqlite3.OperationalError as err:
                transient = "locked" in str(err) or "busy" in str(err)
                if not transient:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy_error(time.monotonic() - started) from err
                time.sleep(min(left, 0.05 * (attempt + 1)))
                attempt += 1

    def lookup(
        self, key: str, validate: Callable[[dict[str, Any]], bool] | None = None
    ) -> tuple[dict[str, Any] | None, str]:
        """(value, "hit") or (None, "miss" | "damaged"). A value that is not a JSON object, or that
        ``validate`` rejects, is damaged: counted, and a miss for the caller (whose put replaces it)."""
        try:
            row = self._connection().execute("SELECT value FROM model_cache WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as err:
            raise CacheError(
                f"model cache {self.path} cannot be read ({err}); delete the file if it is corrupt, "
                f"or point cache.path / ${CACHE_ENV} elsewhere"
            ) from err
        value: Any = None
        status = "miss"
        if row is not None:
            try:
                value = json.loads(row[0]) if isinstance(row[0], (str, bytes)) else None
            except (ValueError, RecursionError):
                value = None
            ok = isinstance(value, dict)
            if ok and validate is not None:
                try:
                    ok = bool(validate(value))
                except Exception:  # noqa: BLE001 - a shape check that trips over the value: damaged
                    ok = False
            status = "hit" if ok else "damaged"
        with self._counter_lock:
            if status == "hit":
                self.hits += 1
            else:
                self.misses += 1
                if status == "damaged":
                    self.damaged += 1
        return (value, status) if status == "hit" else (None, status)

    def get(self, key: str, validate: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The stored value, or None (absent or damaged); counts a hit or a miss."""
        return self.lookup(key, validate)[0]

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store (or replace) a value. Safe when another process writes the same key at the same time."""
        payload = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
        conn = self._connection()
        try:
            self._retry_locked(
                lambda: conn.execute(
                    "INSERT INTO model_cache (key, value, created) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, created = excluded.created",
                    (key, payload, time.time()),
                ),
                conn=conn,
            )
        except CacheBusyError as err:
            # The answer itself is not lost (the caller has it); only its cache entry is skipped.
            warnings.warn(f"{err} -- this answer was not cached", CacheBusyWarning, stacklevel=2)

    def __contains__(self, key: str) -> bool:
        return self._connection().execute("SELECT 1 FROM model_cache WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM model_cache").fetchone()[0])

    @property
    def stats(self) -> dict[str, int]:
        with self._counter_lock:
            return {"hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when the threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for process pools: a child opens its own connections to the same file.
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ModelCache({str(self.path)!r})"
