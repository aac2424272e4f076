"""`tollgate replay --verify`: rebuild every projection from an empty database and diff it with the
live one, up to the position the live projections have reached."""

from __future__ import annotations

from pathlib import Path

from events.projections import Projections, diff
from events.store import MEMORY, LedgerError, LedgerStore
from runtime.ledger.projector import catch_up, projections_path


def verify(ledger_path: str) -> list[str]:
    """Differences between the live projections and a rebuild (empty when they match)."""
    if ledger_path == MEMORY:
        return ["an in-memory ledger cannot be verified from another process"]
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
