"""`Instances`: this process's instance id and heartbeat, and which instances on the ledger are live.

Every gateway process gets a fresh instance id at start; it is recorded on the events it writes
(`Request.Admitted.instance`). A heartbeat row (`LedgerStore.beat`) is refreshed every `HEARTBEAT_S`;
an instance whose last beat is older than `EXPIRY_S` is gone (killed, or its machine lost): its open
requests are recovered by a survivor and its row dropped. A clean stop drops its own row at once.
Store calls go through the Journal's limiter (one thread at a time on the store).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import attrs
import trio

from events.store import Instance, LedgerStore

HEARTBEAT_S = 1.0
EXPIRY_S = 5.0
"""An instance silent this long is gone (a few heartbeats: a busy process still beats in time)."""


class Instances:
    def __init__(self, store: LedgerStore, me: Instance, limiter: trio.CapacityLimiter) -> None:
        self._store = store
        self.me = me
        self._limiter = limiter
        self.live_count = 1
        """Live instances at the last heartbeat (this one included): rate limits are split by it."""
        self.beats = 0
        """Heartbeats so far (the one at start not counted): `next_beat` compares it."""
        self.beaten = trio.Event()
        """Set after each heartbeat (then replaced)."""

    @property
    def instance(self) -> str:
        return self.me.instance

    async def _call(self, fn: Callable[[], object]) -> object:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def beat(self, now: datetime) -> None:
        self.me = attrs.evolve(self.me, beat_at=now)
        await self._call(partial(self._store.beat, self.me))

    async def all(self) -> list[Instance]:
        found = await self._call(self._store.instances)
        assert isinstance(found, list)
        return found

    def _alive(self, row: Instance, now: datetime) -> bool:
        """Beat within the expiry, and, on this machine, its process still exists (a process that
        was killed on this host is known gone at once, without waiting for the expiry)."""
        if row.instance == self.instance:
            return True
        if row.beat_at < now - timedelta(seconds=EXPIRY_S):
            return False
        return row.host != self.me.host or _pid_exists(row.pid)

    async def next_beat(self, after: int) -> int:
        """Wait for a heartbeat after the `after`-th and return the count — at once if one came while
        the caller was busy (waiting on `beaten` then would miss it; the orphan recovery runs on this)."""
        while self.beats <= after:
            await self.beaten.wait()
        return self.beats

    async def live_rows(self, now: datetime) -> list[Instance]:
        return [row for row in await self.all() if self._alive(row, now)]

    async def live(self, now: datetime) -> set[str]:
        return {row.instance for row in await self.live_rows(now)}

    async def dead_here(self) -> set[str]:
        """Instances whose heartbeat row names this host and a process that no longer exists: known
        dead at once (their budget leases need not wait for `expires_at`)."""
        return {
            row.instance
            for row in await self.all()
            if row.instance != self.instance and row.host == self.me.host and not _pid_exists(row.pid)
        }

    async def forget_gone(self, now: datetime) -> None:
        """Drop the rows of instances gone for good (their requests were recovered just before)."""
        gone = [row.instance for row in await self.all() if not self._alive(row, now)]
        if gone:
            await self._call(partial(self._store.forget, gone))

    async def stop(self) -> None:
        await self._call(partial(self._store.forget, [self.instance]))

    async def run(
        self, clock: Callable[[], datetime], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.beat(clock())
        self.live_count = max(1, len(await self.live_rows(clock())))
        task_status.started()
        while True:
            await trio.sleep(HEARTBEAT_S)  # the heartbeat's period, not synchronization
            await self.beat(clock())
            self.live_count = max(1, len(await self.live_rows(clock())))
            self.beats += 1
            self.beaten.set()
            self.beaten = trio.Event()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
