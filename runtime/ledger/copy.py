"""`tollgate ledger copy --from URL --to URL`: move a ledger between backends without losing history.

Every event is copied exactly as stored (aggregate id, originator version, topic, state bytes: no
mapper, no upcasting), oldest first, in batches of one transaction each, into a target that must be
empty. Then the copy is verified by reading both back: the event count, the last position, and a
SHA-256 over every event's (position, aggregate, version, topic, state). A source whose positions
have gaps (a PostgreSQL sequence skips the ids of rolled-back inserts) gets dense positions in the
copy; the check then says so rather than passing. Last, the target's projections are rebuilt
(SQLite: its projections file; PostgreSQL: each process rebuilds them in memory at start).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import attrs

from events.projections import Projections
from events.store import LedgerError, LedgerStore, Stored
from runtime.ledger.projector import catch_up, projections_path

BATCH = 2000


@attrs.frozen
class Summary:
    count: int
    last_position: int
    sha256: str


def summarize(store: LedgerStore, *, positions: bool = True) -> Summary:
    """Count, last position and a hash of every stored event (with its position when `positions`)."""
    digest = hashlib.sha256()
    count = last = 0
    after = 0
    while True:
        page = store.stored(after, BATCH)
        for event in page:
            _feed(digest, event, positions)
        if page:
            count += len(page)
            last = after = page[-1].position
        if len(page) < BATCH:
            return Summary(count, last, digest.hexdigest())


def _feed(digest: hashlib._Hash, event: Stored, positions: bool) -> None:
    head = (
        f"{event.position if positions else ''}|{event.originator_id}|{event.version}|{event.topic}|{len(event.state)}|"
    )
    digest.update(head.encode())
    digest.update(event.state)


def copy_ledger(source: LedgerStore, target: LedgerStore, progress: Callable[[int], None] | None = None) -> list[str]:
    """Copy `source` into the empty `target`, verify, rebuild the target's projections.
    Returns the verification's problems (empty when the copy is exact). Raises `LedgerError` when
    the target is not empty."""
    if target.position() != 0:
        raise LedgerError(
            f"the target ledger already holds events (up to position {target.position()}); copy into an empty one"
        )
    after = copied = 0
    while True:
        page = source.stored(after, BATCH)
        if page:
            target.insert_stored(page)
            copied += len(page)
            after = page[-1].position
            if progress is not None:
                progress(copied)
        if len(page) < BATCH:
            break
    want, got = summarize(source), summarize(target)
    problems = []
    if got.count != want.count:
        problems.append(f"count: source {want.count} events, copy {got.count}")
    if got.last_position != want.last_position:
        problems.append(f"last position: source {want.last_position}, copy {got.last_position} (the source has gaps)")
    if got.sha256 != want.sha256:
        same = summarize(source, positions=False).sha256 == summarize(target, positions=False).sha256
        problems.append(
            "hash: the events' positions differ but every event's stored state matches"
            if same
            else f"hash: source {want.sha256}, copy {got.sha256}"
        )
    projections = Projections(projections_path(target.path))
    try:
        catch_up(target, projections)
    finally:
        projections.close()
    return problems
