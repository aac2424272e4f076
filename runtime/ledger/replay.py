"""`tollgate replay --verify`: rebuild every projection from an empty database and diff it with the
live one, up to the position the live projections have reached; and check the token semantics of
every terminal event (`token_problems`): cache reads and writes within the prompt, 1-hour writes
within the writes, and tokens consumed ⇒ a cost above $0 (or $0 at a price of $0), or unpriced or
unknown (cost None); and that a cost changed only by a restatement (`cost_problems`): each
`CostRestated` starts from the cost the request had (its terminal event's, or the previous
restatement's), and each spend row's cost is its requests' settled costs plus their restatements."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from events.money import usd_str
from events.projections import SPEND_KEY, Projections, diff
from events.store import MEMORY, LedgerError, LedgerStore, is_postgres
from policies.cost import cost_of
from runtime.ledger.projector import catch_up, projections_path
from runtime.ledger.reprice import HIT, PAGE, REQUEST_FIELDS, RESTATED, SETTLED, ledger_price_book, usage_of

NANO = Decimal("1e-9")


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
        problems = cost_problems(store, position, live, rebuilt) + diff(live, rebuilt) + token_problems(store, position)
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
        position = live.position
        return cost_problems(store, position, live, rebuilt) + diff(live, rebuilt) + token_problems(store, position)
    finally:
        rebuilt.close()


def _verify_folds(store: LedgerStore) -> list[str]:
    paged, whole = Projections(MEMORY), Projections(MEMORY)
    try:
        end = store.position()
        catch_up(store, paged, until=end)
        whole.apply(list(store.read_all()))
        problems = cost_problems(store, end) + diff(paged, whole) + token_problems(store, end)
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


def cost_problems(
    store: LedgerStore, until: int, live: Projections | None = None, rebuilt: Projections | None = None
) -> list[str]:
    """Costs that changed without a restatement: a `CostRestated` (up to `until`) whose old cost is
    not the cost its request had, and (given the live projections and a rebuild) a spend row whose
    cost is not what its requests settled at plus their restatements."""
    fields = {"cost_usd": Decimal, "old_cost_usd": Decimal, "new_cost_usd": Decimal}
    costs: dict[str, Decimal | None] = {}
    problems = []
    for page in store.scan((*SETTLED, HIT, RESTATED), fields, 0, until, PAGE):
        for raw in page:
            state, request = raw.state, raw.originator_id
            if raw.topic != RESTATED:
                costs[request] = state["cost_usd"]
                continue
            where = f"request {request} (position {raw.position})"
            if request not in costs:
                problems.append(f"{where}: a restatement of a request that has no terminal event before it")
            elif costs[request] != state["old_cost_usd"]:
                problems.append(
                    f"{where}: restated from {_money(state['old_cost_usd'])} but its cost was "
                    f"{_money(costs[request])}: a cost changed without a restatement"
                )
            costs[request] = state["new_cost_usd"]
    if live is not None and rebuilt is not None:
        truth = {tuple(row[k] for k in SPEND_KEY): row for row in rebuilt.rows("spend")}
        for row in live.rows("spend"):
            key = tuple(row[k] for k in SPEND_KEY)
            logged = truth.get(key)
            cost, restated = row["cost_nanousd"], row["restated_nanousd"]
            if logged is None or (cost, restated) == (logged["cost_nanousd"], logged["restated_nanousd"]):
                continue  # a row the log does not have at all: the diff reports it
            name = " ".join(f"{k}={v}" for k, v in zip(SPEND_KEY, key, strict=True))
            problems.append(
                f"spend {name}: cost {_nano(cost)} (restated {_nano(restated)}) but its requests settled at "
                f"{_nano(logged['cost_nanousd'] - logged['restated_nanousd'])} and were restated by "
                f"{_nano(logged['restated_nanousd'])}: a cost changed without a restatement"
            )
    return problems


def _money(amount: Decimal | None) -> str:
    return "unpriced/unknown" if amount is None else f"${usd_str(amount)}"


def _nano(amount: int) -> str:
    return f"${usd_str(Decimal(amount) * NANO)}"
