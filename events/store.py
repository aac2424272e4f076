"""The ledger's store: the only module that speaks eventsourcing's persistence API.

`LedgerStore` appends aggregates' pending events (or bare events) in one transaction and reads the
notification log back in order. It is synchronous on purpose: the runtime calls it only from the
Journal and the Projector, through `trio.to_thread.run_sync` with a limiter of one.

It is also the one module that imports eventsourcing: the aggregates take their base class,
`Aggregate`, from here, so the dependency has a single door.

`path` is a SQLite file (created with its directory when missing), `":memory:"` for an in-memory
store (eventsourcing's POPO recorder: tests and the bench's comparison run), or a
`postgresql://USER@HOST:PORT/DB` URL (eventsourcing's PostgreSQL recorder: psycopg 3 and its pool,
the `tollgate[postgres]` extra; the password comes separately, never in the URL).

Positions on PostgreSQL: notification ids come from a sequence, and sequences can commit out of
order across concurrent transactions. eventsourcing takes `LOCK TABLE ... IN EXCLUSIVE MODE` in
every inserting transaction (postgres.py, `_insert_events`), so inserts are serialised and a reader
never sees id n+1 committed before n. A rolled-back insert can leave a gap (a sequence value is
never reused): readers page by "ids after the last one seen", never by counting, so gaps are harmless.

Connections on PostgreSQL: the store is used one thread at a time (the Journal's limiter), so its pool
keeps one connection (`POOL_SIZE`; a concurrent user waits for it); one more, direct and in
autocommit, holds the heartbeat rows and announces each commit (`NOTIFY tollgate_log`); a follower
opens a third with `listen`. The heartbeat connection is replaced once when the server dropped it.
The tables are made once, by the first store to open an empty database, under an advisory lock (two
processes starting at once on a new database would otherwise race on `create table if not exists`);
a store opening a database that has them runs no DDL, which would take a share lock on the events
table and so wait for, and hold up, every writer's insert.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import attrs
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import PersistenceError, RecordConflictError, StoredEvent
from eventsourcing.utils import resolve_topic

__all__ = [
    "MEMORY",
    "Aggregate",
    "Instance",
    "LedgerError",
    "LedgerStore",
    "Raw",
    "Recorded",
    "Stored",
    "VersionConflict",
    "is_postgres",
    "redact",
    "topic_of",
]

MEMORY = ":memory:"
SQLITE_MAGIC = b"SQLite format 3\x00"
LOCK_TIMEOUT_S = 30.0
POLL_S = 0.05
"""How often a process looks for events other processes appended, by default (SQLite has no
notifications; on PostgreSQL the follower is woken by `NOTIFY` and polls as well, as the fallback)."""
CHANNEL = "tollgate_log"
"""The PostgreSQL notification channel a commit is announced on (the payload: the announcing store's token)."""
POOL_SIZE = 1
SCHEMA_LOCK = 0x7467_6C64  # the advisory lock key held while a store makes the tables of an empty database
EVENTS_TABLE = "tollgate_events"
INSTANCES_TABLE = (
    "create table if not exists tollgate_instances (instance text primary key, pid integer,"
    " host text, started_at text, beat_at text)"
)
A = TypeVar("A", bound=Aggregate)
log = logging.getLogger("tollgate.ledger")


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


@attrs.frozen
class Stored:
    """An event exactly as stored (for `tollgate ledger copy`): position, aggregate, version, topic, state."""

    position: int
    originator_id: uuid.UUID
    version: int
    topic: str
    state: bytes


def is_postgres(path: str) -> bool:
    return path.startswith(("postgresql://", "postgres://"))


def redact(path: str) -> str:
    """The ledger's location for messages (a PostgreSQL URL without any password in it)."""
    if not is_postgres(path):
        return path
    parts = urlsplit(path)
    host = parts.hostname or ""
    return f"postgresql://{parts.username or ''}@{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _postgres_env(url: str, password: str) -> dict[str, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise LedgerError(f"ledger URL {redact(url)}: {error}") from None
    database = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not parts.username or not database or "/" in database:
        raise LedgerError(f"ledger URL {redact(url)}: expected postgresql://USER@HOST:PORT/DATABASE")
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": database,
        "POSTGRES_HOST": parts.hostname,
        "POSTGRES_PORT": str(port or 5432),
        "POSTGRES_USER": unquote(parts.username),
        "POSTGRES_PASSWORD": password,
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_POOL_SIZE": str(POOL_SIZE),
        "POSTGRES_MAX_OVERFLOW": "0",
    }


