"""The ledger's store: the only module that speaks eventsourcing's persistence API.

`LedgerStore` appends aggregates' pending events (or bare events) in one transaction and reads the
notification log back in order. It is synchronous on purpose: the runtime calls it only from the
Journal and the Projector, through `trio.to_thread.run_sync` with a limiter of one.

It is also the one module that imports eventsourcing: the aggregates take their base class,
`Aggregate`, from here, so the dependency has a single door.

`path` is a SQLite file (created with its directory when missing) or `":memory:"` for an in-memory
store (eventsourcing's POPO recorder: tests and the bench's comparison run).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import attrs
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import RecordConflictError, StoredEvent
from eventsourcing.utils import resolve_topic

__all__ = [
    "MEMORY",
    "Aggregate",
    "Instance",
    "LedgerError",
    "LedgerStore",
    "Raw",
    "Recorded",
    "VersionConflict",
    "topic_of",
]

MEMORY = ":memory:"
SQLITE_MAGIC = b"SQLite format 3\x00"
LOCK_TIMEOUT_S = 30.0
POLL_S = 0.05
"""How often a process looks for events other processes appended (SQLite has no notifications)."""
A = TypeVar("A", bound=Aggregate)


class LedgerError(Exception):
    """The ledger cannot be opened or used; the message says what to do."""


class VersionConflict(LedgerError):
    """Another writer appended to the aggregate at the version this append expected: nothing of
    this append was written; re-read the aggregate and decide again."""


@attrs.frozen
class Recorded:
    """A committed event and its position in the ledger (its notification id, from 1)."""

    position: int
    event: Any


@attrs.frozen
class Raw:
    """Some fields of an event as plain values, for whole-log scans that would spend most of their
    time building event objects. `originator_id` is the aggregate id's hex string."""

    position: int
    originator_id: str
    version: int
    topic: str
    state: dict[str, Any]


@attrs.frozen
class Instance:
    """A gateway process's heartbeat row: who it is and when it last said it was alive."""

    instance: str
    pid: int
    host: str
    started_at: datetime
    beat_at: datetime


def topic_of(kind: type) -> str:
    """The topic an event class is stored under (`module:qualname`)."""
    return f"{kind.__module__}:{kind.__qualname__}"


class _Tollgate(Application[uuid.UUID]):
    name = "Tollgate"


def _check_file(path: Path) -> None:
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LedgerError(f"cannot create the ledger's directory {path.parent}: {error.strerror}") from None
        return
    if path.is_dir():
        raise LedgerError(f"ledger path {path} is a directory; [ledger].path must name a file")
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_MAGIC))
    except OSError as error:
        raise LedgerError(f"cannot read the ledger {path}: {error.strerror}") from None
    if head and head != SQLITE_MAGIC:
        raise LedgerError(f"ledger {path} is not a SQLite database (corrupt, or the wrong file?)")


