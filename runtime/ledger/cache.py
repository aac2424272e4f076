"""The response cache's store: a side table in the ledger's database, so every process on it shares it.

    response_cache(key, tenant_id, body, size, expires_at, used_at)

`CacheStore` is synchronous and speaks plain parameterized INSERT/SELECT/UPDATE/DELETE (no SQLite
dialect), so another backend can run the same statements. It never answers an entry to a tenant
other than the one that wrote it (the key already holds the tenant id, `policies.cache.cache_key`;
the stored `tenant_id` is checked again). Times are wall-clock epoch seconds given by the caller
(`now`), so expiry holds across processes and tests pass virtual time. The total `size` of the
entries is bounded by `max_bytes`: a write evicts the expired entries, then the least recently used
(`used_at`, refreshed by every hit), until the new one fits; an entry larger than the bound is not
stored. `ResponseCache` is the trio door: each call runs in a worker thread under a limiter of one,
never on the loop. The cache holds answers only; what a hit cost and saved is in the ledger's events.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio

from events.store import MEMORY

T = TypeVar("T")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS response_cache ("
    " key TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, body BLOB NOT NULL, size INTEGER NOT NULL,"
    " expires_at REAL NOT NULL, used_at REAL NOT NULL)"
)


@attrs.frozen
class CacheStatistics:
    entries: int
    bytes: int
    max_bytes: int


class CacheStore:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        target = ":memory:" if path == MEMORY else path
        self._connection = sqlite3.connect(target, timeout=10, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._connection.execute(SCHEMA)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")  # autocommit connection: one explicit transaction per call
            try:
                result = work(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

    def get(self, key: str, tenant_id: str, now: float) -> bytes | None:
        """The body stored under `key` for `tenant_id`, unexpired at `now` (its use recorded), or None."""

        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT body, tenant_id, expires_at FROM response_cache WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            body, owner, expires_at = row
            if owner != tenant_id:
                return None  # cannot happen (the key holds the tenant id); never answer it anyway
            if expires_at <= now:
                connection.execute("DELETE FROM response_cache WHERE key = ?", (key,))
                return None
            connection.execute("UPDATE response_cache SET used_at = ? WHERE key = ?", (now, key))
            return bytes(body)

        return self._transaction(work)

    def put(self, key: str, tenant_id: str, body: bytes, now: float, ttl_s: float) -> bool:
        """Store `body` under `key` for `ttl_s` seconds from `now`, evicting to stay within `max_bytes`.
        False when it is larger than the bound (nothing stored, nothing evicted)."""
        size = len(body)
        if size > self.max_bytes:
            return False

        def work(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM response_cache WHERE key = ? OR expires_at <= ?", (key, now))
            used = connection.execute("SELECT COALESCE(SUM(size), 0) FROM response_cache").fetchone()[0]
            excess = used + size - self.max_bytes
            if excess > 0:
                victims: list[Any] = []
                for victim, victim_size in connection.execute(
                    "SELECT key, size FROM response_cache ORDER BY used_at, key"
                ):
                    victims.append((victim,))
                    excess -= victim_size
                    if excess <= 0:
                        break
                connection.executemany("DELETE FROM response_cache WHERE key = ?", victims)
            connection.execute(
                "INSERT INTO response_cache (key, tenant_id, body, size, expires_at, used_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, tenant_id, body, size, now + ttl_s, now),
            )
            return True

        return self._transaction(work)

    def statistics(self) -> CacheStatistics:
        with self._lock:
            entries, used = self._connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM response_cache"
            ).fetchone()
        return CacheStatistics(entries, used, self.max_bytes)

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class ResponseCache:
    """`CacheStore` behind trio: every call in a worker thread, one at a time."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    async def get(self, key: str, tenant_id: str, now: float) -> bytes | None:
        return await trio.to_thread.run_sync(self.store.get, key, tenant_id, now, limiter=self._limiter)

    async def put(self, key: str, tenant_id: str, body: bytes, now: float, ttl_s: float) -> bool:
        return await trio.to_thread.run_sync(self.store.put, key, tenant_id, body, now, ttl_s, limiter=self._limiter)