def _connector(env: dict[str, str]) -> Callable[[], Any]:
    """Opens a direct autocommit connection to the ledger's database. The first one is made before
    the pool: the pool only says "couldn't get a connection", while the server's own reason (wrong
    password, no such database, nothing listening) is what to fix."""
    try:
        import psycopg
    except ImportError as error:
        raise LedgerError(f"a PostgreSQL ledger needs psycopg: pip install 'tollgate[postgres]' ({error})") from None

    def connect() -> Any:
        try:
            return psycopg.connect(
                dbname=env["POSTGRES_DBNAME"],
                host=env["POSTGRES_HOST"],
                port=env["POSTGRES_PORT"],
                user=env["POSTGRES_USER"],
                password=env["POSTGRES_PASSWORD"],
                connect_timeout=int(env["POSTGRES_CONNECT_TIMEOUT"]),
                autocommit=True,
            )
        except psycopg.Error as error:
            where = f"{env['POSTGRES_USER']}@{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}/{env['POSTGRES_DBNAME']}"
            reason = " ".join(str(error).split()) or type(error).__name__
            raise LedgerError(f"cannot connect to the PostgreSQL ledger {where}: {reason}") from None

    return connect


def _open_postgres(env: dict[str, str], connection: Any) -> _Tollgate:
    """The application on a PostgreSQL database: make its tables first if they are missing (one
    store at a time, under `SCHEMA_LOCK`), else open it without DDL."""

    def ready() -> bool:
        found = connection.execute(
            "select to_regclass(%s) is not null and to_regclass('tollgate_instances') is not null", (EVENTS_TABLE,)
        ).fetchone()
        return bool(found[0])

    if ready():
        return _Tollgate(env={**env, "CREATE_TABLE": "no"})
    connection.execute("select pg_advisory_lock(%s)", (SCHEMA_LOCK,))
    try:
        app = _Tollgate(env=env)
        connection.execute(INSTANCES_TABLE)
    finally:
        connection.execute("select pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
    return app


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


_DATABASE_ERRORS = (sqlite3.DatabaseError, PersistenceError, OSError)
try:
    from psycopg import Error as _PsycopgError
except ImportError:  # the default install: SQLite only
    _PsycopgError = sqlite3.DatabaseError  # type: ignore[misc,assignment]
_HEARTBEAT_ERRORS = (sqlite3.DatabaseError, _PsycopgError)


class LedgerStore:
    def __init__(self, path: str, password: str = "") -> None:
        self.path = path
        self.postgres = is_postgres(path)
        if path == MEMORY:
            env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        elif self.postgres:
            env = _postgres_env(path, password)
        else:
            _check_file(Path(path))
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(path),
                "SQLITE_LOCK_TIMEOUT": str(int(LOCK_TIMEOUT_S)),  # several processes write one file
            }
        self._instances: dict[str, Instance] = {}
        self._heartbeats: Any = None  # a DB-API connection to the ledger's database (SQLite or PostgreSQL)
        self._listener: Any = None  # PostgreSQL: the connection that LISTENs on `CHANNEL` (see `listen`)
        self._token = uuid.uuid4().hex  # this store's announcements carry it: its own are not news to it
        self._placeholder = "?"
        self._connect: Callable[[], Any] | None = None
        try:
            if self.postgres:  # the heartbeat rows live beside the events, where every machine sees them
                self._connect = _connector(env)
                self._heartbeats = self._connect()
                self._placeholder = "%s"
                self._app = _open_postgres(env, self._heartbeats)
            else:
                self._app = _Tollgate(env=env)
                if path != MEMORY:
                    self._heartbeats = sqlite3.connect(
                        path, check_same_thread=False, timeout=LOCK_TIMEOUT_S, isolation_level=None
                    )
            self._app.recorder.max_notification_id()
        except ImportError as error:
            raise LedgerError(
                f"a PostgreSQL ledger needs psycopg: pip install 'tollgate[postgres]' ({error})"
            ) from None
        except _DATABASE_ERRORS as error:
            if self._heartbeats is not None:
                self._heartbeats.close()
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LedgerError(f"ledger {redact(path)} cannot be opened: {detail}") from None

    def append(self, items: Sequence[Aggregate | DomainEventProtocol[uuid.UUID]]) -> list[Recorded]:
        """Commit the pending events of `items` in one transaction; return them with positions."""
        try:
            recordings = self._app.save(*items)
        except RecordConflictError as error:
            raise VersionConflict(f"ledger {redact(self.path)}: an aggregate moved on meanwhile: {error}") from error
        except _DATABASE_ERRORS as error:
            raise LedgerError(f"ledger {redact(self.path)}: write failed: {error}") from error
        if self.postgres and recordings:
            self._announce()
        return [Recorded(r.notification.id, r.domain_event) for r in recordings]

    # --- news of other processes' commits (PostgreSQL: LISTEN/NOTIFY; elsewhere followers poll)
    def _announce(self) -> None:
        """Wake the other processes' followers (after the commit: they read what it wrote). A
        failure is not the write's: the commit stands, and the followers still poll."""
        try:
            self._execute("select pg_notify(%s, %s)", (CHANNEL, self._token))
        except (*_HEARTBEAT_ERRORS, LedgerError) as error:  # LedgerError: the connection could not be reopened
            log.warning("ledger %s: could not announce a commit (followers will poll): %s", redact(self.path), error)

    def listen(self) -> int | None:
        """(Re)open the connection that LISTENs for other stores' commits; the file descriptor of its
        socket, readable when news arrives (then call `notified`). None when this store cannot be
        notified (SQLite, memory) or the connection failed: the caller polls and tries again later."""
        self.unlisten()
        if self._connect is None:
            return None
        try:
            connection = self._connect()
        except LedgerError as error:
            log.warning("%s (followers poll meanwhile)", error)
            return None
        try:
            connection.execute(f"LISTEN {CHANNEL}")
        except _HEARTBEAT_ERRORS as error:
            log.warning("ledger %s: LISTEN failed (followers poll meanwhile): %s", redact(self.path), error)
            connection.close()
            return None
        self._listener = connection
        return int(connection.fileno())

    def notified(self) -> int:
        """How many commits of other stores were announced since the last call (never blocks).
        Raises `LedgerError` when the listen connection failed; it is closed: `listen` again."""
        if self._listener is None:
            raise LedgerError(f"ledger {redact(self.path)}: not listening")
        try:
            return sum(note.payload != self._token for note in self._listener.notifies(timeout=0))
        except _HEARTBEAT_ERRORS as error:
            self.unlisten()
            raise LedgerError(f"ledger {redact(self.path)}: the listen connection failed: {error}") from error

    def unlisten(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def stored(self, after: int = 0, limit: int = 1000) -> list[Stored]:
        """Events after `after` exactly as stored (no mapper, no upcasting), oldest first."""
        return [
            Stored(n.id, uuid.UUID(str(n.originator_id)), n.originator_version, n.topic, bytes(n.state))
            for n in self._app.recorder.select_notifications(start=after + 1, limit=limit)
        ]

    def insert_stored(self, events: Sequence[Stored]) -> None:
        """Append events exactly as stored, in one transaction (positions are the target's next ones)."""
        self._app.recorder.insert_events([StoredEvent(e.originator_id, e.version, e.topic, e.state) for e in events])

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
        the store's door), and so does PostgreSQL (it reads through the pool)."""
        end = self.position() if until is None else until
        if self.path == MEMORY or self.postgres:
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
        if not self.postgres:  # made by the first heartbeat: readers (replay --verify) write nothing
            self._execute(INSTANCES_TABLE)  # (PostgreSQL: made with the events table, see _open_postgres)
        self._execute(
            "insert into tollgate_instances (instance, pid, host, started_at, beat_at) values"
            f" ({', '.join([self._placeholder] * 5)}) on conflict (instance) do update set pid = excluded.pid,"
            " host = excluded.host, started_at = excluded.started_at, beat_at = excluded.beat_at",
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
        elif not self._has_heartbeats():
            rows = []
        else:
            rows = [
                Instance(i, pid, host, datetime.fromisoformat(started), datetime.fromisoformat(beat))
                for i, pid, host, started, beat in self._execute(
                    "select instance, pid, host, started_at, beat_at from tollgate_instances"
                )
            ]
        return sorted(rows, key=lambda row: (row.started_at, row.instance))

    def _has_heartbeats(self) -> bool:
        """Whether the heartbeat table exists (a reader such as `replay --verify` never creates it)."""
        query = (
            "select to_regclass('tollgate_instances') is not null"
            if self.postgres
            else "select count(*) > 0 from sqlite_master where name = 'tollgate_instances'"
        )
        return bool(self._execute(query)[0][0])

    def forget(self, instances: Collection[str]) -> None:
        """Drop the heartbeat rows of `instances` (stopped, or gone and recovered)."""
        if self._heartbeats is None:
            for instance in instances:
                self._instances.pop(instance, None)
            return
        if not self.instances():
            return
        for instance in instances:
            self._execute(f"delete from tollgate_instances where instance = {self._placeholder}", (instance,))

    def _execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """One statement on the heartbeat connection; its rows. On PostgreSQL a connection the
        server dropped (a restart, `pg_terminate_backend`, a failover) is replaced and the statement
        tried once more (every statement here is idempotent)."""
        try:
            return _rows(self._heartbeats.execute(sql, parameters))
        except _HEARTBEAT_ERRORS:
            if self._connect is None or not self._heartbeats.closed:
                raise
        self._heartbeats = self._connect()
        return _rows(self._heartbeats.execute(sql, parameters))

    def close(self) -> None:
        self.unlisten()
        if self._heartbeats is not None:
            self._heartbeats.close()
        self._app.close()


def _rows(cursor: Any) -> list[Any]:
    return list(cursor.fetchall()) if cursor.description else []
