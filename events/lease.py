"""`BudgetSlices`: the leases taken on one tenant's budget for one period.

A process takes a slice (`BudgetLeased`) of what is left of the tenant's period budget, admits
against it locally, and gives back the unused rest (`LeaseReturned`, with what it used); a lease of an
instance that stopped heartbeating is closed by a survivor (`LeaseExpired`). The aggregate id is
derived from tenant and period (`slices_id`), so every process appends to the same one: taking a
lease is a conditional append at the version it read, and a racing second taker's append conflicts
(it re-reads and decides again). So what the aggregate holds is, for the period,

    committed = spend settled before the first lease + what each closed lease used
    open      = the amounts of the leases still open

and `committed + open` never exceeds the budget in force when each lease was taken
(`policies.leases` decides the slices; `lease` refuses anything that would break it).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from events.money import ZERO
from events.store import Aggregate

NAMESPACE = uuid.UUID("9b2f3c1e-4d5a-4e6b-8c7d-1a2b3c4d5e6f")


def slices_id(tenant: str, period_start: datetime) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"slices:{tenant}:{period_start.isoformat()}")


@attrs.frozen
class OpenLease:
    lease: str
    instance: str
    amount_usd: Decimal
    expires_at: datetime


class OverLeased(Exception):
    """A lease that would take more than is left of the budget (a bug in the caller's decision)."""


class BudgetSlices(Aggregate):
    class Opened(Aggregate.Created):
        tenant: str
        period_start: datetime
        spent_before_usd: Decimal

    class BudgetLeased(Aggregate.Event):
        lease: str
        tenant: str
        period: datetime
        amount_usd: Decimal
        instance: str
        expires_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.open = {
                **aggregate.open,
                self.lease: OpenLease(self.lease, self.instance, self.amount_usd, self.expires_at),
            }

    class LeaseReturned(Aggregate.Event):
        """The holder gave the lease back: it used `used_usd` of it (settled), the rest is free again."""

        lease: str
        used_usd: Decimal

        def apply(self, aggregate: Any) -> None:
            aggregate.close(self.lease, self.used_usd)

    class LeaseExpired(Aggregate.Event):
        """A survivor (`by_instance`) closed the lease of a gone instance; `used_usd` is what that
        instance's requests under it settled or may still settle (their reservations, in full)."""

        lease: str
        used_usd: Decimal
        by_instance: str

        def apply(self, aggregate: Any) -> None:
            aggregate.close(self.lease, self.used_usd)

    def __init__(self, tenant: str, period_start: datetime, spent_before_usd: Decimal) -> None:
        self.tenant = tenant
        self.period_start = period_start
        self.committed_usd = spent_before_usd
        self.open: dict[str, OpenLease] = {}

    @classmethod
    def open_period(cls, tenant: str, period_start: datetime, spent_before_usd: Decimal) -> BudgetSlices:
        return cls._create(
            cls.Opened,
            id=slices_id(tenant, period_start),
            tenant=tenant,
            period_start=period_start,
            spent_before_usd=spent_before_usd,
        )

    @property
    def open_usd(self) -> Decimal:
        return sum((lease.amount_usd for lease in self.open.values()), ZERO)

    def left(self, budget_usd: Decimal) -> Decimal:
        """What no lease holds and nothing spent: the most a new lease may take."""
        return max(budget_usd - self.committed_usd - self.open_usd, ZERO)

    def close(self, lease: str, used_usd: Decimal) -> None:
        closed = self.open[lease]
        self.open = {key: value for key, value in self.open.items() if key != lease}
        self.committed_usd += min(used_usd, closed.amount_usd)

    def lease(self, lease: str, amount_usd: Decimal, instance: str, expires_at: datetime, budget_usd: Decimal) -> None:
        if amount_usd <= 0 or amount_usd > self.left(budget_usd):
            raise OverLeased(f"a lease of {amount_usd} exceeds the {self.left(budget_usd)} left of {budget_usd}")
        self.trigger_event(
            self.BudgetLeased,
            lease=lease,
            tenant=self.tenant,
            period=self.period_start,
            amount_usd=amount_usd,
            instance=instance,
            expires_at=expires_at,
        )

    def give_back(self, lease: str, used_usd: Decimal) -> None:
        if lease in self.open:
            self.trigger_event(self.LeaseReturned, lease=lease, used_usd=used_usd)

    def expire(self, lease: str, used_usd: Decimal, by_instance: str) -> None:
        if lease in self.open:
            self.trigger_event(self.LeaseExpired, lease=lease, used_usd=used_usd, by_instance=by_instance)
