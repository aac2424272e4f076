"""The Journal: the ledger's only writer.

Callers hand it events; it commits whatever is waiting as one `save()` (group commit) in a worker
thread with a limiter of one, then tells each waiting caller and feeds the commit to `on_commit`.
An entry nobody waits on (an admission) may linger up to `linger_s` for company; the first entry
somebody waits on (a settlement) commits everything queued at once, so no client waits longer.
The queue is bounded: `submit` (used at admission) refuses with `Overloaded` when it is full, so new
requests get 503 while money events already accepted are never dropped; `commit` (used to settle)
waits for room instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from events.store import LedgerError, LedgerStore, Recorded
from runtime.errors import GatewayError, Overloaded

log = logging.getLogger("tollgate.journal")
MAX_BATCH = 4096
LINGER_S = 0.02
COMMIT_DEADLINE_S = 30.0


class LedgerUnavailable(GatewayError):
    pass


@attrs.define
class Entry:
    events: Sequence[Any]
    done: trio.Event | None = None
    recorded: list[Recorded] = attrs.field(factory=list)
    error: BaseException | None = None


@attrs.frozen
class JournalStatistics:
    queued: int
    capacity: int
    committed_events: int
    commits: int
    largest_batch: int
    position: int


class Journal:
    def __init__(
        self,
        store: LedgerStore,
        on_commit: Callable[[list[Recorded]], None],
        capacity: int = 8192,
        linger_s: float = LINGER_S,
        observe: Callable[[float, int], None] = lambda seconds, events: None,
    ) -> None:
        self.store = store
        self._observe = observe  # each batch written: its duration and size (the gateway's metrics)
        self.linger_s = linger_s
        self.capacity = capacity
        self._on_commit = on_commit
        self._send, self._receive = trio.open_memory_channel[Entry](capacity)
        self.limiter = trio.CapacityLimiter(1)
        self._committed = 0
        self._commits = 0
        self._largest = 0
        self.position = 0
        self._committed_event = trio.Event()

    def submit(self, events: Sequence[Any]) -> None:
        """Queue events without waiting for them (admission). Raises `Overloaded` when full."""
        if not events:
            return
        try:
            self._send.send_nowait(Entry(events))
        except trio.WouldBlock:
            raise Overloaded("The gateway's ledger is busy; retry shortly.", retry_after=1.0) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise LedgerUnavailable("The ledger is not running.") from None

    async def commit(self, events: Sequence[Any]) -> list[Recorded]:
        """Queue events and wait until they are durable. Shielded: a request cancelled by its
        client still gets its terminal events recorded (within `COMMIT_DEADLINE_S`)."""
        entry = Entry(events, trio.Event())
        with trio.CancelScope(shield=True):
            with trio.move_on_after(COMMIT_DEADLINE_S) as deadline:
                try:
                    await self._send.send(entry)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise LedgerUnavailable("The ledger is not running.") from None
                assert entry.done is not None
                await entry.done.wait()
            if deadline.cancelled_caught:
                raise LedgerUnavailable("The ledger did not confirm the write in time.")
        if entry.error is not None:
            raise LedgerUnavailable("The ledger could not record this request.") from entry.error
        return entry.recorded

    async def next_commit(self) -> None:
        """Wait until the Journal commits its next batch."""
        await self._committed_event.wait()

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            queued=self._receive.statistics().current_buffer_used,
            capacity=self.capacity,
            committed_events=self._committed,
            commits=self._commits,
            largest_batch=self._largest,
            position=self.position,
        )

    async def run(self, task_status: trio.TaskStatus[Journal] = trio.TASK_STATUS_IGNORED) -> None:
        self.position = await trio.to_thread.run_sync(self.store.position, limiter=self.limiter)
        task_status.started(self)
        async for first in self._receive:
            batch = [first]
            events = list(first.events)
            urgent = first.done is not None
            if not urgent:
                # Nobody waits on this entry (an admission): linger briefly for one somebody waits
                # on, so a short request's Admitted and Completed share one transaction.
                with trio.move_on_after(self.linger_s):
                    while not urgent and len(events) < MAX_BATCH:
                        entry = await self._receive.receive()
                        batch.append(entry)
                        events.extend(entry.events)
                        urgent = entry.done is not None
            while len(events) < MAX_BATCH:
                try:
                    entry = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(entry)
                events.extend(entry.events)
            await self._write(batch, events)

    async def _write(self, batch: list[Entry], events: list[Any]) -> None:
        began = trio.current_time()
        try:
            with trio.CancelScope(shield=True):
                recorded = await trio.to_thread.run_sync(self.store.append, events, limiter=self.limiter)
        except Exception as error:  # the Journal outlives any write failure
            if len(batch) > 1:
                # One bad entry (say, a duplicate aggregate) must not fail the others: write them alone.
                for entry in batch:
                    await self._write([entry], list(entry.events))
                return
            log.error("ledger write failed: %s", error)
            (entry,) = batch
            entry.error = error if isinstance(error, LedgerError) else LedgerError(f"ledger write failed: {error}")
            if entry.done is not None:
                entry.done.set()
            return
        self._observe(trio.current_time() - began, len(recorded))
        self._commits += 1
        self._committed += len(recorded)
        self._largest = max(self._largest, len(recorded))
        if recorded:
            self.position = recorded[-1].position
        start = 0
        for entry in batch:
            entry.recorded = recorded[start : start + len(entry.events)]
            start += len(entry.events)
        self._on_commit(recorded)
        for entry in batch:
            if entry.done is not None:
                entry.done.set()
        self._committed_event.set()
        self._committed_event = trio.Event()

    def close(self) -> None:
        self._send.close()