class LedgerStore:
    def __init__(self, path: str) -> None:
        self.path = path
        if path == MEMORY:
            env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        else:
            _check_file(Path(path))
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(path),
                "SQLITE_LOCK_TIMEOUT": str(int(LOCK_TIMEOUT_S)),  # several processes write one file
            }
        self._instances: dict[str, Instance] = {}
        self._heartbeats: sqlite3.Connection | None = None
        try:
            self._app = _Tollgate(env=env)
            self._app.recorder.max_notification_id()
            if path != MEMORY:
                self._heartbeats = sqlite3.connect(
                    path, check_same_thread=False, timeout=LOCK_TIMEOUT_S, isolation_level=None
                )
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"ledger {path} cannot be opened: {error}") from None

    def append(self, items: Sequence[Aggregate | DomainEventProtocol[uuid.UUID]]) -> list[Recorded]:
        """Commit the pending events of `items` in one transaction; return them with positions."""
        try:
            recordings = self._app.save(*items)
        except RecordConflictError as error:
            raise VersionConflict(f"ledger {self.path}: an aggregate moved on meanwhile: {error}") from error
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"ledger {self.path}: write failed: {error}") from error
        return [Recorded(r.notification.id, r.domain_event) for r in recordings]

    def read(self, after: int = 0, limit: int = 1000) -> list[Recorded]:
        """Events after position `after`, oldest first, at most `limit`."""
        notifications = self._app.recorder.select_notifications(start=after + 1, limit=limit)
        to_event = self._app.mapper.to_domain_event
        return [Recorded(n.id, to_event(n)) for n in notifications]

    def read_all(self, after: int = 0, batch: int = 5000) -> Iterable[Recorded]:
        while True:
            page = self.read(after, batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].position

    def scan(
        self,
        topics: Collection[str],
        fields: Mapping[str, type],
        after: int = 0,
        until: int | None = None,
        batch: int = 20_000,
    ) -> Iterator[list[Raw]]:
        """Pages of the events stored under `topics` with positions in (after, until], oldest first,
        each with the named `fields` (name → str, int, bool, Decimal or datetime; absent → None).

        On SQLite this reads through its own read-only connection (never the writer's) and has
        SQLite extract the fields, without building event objects: the fast path for re-pricing.
        A row stored by an older `class_version` than its class's (and one SQLite's JSON functions
        cannot read) comes back whole and goes through the mapper, so the same upcasters apply as
        on every other read path. The in-memory store goes through the mapper (the caller holds
        the store's door)."""
        end = self.position() if until is None else until
        if self.path == MEMORY:
            yield from self._scan_mapped(set(topics), fields, after, end, batch)
            return
        names = list(fields)
        kinds = [fields[name] for name in names]
        columns = ", ".join(
            f"json_extract(state, '$.{name}{'._data_' if kind in (Decimal, datetime) else ''}')"
            for name, kind in fields.items()
        )
        # Rows that come back whole, for the mapper: those stored by an older class version (to be
        # upcast), and those with an escaped NUL (SQLite's JSON functions cut strings there).
        versions = {topic: getattr(resolve_topic(topic), "class_version", 1) for topic in topics}
        current = " ".join("when ? then ?" for _ in versions)
        query = (
            "select rowid, originator_id, originator_version, topic,"
            " case when instr(state, '\\u0000') > 0"
            f" or coalesce(json_extract(state, '$.class_version'), 1) < (case topic {current} else 1 end)"
            f" then state end, {columns} from stored_events"
            f" where rowid > ? and rowid <= ? and topic in ({', '.join('?' * len(versions))}) order by rowid limit ?"
        )
        by_version = [value for pair in versions.items() for value in pair]
        to_event = self._app.mapper.to_domain_event
        decode: list[Any] = [
            Decimal if kind is Decimal else datetime.fromisoformat if kind is datetime else None for kind in kinds
        ]
        wrapped = [i for i, d in enumerate(decode) if d is not None]
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            while after < end:
                rows = connection.execute(query, (*by_version, after, end, *versions, batch)).fetchall()
                if not rows:
                    return
                page = []
                for position, originator, version, topic, whole, *values in rows:
                    if whole is not None:
                        event = to_event(StoredEvent(uuid.UUID(originator), version, topic, whole))
                        values = [getattr(event, name, None) for name in names]
                    else:
                        for i in wrapped:
                            if values[i] is not None:
                                values[i] = decode[i](values[i])
                    page.append(Raw(position, originator, version, topic, dict(zip(names, values, strict=True))))
                yield page
                after = rows[-1][0]
        finally:
            connection.close()

    def _scan_mapped(
        self, topics: set[str], fields: Mapping[str, type], after: int, end: int, batch: int
    ) -> Iterator[list[Raw]]:
        while after < end:
            page = self.read(after, min(batch, end - after))
            if not page:
                return
            found = []
            for record in page:
                event = record.event
                topic = topic_of(type(event))
                if topic in topics:
                    state = {name: getattr(event, name, None) for name in fields}
                    found.append(Raw(record.position, event.originator_id.hex, event.originator_version, topic, state))
            if found:
                yield found
            after = page[-1].position

    def position(self) -> int:
        return self._app.recorder.max_notification_id() or 0

    def get(self, aggregate_id: uuid.UUID, kind: type[A]) -> A | None:
        try:
            found: Any = self._app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        if not isinstance(found, kind):
            raise LedgerError(f"aggregate {aggregate_id} is a {type(found).__name__}, not a {kind.__name__}")
        return found

    # --- instances: one heartbeat row per live gateway process (not events: they would flood the log)
    def beat(self, instance: Instance) -> None:
        """Record (or refresh) `instance`'s heartbeat."""
        if self._heartbeats is None:
            self._instances[instance.instance] = instance
            return
        self._heartbeats.execute(  # made by the first heartbeat: readers (replay --verify) write nothing
            "create table if not exists tollgate_instances (instance text primary key, pid integer,"
            " host text, started_at text, beat_at text)"
        )
        self._heartbeats.execute(
            "insert or replace into tollgate_instances (instance, pid, host, started_at, beat_at)"
            " values (?, ?, ?, ?, ?)",
            (
                instance.instance,
                instance.pid,
                instance.host,
                instance.started_at.isoformat(),
                instance.beat_at.isoformat(),
            ),
        )

    def instances(self) -> list[Instance]:
        """Every heartbeat row, oldest start first (live or not: the caller judges by `beat_at`)."""
        if self._heartbeats is None:
            rows = list(self._instances.values())
        elif not self._heartbeats.execute("select 1 from sqlite_master where name = 'tollgate_instances'").fetchone():
            rows = []
        else:
            rows = [
                Instance(i, pid, host, datetime.fromisoformat(started), datetime.fromisoformat(beat))
                for i, pid, host, started, beat in self._heartbeats.execute(
                    "select instance, pid, host, started_at, beat_at from tollgate_instances"
                )
            ]
        return sorted(rows, key=lambda row: (row.started_at, row.instance))

    def forget(self, instances: Collection[str]) -> None:
        """Drop the heartbeat rows of `instances` (stopped, or gone and recovered)."""
        if self._heartbeats is None:
            for instance in instances:
                self._instances.pop(instance, None)
            return
        if not self.instances():
            return
        self._heartbeats.executemany("delete from tollgate_instances where instance = ?", [(i,) for i in instances])

    def close(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.close()
        self._app.close()
