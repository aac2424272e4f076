"""Budget leases (issue #13): the slicing policy, the sum invariant over random interleavings of
take/reserve/settle/return/expire, and the conditional append under a race of two processes'
takers on one SQLite ledger."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from events.lease import BudgetSlices, slices_id
from events.money import ZERO, usd
from events.store import LedgerStore
from policies.leases import lease_size, should_top_up, spread, used
from runtime.ledger.aggregates import Aggregates
from runtime.ledger.journal import Journal
from runtime.ledger.leases import Leases
from tests.postgres import PASSWORD
from tests.test_replay import replay_verify
from tests.test_workers import env, write_config

PERIOD = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
money = st.decimals(min_value=Decimal("0.000000001"), max_value=Decimal(100), places=9)


def test_a_single_instance_leases_the_whole_remainder() -> None:
    assert lease_size(Decimal(10), Decimal(7), Decimal("0.5"), live=1) == Decimal(7)


def test_a_request_larger_than_the_remainder_is_refused() -> None:
    assert lease_size(Decimal(10), Decimal("0.4"), Decimal("0.5"), live=3) is None
    assert lease_size(Decimal(10), ZERO, ZERO, live=1) is None


def test_slices_split_the_remainder_among_live_instances() -> None:
    assert lease_size(Decimal(100), Decimal(100), Decimal(1), live=2) == Decimal(25)
    # never smaller than the request's worst case, nor than the smallest slice
    assert lease_size(Decimal(100), Decimal(100), Decimal(40), live=2) == Decimal(40)
    assert lease_size(Decimal(100), Decimal(10), Decimal("0.001"), live=8) == Decimal(1)


def test_a_remainder_too_small_to_serve_anyone_after_the_slice_is_taken_whole() -> None:
    # 6 wanted of 11 would leave 5 < the request's worst case of 6: take all 11
    assert lease_size(Decimal(100), Decimal(11), Decimal(6), live=2) == Decimal(11)


def test_top_up_when_low_or_short_of_the_next_request() -> None:
    assert should_top_up(Decimal(1), Decimal(10))
    assert not should_top_up(Decimal(5), Decimal(10))
    assert should_top_up(Decimal(5), Decimal(10), need=Decimal(6))


@given(money, st.lists(money, max_size=5))
def test_a_spread_of_what_was_used_fills_the_oldest_leases_first(used_usd: Decimal, amounts: list[Decimal]) -> None:
    used_usd = min(used_usd, sum(amounts, ZERO))
    parts = spread(used_usd, amounts)
    assert sum(parts, ZERO) == used_usd
    assert all(ZERO <= part <= amount for part, amount in zip(parts, amounts, strict=True))
    short = next((n for n, (part, amount) in enumerate(zip(parts, amounts, strict=True)) if part < amount), None)
    if short is not None:  # the first lease not used in full: nothing used of the younger ones
        assert all(part == ZERO for part in parts[short + 1 :])


@given(money, money, money, st.integers(1, 16))
def test_a_slice_never_exceeds_the_remainder(budget: Decimal, left: Decimal, need: Decimal, live: int) -> None:
    size = lease_size(budget, left, need, live)
    if need > left:
        assert size is None
    else:
        assert size is not None and need <= size <= left


@attrs.define
class Held:
    """One instance's view of one lease: what it settled and what is reserved under it."""

    lease: str
    amount: Decimal
    settled: Decimal = ZERO
    reserved: list[Decimal] = attrs.field(factory=list)

    @property
    def free(self) -> Decimal:
        return self.amount - self.settled - sum(self.reserved, ZERO)


