"""The PostgreSQL store with several processes on one database (issue #13), on the throwaway server:
what opening a store costs and holds, schema creation by two stores at once, the heartbeat
connection outliving a dropped backend, and LISTEN/NOTIFY (with reconnecting after a failure)."""

from __future__ import annotations

import select
import threading
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import psycopg
import trio

from events.request import Request
from events.store import Instance, LedgerStore
from runtime.ledger.journal import Journal
from tests.postgres import PASSWORD, USER, PostgresServer

MOMENT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _connect(server: PostgresServer, url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        dbname=_database(url), host="127.0.0.1", port=server.port, user=USER, password=PASSWORD, autocommit=True
    )


def _backends(server: PostgresServer, url: str) -> int:
    return int(server.psql(f"select count(*) from pg_stat_activity where datname = '{_database(url)}'"))


def _admitted(name: str) -> Request:
    return Request.admit(name, "demo", "sim-1", False, Decimal("0.01"), MOMENT, instance="x")


def test_a_store_holds_two_connections(postgres_server: PostgresServer, postgres_url: str) -> None:
    """The store is used one thread at a time: a pool of one plus the heartbeat connection (it held
    six: a pool of five opened eagerly, per process and per `replay --verify` or poll of a test)."""
    LedgerStore(postgres_url, PASSWORD).close()  # the tables
    store = LedgerStore(postgres_url, PASSWORD)
    try:
        store._app.recorder.datastore.pool.wait(10)  # type: ignore[attr-defined]  # eventsourcing's pool filled
        for _ in range(20):
            store.read(0, 10)
        assert _backends(postgres_server, postgres_url) == 2
    finally:
        store.close()


def test_opening_a_store_does_not_wait_for_a_writer(postgres_server: PostgresServer, postgres_url: str) -> None:
    """A store opening a database that has its tables runs no DDL: it neither waits for a writer's
    insert lock (a commit in flight, or a writer whose machine vanished mid-transaction) nor holds
    up writers. It used to run `create index if not exists`, which takes a share lock."""
    LedgerStore(postgres_url, PASSWORD).close()
    writer = _connect(postgres_server, postgres_url)
    writer.autocommit = False
    writer.execute("lock table tollgate_events in exclusive mode")  # what every insert takes
    opened: list[LedgerStore] = []
    thread = threading.Thread(target=lambda: opened.append(LedgerStore(postgres_url, PASSWORD)), daemon=True)
    thread.start()
    thread.join(20)
    still_locked = thread.is_alive()
    writer.rollback()
    thread.join(20)
    writer.close()
    for store in opened:
        assert store.position() == 0
        store.close()
    assert not still_locked, "opening the store waited for the writer's lock"


def _start_together(url: str, count: int) -> tuple[list[LedgerStore], list[BaseException]]:
    """`count` stores opened at the same moment on `url`, each beating once."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []
    stores: list[LedgerStore] = []

    def start(n: int) -> None:
        barrier.wait()
        try:
            store = LedgerStore(url, PASSWORD)
            store.beat(Instance(f"i{n}", n, "here", MOMENT, MOMENT))
            stores.append(store)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return stores, errors


def test_two_stores_making_the_tables_at_once(postgres_server: PostgresServer, postgres_url: str) -> None:
    """Processes started together on a new database: each makes the tables if missing; one at a
    time under an advisory lock (concurrent `create table if not exists` fails: "tuple concurrently
    updated", or a duplicate key in pg_type)."""
    for _ in range(4):
        stores, errors = _start_together(postgres_server.database(), 4)
        assert errors == []
        assert [row.instance for row in stores[0].instances()] == ["i0", "i1", "i2", "i3"]
        for store in stores:
            store.close()


def test_the_heartbeat_connection_is_replaced_when_the_server_drops_it(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = LedgerStore(postgres_url, PASSWORD)
    try:
        store.beat(Instance("me", 1, "here", MOMENT, MOMENT))
        postgres_server.psql(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            f" where datname = '{_database(postgres_url)}' and pid <> pg_backend_pid()"
        )
        later = MOMENT.replace(minute=1)
        store.beat(Instance("me", 1, "here", MOMENT, later))  # the next beat succeeds
        assert [row.beat_at for row in store.instances()] == [later]
        store.append([_admitted("after")])  # and the pool replaced its connection too
    finally:
        store.close()


def test_a_commit_is_announced_to_the_other_stores_listening(postgres_url: str) -> None:
    writer = LedgerStore(postgres_url, PASSWORD)
    reader = LedgerStore(postgres_url, PASSWORD)
    try:
        fd = reader.listen()
        assert fd is not None
        assert reader.notified() == 0
        writer.append([_admitted("one")])
        readable, _, _ = select.select([fd], [], [], 30)  # woken by the announcement, not by a clock
        assert readable == [fd]
        assert reader.notified() == 1
        reader.append([_admitted("two")])  # its own commits are not news to it
        assert reader.notified() == 0
    finally:
        writer.close()
        reader.close()


async def test_a_follower_is_woken_by_notify_and_relistens_after_its_connection_fails(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """With the poll interval an hour, only NOTIFY brings another store's commit. When the listen
    connection is terminated, the follower polls at the default rate, listens again, and is woken
    by NOTIFY once more."""
    writer = LedgerStore(postgres_url, PASSWORD)
    follower = LedgerStore(postgres_url, PASSWORD)
    seen: list[int] = []
    journal = Journal(follower, lambda recorded: seen.extend(r.position for r in recorded), poll_s=3600)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                await nursery.start(journal.follow)
                await journal.next_follow()  # its first read is done: from here on it waits for news
                assert journal.statistics().listening
                writer.append([_admitted("one")])
                while len(seen) < 1:
                    await journal.next_follow()
                assert journal.statistics().woken >= 1
                postgres_server.psql(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    f" where datname = '{_database(postgres_url)}' and query like 'LISTEN%'"
                )
                writer.append([_admitted("two")])  # seen by the fallback polling, or after listening again
                while len(seen) < 2 or journal.statistics().listens < 2:
                    await journal.next_follow()
                writer.append([_admitted("three")])  # listening again: only NOTIFY can bring it
                while len(seen) < 3:
                    await journal.next_follow()
                nursery.cancel_scope.cancel()
    finally:
        follower.close()
        writer.close()
    assert seen == [1, 2, 3]
