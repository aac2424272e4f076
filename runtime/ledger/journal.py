"""The Journal: the ledger's only writer.

Callers hand it events; it commits whatever is waiting as one `save()` (group commit) in a worker
thread with a limiter of one, then tells each waiting caller and feeds the commit to `on_commit`.
An entry nobody waits on (an admission) may linger up to `linger_s` for company; the first entry
somebody waits on (a settlement) commits everything queued at once, so no client waits longer.
The queue is bounded: `submit` (used at admission) refuses with `Overloaded` when it is full, so new
requests get 503 while money events already accepted are never dropped; `commit` (used to settle)
waits for room instead.

Several processes may write one ledger. The Journal is also its process's door for what the others
append: `follow` looks for new positions every `poll_s` (SQLite has no notifications) and, on
PostgreSQL, as soon as another process's commit is announced (LISTEN/NOTIFY: it waits on the listen
connection's socket; when that connection fails it polls at the default `POLL_S` at least as often
and listens again every `RELISTEN_S`), and hands them to `on_commit` too, and a commit of ours hands over
first the others' events that landed before it. So `on_commit` sees the whole log, once, in order,
whoever wrote it; `followed` is how far it got.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from events.store import POLL_S, LedgerError, LedgerStore, Recorded, VersionConflict
from runtime.errors import GatewayError, Overloaded

log = logging.getLogger("tollgate.journal")
MAX_BATCH = 4096
LINGER_S = 0.02
COMMIT_DEADLINE_S = 30.0
RELISTEN_S = 1.0
"""How often a follower whose listen connection failed tries to open it again (polling meanwhile)."""


class LedgerUnavailable(GatewayError):
    pass


class WriteConflict(LedgerUnavailable):
    """The store refused the write as a conflict (`VersionConflict`: a unique aggregate version, or
    any integrity refusal the store reports the same way); nothing of it was written. `Aggregates`
    tells a real version race (re-read, decide again) from any other refusal (a 503 as before)."""


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
    followed: int
    """The last position handed to `on_commit` (ours and other processes')."""
    foreign_events: int
    """Events other processes wrote that this one folded."""
    follow_delay_p99_s: float | None
    """Of the last 1 000 foreign events: 99th percentile of (folded here − written there)."""
    listening: bool | None
    """Whether the follower is woken by the ledger's notifications now (None: the store has none, SQLite)."""
    listens: int
    """Listen connections opened (more than one: it failed and was reopened)."""
    woken: int
    """Times the follower was woken by another process's announced commit."""


class Journal:
    def __init__(
        self,
        store: LedgerStore,
        on_commit: Callable[[list[Recorded]], None],
        capacity: int = 8192,
        linger_s: float = LINGER_S,
        observe: Callable[[float, int], None] = lambda seconds, events: None,
        instance: str | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        """How often `follow` reads the log when nothing wakes it sooner."""
        self.instance = instance
        """This process's instance id, recorded on the events it writes (`Request.Admitted`)."""
        self.followed = -1
        """The last position handed to `on_commit`; -1 until set (by the gateway: where its Books
        were loaded) or, at `run`, the ledger's position."""
        self._order = trio.Lock()  # reading the log and handing it to on_commit, one at a time
        self._foreign = 0
        self._delays: deque[float] = deque(maxlen=1000)
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
        self._followed_event = trio.Event()
        self._listening: bool | None = None
        self._listens = 0
        self._woken = 0

    @property
    def full(self) -> bool:
        """Whether `submit` would refuse now (the queue is full: the writer is behind)."""
        stats = self._send.statistics()
        return stats.current_buffer_used >= stats.max_buffer_size

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
        if isinstance(entry.error, VersionConflict):
            raise WriteConflict("The ledger refused a conflicting write; retry.") from entry.error
        if entry.error is not None:
            raise LedgerUnavailable("The ledger could not record this request.") from entry.error
        return entry.recorded

    async def next_commit(self) -> None:
        """Wait until the Journal commits its next batch."""
        await self._committed_event.wait()

    async def next_follow(self) -> None:
        """Wait until `follow` has read the log once more."""
        await self._followed_event.wait()

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            queued=self._receive.statistics().current_buffer_used,
            capacity=self.capacity,
            committed_events=self._committed,
            commits=self._commits,
            largest_batch=self._largest,
            position=self.position,
            followed=self.followed,
            foreign_events=self._foreign,
            follow_delay_p99_s=_p99(self._delays),
            listening=self._listening,
            listens=self._listens,
            woken=self._woken,
        )

    def _foreign_before(self, position: int) -> list[Recorded]:
        """Other processes' events after `followed` and before `position` (worker thread)."""
        found: list[Recorded] = []
        after = self.followed
        while after < position - 1:
            page = [r for r in self.store.read(after, min(1000, position - 1 - after)) if r.position < position]
            if not page:
                break
            found.extend(page)
            after = page[-1].position
        return found

    def _hand_over(self, foreign: list[Recorded], ours: list[Recorded]) -> None:
        if foreign:
            now = datetime.now(UTC)
            self._foreign += len(foreign)
            self._delays.extend((now - r.event.timestamp).total_seconds() for r in foreign)
        recorded = [*foreign, *ours]
        if recorded:
            self.followed = max(self.followed, recorded[-1].position)
            self._on_commit(recorded)

    async def follow_once(self) -> int:
        """Hand over whatever other processes appended since `followed`; return how many events."""
        async with self._order:
            page = await trio.to_thread.run_sync(self.store.read, self.followed, 1000, limiter=self.limiter)
            self._hand_over(page, [])
        return len(page)

    async def follow(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fold other processes' events as they land, a page at a time: woken by the store's
        notifications where it has them (PostgreSQL), else (and meanwhile) every `poll_s`."""
        fd = await self._listen()
        relisten_at = trio.current_time() + RELISTEN_S
        task_status.started()
        try:
            while True:
                full = await self.follow_once() == 1000
                self._followed_event.set()
                self._followed_event = trio.Event()
                if full:
                    continue
                if fd is None and self._listening is False and trio.current_time() >= relisten_at:
                    fd = await self._listen()
                    relisten_at = trio.current_time() + RELISTEN_S
                    if fd is not None:
                        continue  # read what landed while nobody could tell us
                if fd is None:
                    # polling interval, not synchronization: SQLite cannot notify, and a PostgreSQL
                    # follower without its listen connection polls at least at the default rate
                    await trio.sleep(self.poll_s if self._listening is None else min(self.poll_s, POLL_S))
                    continue
                with trio.move_on_after(self.poll_s):  # the fallback poll, should a notification be lost
                    while True:  # until another process announces a commit (our own are not news)
                        await trio.lowlevel.wait_readable(fd)
                        try:
                            news = self.store.notified()
                        except LedgerError as error:
                            log.warning("%s; polling until it is reopened", error)
                            fd, self._listening = None, False
                            relisten_at = trio.current_time() + RELISTEN_S
                            break
                        if news:
                            self._woken += 1
                            break
        finally:
            self.store.unlisten()

    async def _listen(self) -> int | None:
        """Open the store's listen connection (its own connection: not under the store's limiter)."""
        if not self.store.postgres:
            return None
        fd = await trio.to_thread.run_sync(self.store.listen)
        self._listening = fd is not None
        self._listens += fd is not None
        return fd

    async def run(self, task_status: trio.TaskStatus[Journal] = trio.TASK_STATUS_IGNORED) -> None:
        self.position = await trio.to_thread.run_sync(self.store.position, limiter=self.limiter)
        if self.followed < 0:
            self.followed = self.position
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

    def _append(self, events: list[Any]) -> tuple[list[Recorded], list[Recorded]]:
        """Worker thread: write `events`; also read the other processes' events that came before."""
        recorded = self.store.append(events)
        return (self._foreign_before(recorded[0].position) if recorded else []), recorded

    async def _write(self, batch: list[Entry], events: list[Any]) -> None:
        began = trio.current_time()
        failure: Exception | None = None
        with trio.CancelScope(shield=True):
            async with self._order:
                try:
                    foreign, recorded = await trio.to_thread.run_sync(self._append, events, limiter=self.limiter)
                except Exception as error:  # the Journal outlives any write failure
                    failure = error
                else:
                    self._hand_over(foreign, recorded)
        if failure is not None:
            if len(batch) > 1:
                # One bad entry (say, a duplicate aggregate) must not fail the others: write them alone.
                for entry in batch:
                    await self._write([entry], list(entry.events))
                return
            if isinstance(failure, VersionConflict):
                log.info("ledger write refused as a conflict: %s", failure)  # a race of conditional appends
            else:
                log.error("ledger write failed: %s", failure)
            (entry,) = batch
            entry.error = (
                failure if isinstance(failure, LedgerError) else LedgerError(f"ledger write failed: {failure}")
            )
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
        for entry in batch:
            if entry.done is not None:
                entry.done.set()
        self._committed_event.set()
        self._committed_event = trio.Event()

    def close(self) -> None:
        self._send.close()


def _p99(values: deque[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
