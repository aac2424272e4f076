"""`Aggregates`: the one door for changing a `Tenant` or the `PriceList`.

`change(id, kind, fn)` takes the aggregate's lock (one change at a time per aggregate), applies `fn`
to a copy of its committed state (or to None when it does not exist yet), commits the new events
through the Journal and only then keeps the copy as the committed state. A failed commit leaves no
trace in memory: the cached state is dropped and read again from the store on next use, so the next
change starts from what the ledger holds (no version gap) and a refusal raised by `fn` changes nothing.
Every append is conditional on the version `fn` saw: when another process appended to the aggregate
meanwhile (`WriteConflict`, nothing written, and the store now holds that version), the change reads
it again and applies `fn` to that,
up to `RETRIES` times — so `fn` decides on the latest state, whatever the interleaving (a budget lease).
`get` reads the committed state (callers must not change it).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import trio

from events.store import Aggregate, LedgerStore, Recorded
from runtime.ledger.journal import Journal, WriteConflict

A = TypeVar("A", bound=Aggregate)
RETRIES = 16


class Aggregates:
    def __init__(self, store: LedgerStore, journal: Journal) -> None:
        self._store = store
        self._journal = journal
        self._committed: dict[uuid.UUID, Aggregate] = {}
        self._locks: dict[uuid.UUID, trio.Lock] = {}

    @property
    def journal_full(self) -> bool:
        """The Journal's queue is full: a change now would wait for the writer (admission must not)."""
        return self._journal.full

    def committed(self, aggregates: Iterable[Aggregate]) -> None:
        """Keep aggregates whose events are all committed (the start-up reconciliation commits them itself)."""
        for aggregate in aggregates:
            assert not aggregate.pending_events, "only committed state is kept"
            self._committed[aggregate.id] = aggregate

    def observed(self, recorded: Iterable[Recorded]) -> None:
        """Forget kept states that committed events (another process's) have moved past: the next
        change reads the aggregate again instead of failing on a version another process took."""
        for record in recorded:
            kept = self._committed.get(record.event.originator_id)
            if kept is not None and kept.version < record.event.originator_version:
                del self._committed[record.event.originator_id]

    async def get(self, aggregate_id: uuid.UUID, kind: type[A]) -> A | None:
        """The committed state, read from the store on first use; None if there is no such aggregate."""
        found = self._committed.get(aggregate_id)
        if found is None:
            # Through the Journal's door: one thread at a time on the store.
            found = await trio.to_thread.run_sync(self._store.get, aggregate_id, kind, limiter=self._journal.limiter)
            if found is None:
                return None
            found = self._committed.setdefault(aggregate_id, found)  # a change committed meanwhile wins
        assert isinstance(found, kind)
        return found

    async def _moved(self, aggregate_id: uuid.UUID, kind: type[A], first: Any) -> bool:
        """Whether the store now holds the version `first` tried to take (another writer took it)."""
        stored = await self.get(aggregate_id, kind)
        return stored is not None and stored.version >= first.originator_version

    async def change(self, aggregate_id: uuid.UUID, kind: type[A], fn: Callable[[A | None], A]) -> A:
        """Apply `fn` to a copy of the committed state (None: none yet) and commit what it triggered.
        Returns the committed result. Whatever `fn` or the commit raises propagates, with nothing kept."""
        lock = self._locks.setdefault(aggregate_id, trio.Lock())
        async with lock:
            try:
                for attempt in range(RETRIES + 1):
                    current = await self.get(aggregate_id, kind)
                    changed = fn(copy.deepcopy(current))
                    assert changed.id == aggregate_id
                    events = changed.collect_events()
                    if events:
                        try:
                            await self._journal.commit(events)
                        except WriteConflict:
                            self._committed.pop(aggregate_id, None)  # read it again: the store says what holds
                            if attempt == RETRIES or not await self._moved(aggregate_id, kind, events[0]):
                                raise  # not a version race (or too many): the write failed, as any other
                            continue
                        except BaseException:
                            self._committed.pop(aggregate_id, None)  # read it again: the store says what holds
                            raise
                    self._committed[aggregate_id] = changed
                    return changed
                raise AssertionError("unreachable: the last attempt returns or raises")
            finally:
                if not lock.statistics().tasks_waiting:
                    del self._locks[aggregate_id]  # released right after, with no checkpoint between
