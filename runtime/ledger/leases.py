"""`Leases`: taking, returning and expiring slices of a tenant's period budget, through `Aggregates`.

Each call is one conditional append on the tenant-period's `BudgetSlices` (`Aggregates.change`
re-reads and decides again when another process appended first), the size decided by
`policies.leases.lease_size` on the state it read — so two racing takers never lease the same money.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from events.lease import BudgetSlices, OpenLease, slices_id
from policies import leases
from runtime.errors import Overloaded
from runtime.ledger.aggregates import Aggregates

LEASE_S = 60.0
"""A lease's `expires_at`: the earliest a survivor may expire it, if its holder stopped heartbeating."""


class _Refused(Exception):
    """A refused first take: the period's slices are not opened by it."""


class Leases:
    def __init__(
        self, aggregates: Aggregates, instance: str, clock: Callable[[], datetime], lease_s: float = LEASE_S
    ) -> None:
        self._aggregates = aggregates
        self.instance = instance
        self._clock = clock
        self.lease_s = lease_s
        self.taken = 0
        self.closed = 0

    async def take(
        self, tenant: str, period_start: datetime, budget: Decimal, need: Decimal, live: int, spent_before: Decimal
    ) -> OpenLease | None:
        """Lease a slice for a request needing `need` more than what is held free; None: refused (the
        rest is spent or held by others). Raises `Overloaded` when the Journal's queue is full (as
        admission's own `submit` would). `spent_before` is the period's settled spend when no lease
        was ever taken in it (it opens the aggregate; ignored once it exists)."""
        if self._aggregates.journal_full:
            raise Overloaded("The gateway's ledger is busy; retry shortly.", retry_after=1.0)
        lease = uuid.uuid4().hex
        expires_at = self._clock() + timedelta(seconds=self.lease_s)
        granted: list[OpenLease | None] = []

        def take(slices: BudgetSlices | None) -> BudgetSlices:
            granted.clear()
            opening = slices is None
            if slices is None:
                slices = BudgetSlices.open_period(tenant, period_start, spent_before)
            amount = leases.lease_size(budget, slices.left(budget), need, live)
            if amount is None:
                granted.append(None)
                if opening:  # not opened on a refusal: a later opening reads the spend then (restated)
                    raise _Refused
                return slices  # a refusal: nothing appended
            slices.lease(lease, amount, self.instance, expires_at, budget)
            granted.append(slices.open[lease])
            return slices

        with contextlib.suppress(_Refused):
            await self._aggregates.change(slices_id(tenant, period_start), BudgetSlices, take)
        (found,) = granted
        if found is not None:
            self.taken += 1
        return found

    async def give_back(self, tenant: str, period_start: datetime, lease: str, used_usd: Decimal) -> None:
        await self._close(tenant, period_start, lease, lambda slices: slices.give_back(lease, used_usd))

    async def expire(self, tenant: str, period_start: datetime, lease: str, used_usd: Decimal) -> None:
        await self._close(tenant, period_start, lease, lambda slices: slices.expire(lease, used_usd, self.instance))

    async def _close(
        self, tenant: str, period_start: datetime, lease: str, close: Callable[[BudgetSlices], None]
    ) -> None:
        def change(slices: BudgetSlices | None) -> BudgetSlices:
            if slices is None:
                raise LookupError(f"no leases for tenant {tenant!r} in the period from {period_start.isoformat()}")
            close(slices)
            return slices

        await self._aggregates.change(slices_id(tenant, period_start), BudgetSlices, change)
        self.closed += 1

    async def held(self, tenant: str, period_start: datetime) -> BudgetSlices | None:
        return await self._aggregates.get(slices_id(tenant, period_start), BudgetSlices)
