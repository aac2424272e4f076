"""`tollgate replay --verify`: rebuild every projection from an empty database and diff it with the
live one, up to the position the live projections have reached."""

from __future__ import annotations

from pathlib import Path

from events.projections import Projections, diff
from events.store import MEMORY, LedgerError, LedgerStore, is_postgres
from runtime.ledger.projector import catch_up, projections_path


def verify(ledger_path: str, password: str = "") -> list[str]:
    """Differences between the live projections and a rebuild (empty when they match).

    A PostgreSQL ledger's projections live in each serving process's memory (rebuilt from the log
    at its start), so offline there is no stored copy to diff: this folds the whole log twice, in
    the serving process's batch size and in one batch, and diffs those (fold must not depend on
    how the log is paged), after checking that every event decodes."""
    if ledger_path == MEMORY:
        return ["an in-memory ledger cannot be verified from another process"]
    if is_postgres(ledger_path):
        return _verify_folds(LedgerStore(ledger_path, password))
    if not Path(ledger_path).exists():
        raise LedgerError(f"no ledger at {ledger_path}")
    store = LedgerStore(ledger_path)
    live = Projections(projections_path(ledger_path))
    rebuilt = Projections(MEMORY)
    try:
        position = live.position
        catch_up(store, rebuilt, until=position)
        problems = diff(live, rebuilt)
        if rebuilt.position != position:
            problems.insert(0, f"the ledger ends at {rebuilt.position}, before the projections' position {position}")
        return problems
    finally:
        store.close()
        live.close()
        rebuilt.close()


def verify_open(store: LedgerStore, live: Projections) -> list[str]:
    """The same check against a store and projections already open (used by tests and the gateway)."""
    rebuilt = Projections(MEMORY)
    try:
        catch_up(store, rebuilt, until=live.position)
        return diff(live, rebuilt)
    finally:
        rebuilt.close()


def _verify_folds(store: LedgerStore) -> list[str]:
    paged, whole = Projections(MEMORY), Projections(MEMORY)
    try:
        end = store.position()
        catch_up(store, paged, until=end)
        whole.apply(list(store.read_all()))
        problems = diff(paged, whole)
        if paged.position != end:
            problems.insert(0, f"the ledger ends at {end} but folding it stopped at {paged.position}")
        return problems
    finally:
        store.close()
        paged.close()
        whole.close()
