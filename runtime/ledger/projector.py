"""The Projector keeps the read models (`events.projections`) up to date.

It catches up from the ledger at start, then folds what the Journal hands it after each commit, in
batches of at most `batch_s` (a reader that needs the latest folds — `query`, `wait_for` — makes
it fold at once). If
it falls behind (its inbox is full) it reads the missed events back from the ledger, so nothing is
ever skipped. Writes go through a worker thread with a limiter of one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from events.projections import Projections
from events.store import MEMORY, LedgerStore, Recorded, is_postgres

log = logging.getLogger("tollgate.projector")
T = TypeVar("T")
CATCH_UP_BATCH = 5000
BATCH_S = 0.05


def projections_path(ledger_path: str) -> str:
    """`var/ledger.sqlite3` → `var/ledger.projections.sqlite3` (`:memory:` stays in memory).

    A PostgreSQL ledger's projections are, for now, an in-memory SQLite database each process
    rebuilds from the log at start (they are a pure function of it); they are not yet stored in
    PostgreSQL itself."""
    if ledger_path == MEMORY or is_postgres(ledger_path):
        return MEMORY
    path = Path(ledger_path)
    return str(path.with_name(f"{path.stem}.projections{path.suffix or '.sqlite3'}"))


def catch_up(store: LedgerStore, projections: Projections, until: int | None = None) -> int:
    """Fold every event after the projections' position (up to `until`); return the new position."""
    position = projections.position
    end = store.position() if until is None else until
    while position < end:
        page = store.read(position, min(CATCH_UP_BATCH, end - position))
        if not page:
            break
        position = projections.apply(page)
    return position


class Projector:
    def __init__(
        self, store: LedgerStore, projections: Projections, inbox: int = 1024, batch_s: float = BATCH_S
    ) -> None:
        self.batch_s = batch_s
        self._flush = trio.Event()
        self.store = store
        self.projections = projections
        self._send, self._receive = trio.open_memory_channel[list[Recorded]](inbox)
        self._limiter = trio.CapacityLimiter(1)
        self.position = 0
        self._caught_up: trio.Event = trio.Event()
        self._wanted = 0

    def feed(self, recorded: list[Recorded]) -> None:
        """Called by the Journal after each commit; never blocks (a full inbox means catch up later)."""
        if recorded:
            self._wanted = recorded[-1].position
            try:
                self._send.send_nowait(recorded)
            except trio.WouldBlock:
                log.warning("projector inbox full; it will read the ledger to catch up")

    async def query(self, function: Callable[[Projections], T]) -> T:
        """Run a read against the projections, after they caught up with every commit so far."""
        await self.wait_for(self._wanted)
        return await trio.to_thread.run_sync(function, self.projections, limiter=self._limiter)

    async def wait_for(self, position: int) -> None:
        """Wait until the read models reflect the ledger up to `position` (for read-your-writes)."""
        while self.position < position:
            self._flush.set()
            event = self._caught_up
            await event.wait()

    async def run(self, task_status: trio.TaskStatus[Projector] = trio.TASK_STATUS_IGNORED) -> None:
        self.position = await trio.to_thread.run_sync(catch_up, self.store, self.projections, limiter=self._limiter)
        task_status.started(self)
        async for batch in self._receive:
            # Fold in batches: wait up to `batch_s` for more commits, unless a reader wants them now.
            with trio.move_on_after(self.batch_s):
                await self._flush.wait()
            while True:
                try:
                    batch.extend(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            # Events before the batch's first that are not projected yet (another process's, or
            # missed when the inbox was full) are read from the ledger by `apply`.
            self.position = await trio.to_thread.run_sync(
                self.projections.apply, batch, self.store.read, limiter=self._limiter
            )
            self._caught_up.set()
            self._caught_up = trio.Event()
            self._flush = trio.Event()