operations = st.lists(
    st.tuples(
        st.sampled_from(["take", "reserve", "settle", "return", "expire"]),
        st.integers(0, 2),  # instance
        money,  # a request's worst case
        st.integers(0, 100),  # the share of a reservation its settlement costs, %
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(money, money, operations)
def test_settled_plus_reserved_plus_leased_never_exceeds_the_budget(
    budget: Decimal, spent_before: Decimal, ops: list[tuple[str, int, Decimal, int]]
) -> None:
    """Three instances take, reserve under, settle, return and expire leases in any order; a gone
    instance's requests still settle after its lease expired. Spend settled + reserved (+ what
    open leases hold free) never exceeds the budget."""
    spent_before = min(spent_before, budget)
    slices = BudgetSlices.open_period("demo", PERIOD, spent_before)
    held: dict[int, list[Held]] = {0: [], 1: [], 2: []}
    orphans: list[Decimal] = []  # reservations of requests whose lease expired (they settle later)
    settled = spent_before
    for step, (op, who, need, share) in enumerate(ops):
        mine = held[who]
        if op == "take":
            size = lease_size(budget, slices.left(budget), need, live=3)
            if size is not None:
                slices.lease(f"l{step}", size, str(who), NOW, budget)
                mine.append(Held(f"l{step}", size))
        elif op == "reserve":
            lease = next((h for h in mine if h.free >= need), None)
            if lease is not None:
                lease.reserved.append(need)
        elif op == "settle":
            if orphans and who == 2:
                settled += usd(orphans.pop() * share / 100)
            else:
                lease = next((h for h in mine if h.reserved), None)
                if lease is not None:
                    cost = usd(lease.reserved.pop() * share / 100)
                    lease.settled += cost
                    settled += cost
        elif op == "return":
            lease = next((h for h in mine if not h.reserved), None)
            if lease is not None:
                slices.give_back(lease.lease, lease.settled)
                mine.remove(lease)
        else:  # the instance is gone: a survivor expires its leases; its requests settle later
            for lease in mine:
                slices.expire(lease.lease, used(lease.settled, sum(lease.reserved, ZERO), lease.amount), "survivor")
                orphans.extend(lease.reserved)
            mine.clear()
        reserved = sum((sum(h.reserved, ZERO) for leases in held.values() for h in leases), ZERO)
        assert slices.committed_usd + slices.open_usd <= budget
        assert settled + reserved + sum(orphans, ZERO) <= slices.committed_usd + slices.open_usd
        assert settled + reserved <= budget


async def _two_processes(
    ledger: Path | str, body: Callable[[Leases, Leases, Aggregates, Aggregates], Any], password: str = ""
) -> None:
    stores = [LedgerStore(str(ledger), password), LedgerStore(str(ledger), password)]
    try:
        journals = [Journal(store, lambda recorded: None, instance=f"i{n}") for n, store in enumerate(stores)]
        aggregates = [Aggregates(store, journal) for store, journal in zip(stores, journals, strict=True)]
        async with trio.open_nursery() as nursery:
            for journal in journals:
                await nursery.start(journal.run)
            with trio.fail_after(30):
                await body(
                    Leases(aggregates[0], "i0", lambda: NOW),
                    Leases(aggregates[1], "i1", lambda: NOW),
                    aggregates[0],
                    aggregates[1],
                )
            nursery.cancel_scope.cancel()
    finally:
        for store in stores:
            store.close()


async def test_two_racing_takers_one_wins_the_other_rereads(tmp_path: Path) -> None:
    """Both processes read the tenant-period's slices, then both lease the whole remainder (one live
    instance each, as far as each knows). The second append conflicts, re-reads, and is refused:
    the winner holds it all."""
    budget = Decimal(10)
    taken: list[Any] = []

    async def race(a: Leases, b: Leases, first: Aggregates, second: Aggregates) -> None:
        opening = await a.take("demo", PERIOD, budget, Decimal(1), live=1, spent_before=Decimal(2))  # 8 left
        assert opening is not None and opening.amount_usd == Decimal(8)
        await a.give_back("demo", PERIOD, opening.lease, ZERO)
        for aggregates in (first, second):  # both hold the same version in memory
            assert await aggregates.get(slices_id("demo", PERIOD), BudgetSlices) is not None
        taken.append(await a.take("demo", PERIOD, budget, Decimal(1), live=1, spent_before=ZERO))
        taken.append(await b.take("demo", PERIOD, budget, Decimal(1), live=1, spent_before=ZERO))  # stale: conflicts

    ledger = tmp_path / "var" / "ledger.sqlite3"
    ledger.parent.mkdir()
    await _two_processes(ledger, race)
    winner, loser = taken
    assert winner is not None and winner.amount_usd == Decimal(8) and winner.instance == "i0"
    assert loser is None
    store = LedgerStore(str(ledger))
    try:
        slices = store.get(slices_id("demo", PERIOD), BudgetSlices)
        assert slices is not None
        assert list(slices.open) == [winner.lease]
        assert slices.committed_usd + slices.open_usd == budget
        kinds = [type(r.event).__name__ for r in store.read()]
        assert kinds == ["Opened", "BudgetLeased", "LeaseReturned", "BudgetLeased"]
    finally:
        store.close()
    verified = await trio.to_thread.run_sync(replay_verify, write_config(tmp_path), env())
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_racing_takers_under_several_live_instances_share_without_overleasing(tmp_path: Path) -> None:
    """Many takers on two processes at once: every lease is decided on the latest state, so the
    leases never add up to more than the budget, and both processes got slices."""
    await _many_takers(str(tmp_path / "ledger.sqlite3"))


async def test_racing_takers_on_a_postgres_ledger(postgres_url: str) -> None:
    """The same race on PostgreSQL: its unique (aggregate, version) refusal is the conflict too."""
    await _many_takers(postgres_url, PASSWORD)


async def _many_takers(ledger: str, password: str = "") -> None:
    budget = Decimal(100)

    async def race(a: Leases, b: Leases, first: Aggregates, second: Aggregates) -> None:
        async with trio.open_nursery() as takers:
            for _ in range(10):
                for leases in (a, b):
                    takers.start_soon(leases.take, "demo", PERIOD, budget, Decimal(3), 2, ZERO)

    await _two_processes(ledger, race, password)
    store = LedgerStore(ledger, password)
    try:
        slices = store.get(slices_id("demo", PERIOD), BudgetSlices)
        assert slices is not None
        assert slices.open_usd <= budget
        assert {lease.instance for lease in slices.open.values()} == {"i0", "i1"}
        assert budget - slices.open_usd < Decimal(3)  # what is left cannot serve another request
    finally:
        store.close()
