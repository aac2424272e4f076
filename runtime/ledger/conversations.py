"""`Conversations`: stored Responses API turns, per tenant, in a side table of the ledger's database.

Storing a conversation is not money, so it is not an event: one row per stored response, holding
the response object as answered and the chat history that continues from it (what a later
`previous_response_id` replays). Rows belong to one tenant; every read and delete names the tenant,
so another tenant's id is simply not found. A row expires `retention_s` after it was written:
reads ignore it at once and `expire` deletes it. The SQL is plain parameterised
INSERT/SELECT/DELETE, portable to other backends. Its own connection and its own one-thread door
(`trio.to_thread.run_sync` with a limiter of one): the Journal's transactions are never shared.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

import attrs
import trio

TABLE = "tollgate_responses"
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT NOT NULL, tenant TEXT NOT NULL, created_at REAL NOT NULL,"
    " expires_at REAL NOT NULL, body TEXT NOT NULL, PRIMARY KEY (tenant, id))"
)


@attrs.frozen
class StoredTurn:
    """A stored response: the object as answered, and the chat messages a continuation replays."""

    response: dict[str, Any]
    history: list[dict[str, Any]]


class Conversations:
    def __init__(self, path: str, retention_s: float) -> None:
        self.retention_s = retention_s
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()
        self.limiter = trio.CapacityLimiter(1)

    async def _run(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        def run() -> list[Any]:
            with self._lock:
                return self._db.execute(sql, params).fetchall()

        return await trio.to_thread.run_sync(run, limiter=self.limiter)

    async def put(self, tenant: str, response_id: str, turn: StoredTurn, now: float) -> None:
        body = json.dumps({"response": turn.response, "history": turn.history}, separators=(",", ":"))
        await self._run(
            f"INSERT INTO {TABLE} (id, tenant, created_at, expires_at, body) VALUES (?, ?, ?, ?, ?)",
            (response_id, tenant, now, now + self.retention_s, body),
        )

    async def get(self, tenant: str, response_id: str, now: float) -> StoredTurn | None:
        rows = await self._run(
            f"SELECT body FROM {TABLE} WHERE tenant = ? AND id = ? AND expires_at > ?", (tenant, response_id, now)
        )
        if not rows:
            return None
        data = json.loads(rows[0][0])
        return StoredTurn(data["response"], data["history"])

    async def delete(self, tenant: str, response_id: str, now: float) -> bool:
        """True when this tenant had that (unexpired) response; it is gone either way after."""
        found = await self.get(tenant, response_id, now)
        await self._run(f"DELETE FROM {TABLE} WHERE tenant = ? AND id = ?", (tenant, response_id))
        return found is not None

    async def expire(self, now: float) -> None:
        await self._run(f"DELETE FROM {TABLE} WHERE expires_at <= ?", (now,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
