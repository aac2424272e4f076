"""`tollgate replay --verify`: rebuild every projection from an empty database and diff it with the
live one, up to the position the live projections have reached; and check the token semantics of
every terminal event (`token_problems`): cache reads and writes within the prompt, 1-hour writes
within the writes, and tokens consumed ⇒ a cost above $0 (or $0 at a price of $0), or unpriced or
unknown (cost None)."""

from __future__ import annotations

from pathlib import Path

from events.projections import Projections, diff
from events.store import MEMORY, LedgerError, LedgerStore, is_postgres
from policies.cost import cost_of
from runtime.ledger.projector import catch_up, projections_path
from runtime.ledger.reprice import PAGE, REQUEST_FIELDS, SETTLED, ledger_price_book, usage_of


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
        problems = diff(live, rebuilt) + token_problems(store, position)
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
        return diff(live, rebuilt) + token_problems(store, live.position)
    finally:
        rebuilt.close()


def _verify_folds(store: LedgerStore) -> list[str]:
    paged, whole = Projections(MEMORY), Projections(MEMORY)
    try:
        end = store.position()
        catch_up(store, paged, until=end)
        whole.apply(list(store.read_all()))
        problems = diff(paged, whole) + token_problems(store, end)
        if paged.position != end:
            problems.insert(0, f"the ledger ends at {end} but folding it stopped at {paged.position}")
        return problems
    finally:
        store.close()
        paged.close()
        whole.close()


def token_problems(store: LedgerStore, until: int) -> list[str]:
    """Terminal events (up to position `until`) whose counts or cost cannot be true."""
    fields = {**REQUEST_FIELDS, "outcome": str, "price_ref": str}
    prices = {entry.ref: entry.price for entry in ledger_price_book(store, until).entries()}
    problems = []
    for page in store.scan(SETTLED, fields, 0, until, PAGE):
        for raw in page:
            state = raw.state
            usage = usage_of(state)
            where = f"request {raw.originator_id} (position {raw.position})"
            if usage.cached_tokens + usage.cache_write_tokens > usage.prompt_tokens:
                problems.append(f"{where}: cached and cache-write tokens exceed its prompt tokens")
            if usage.cache_write_1h_tokens > usage.cache_write_tokens:
                problems.append(f"{where}: 1-hour cache writes exceed its cache writes")
            cost = state["cost_usd"]
            price = prices.get(state["price_ref"])
            ref = state["price_ref"]  # a price of $0 is a price (one the ledger does not hold is not judged)
            free = ref is not None and (price is None or cost_of(usage, price) == 0)
            if usage.total_tokens > 0 and cost is not None and cost <= 0 and not free:
                problems.append(f"{where}: {usage.total_tokens} tokens at a cost of {cost} (not unpriced, not unknown)")
    return problems
