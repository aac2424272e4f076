"""Lease events per 1 000 requests under a hard budget: `python -m bench.lease_events`.

One or two "processes" (each its own `LedgerStore`, `Journal`, `Aggregates` and `Leases` on one
SQLite ledger, in one trio run) admit requests against the leases they hold, the way a tenant actor
does with `policies.leases`: a request whose worst case the free part of its leases cannot cover
tops up first (`should_top_up`, `lease_size`); each settles at 30–100 % of its reservation; at the
end each gives back what it holds. Reported: lease events (BudgetLeased + LeaseReturned) per 1 000
admitted requests, refusals, and whether leased ever exceeded the budget. Not the gateway's own
path (the tenant actor does not take leases yet: see /work/notes/leases-README.md).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import attrs
import trio

from events.lease import BudgetSlices, OpenLease, slices_id
from events.money import ZERO, usd
from events.store import LedgerStore
from policies.leases import should_top_up, spread
from runtime.ledger.aggregates import Aggregates
from runtime.ledger.journal import Journal
from runtime.ledger.leases import Leases

PERIOD = datetime(2026, 12, 1, tzinfo=UTC)


@attrs.define
class Holder:
    leases: Leases
    held: list[OpenLease] = attrs.field(factory=list)
    settled: Decimal = ZERO
    reserved: Decimal = ZERO
    admitted: int = 0
    refused: int = 0
    lock: trio.Lock = attrs.field(factory=trio.Lock)

    @property
    def free(self) -> Decimal:
        return sum((lease.amount_usd for lease in self.held), ZERO) - self.settled - self.reserved

    async def admit(self, budget: Decimal, need: Decimal, live: int) -> bool:
        async with self.lock:  # the tenant actor: one admission at a time
            last = self.held[-1].amount_usd if self.held else ZERO
            if should_top_up(self.free, last, need):
                lease = await self.leases.take("demo", PERIOD, budget, max(need - self.free, ZERO), live, ZERO)
                if lease is not None:
                    self.held.append(lease)
            if self.free < need:
                self.refused += 1
                return False
            self.reserved += need
            self.admitted += 1
            return True

    def settle(self, reserved: Decimal, cost: Decimal) -> None:
        self.reserved -= reserved
        self.settled += cost

    async def give_back(self) -> None:
        for lease, used in zip(self.held, spread(self.settled, [h.amount_usd for h in self.held]), strict=True):
            await self.leases.give_back("demo", PERIOD, lease.lease, used)
        self.held, self.settled = [], ZERO


async def run(processes: int, requests: int, budget: Decimal, need: Decimal, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        ledger = Path(folder) / "ledger.sqlite3"
        stores = [LedgerStore(str(ledger)) for _ in range(processes)]
        try:
            journals = [Journal(store, lambda recorded: None) for store in stores]
            holders = [
                Holder(Leases(Aggregates(store, journal), f"i{n}", lambda: datetime.now(UTC)))
                for n, (store, journal) in enumerate(zip(stores, journals, strict=True))
            ]
            rng = random.Random(13)
            async with trio.open_nursery() as nursery:
                for journal in journals:
                    await nursery.start(journal.run)
                budget_left = trio.Semaphore(concurrency * processes)

                async def one(holder: Holder) -> None:
                    async with budget_left:
                        if await holder.admit(budget, need, processes):
                            await trio.lowlevel.checkpoint()
                            holder.settle(need, usd(need * Decimal(rng.randint(30, 100)) / 100))

                async with trio.open_nursery() as clients:
                    for n in range(requests):
                        clients.start_soon(one, holders[n % processes])
                for holder in holders:
                    await holder.give_back()
                nursery.cancel_scope.cancel()
            events = [type(r.event).__name__ for r in stores[0].read(0, 1_000_000)]
            slices = stores[0].get(slices_id("demo", PERIOD), BudgetSlices)
        finally:
            for store in stores:
                store.close()
    admitted = sum(h.admitted for h in holders)
    lease_events = events.count("BudgetLeased") + events.count("LeaseReturned")
    return {
        "processes": processes,
        "budget_usd": str(budget),
        "admitted": admitted,
        "refused": sum(h.refused for h in holders),
        "BudgetLeased": events.count("BudgetLeased"),
        "LeaseReturned": events.count("LeaseReturned"),
        "lease_events_per_1000": round(1000 * lease_events / max(admitted, 1), 2),
        "open_leases_at_end": len(slices.open) if slices is not None else 0,
        "committed_usd_at_end": str(slices.committed_usd) if slices is not None else "0",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    need = Decimal("0.01")
    for processes in (1, 2):
        for budget in (Decimal(1000), Decimal(20)):  # never exhausted; exhausted part way
            print(trio.run(run, processes, args.requests, budget, need, args.concurrency))


if __name__ == "__main__":
    main()
