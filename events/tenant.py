"""`Tenant`: who may use the gateway, with which key, under which policy.

The aggregate id is derived from the tenant's name (`tenant_id(name)`), so a name is unique and the
same tenant is found again from config or API. Keys are recorded only as SHA-256 hashes. Policy is
a dict of JSON primitives (money as decimal strings) whose fields the tenant policies define.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from events.store import Aggregate

NAMESPACE = uuid.UUID("6f1c6f0e-8a7e-4c55-9a51-3f0f6c1d2b10")


def tenant_id(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"tenant:{name}")


class Tenant(Aggregate):
    class Registered(Aggregate.Created):
        name: str
        key_sha256: str
        policy: dict[str, Any]
        source: str

    class Updated(Aggregate.Event):
        changes: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.policy = {**aggregate.policy, **self.changes}

    class KeyIssued(Aggregate.Event):
        key_sha256: str
        previous_valid_until: datetime | None

        def apply(self, aggregate: Any) -> None:
            aggregate.key_sha256 = self.key_sha256

    class BudgetThresholdCrossed(Aggregate.Event):
        period_start: datetime
        level: int
        spent_usd: Decimal
        budget_usd: Decimal

        def apply(self, aggregate: Any) -> None:
            key = self.period_start.isoformat()
            aggregate.thresholds = {
                **aggregate.thresholds,
                key: sorted({*aggregate.thresholds.get(key, []), self.level}),
            }

    class AlertDelivered(Aggregate.Event):
        """A budget alert reached `[alerts] webhook_url` (a 2xx answer) after `attempts` attempts."""

        period_start: datetime
        level: int
        attempts: int

        def apply(self, aggregate: Any) -> None:
            pass

    class AlertDeliveryFailed(Aggregate.Event):
        """A budget alert did not reach the webhook after `attempts` attempts; `reason` is the last failure."""

        period_start: datetime
        level: int
        attempts: int
        reason: str

        def apply(self, aggregate: Any) -> None:
            pass

    class Disabled(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.enabled = False

    class Enabled(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.enabled = True

    def __init__(self, name: str, key_sha256: str, policy: dict[str, Any], source: str) -> None:
        self.name = name
        self.key_sha256 = key_sha256
        self.policy = policy
        self.source = source
        self.enabled = True
        self.thresholds: dict[str, list[int]] = {}

    @classmethod
    def register(cls, name: str, key_sha256: str, policy: dict[str, Any], source: str) -> Tenant:
        return cls._create(
            cls.Registered, id=tenant_id(name), name=name, key_sha256=key_sha256, policy=policy, source=source
        )

    def update(self, changes: dict[str, Any]) -> None:
        if changes:
            self.trigger_event(self.Updated, changes=changes)

    def issue_key(self, key_sha256: str, previous_valid_until: datetime | None) -> None:
        self.trigger_event(self.KeyIssued, key_sha256=key_sha256, previous_valid_until=previous_valid_until)

    def threshold_crossed(self, period_start: datetime, level: int, spent_usd: Decimal, budget_usd: Decimal) -> None:
        self.trigger_event(
            self.BudgetThresholdCrossed,
            period_start=period_start,
            level=level,
            spent_usd=spent_usd,
            budget_usd=budget_usd,
        )

    def alert_delivered(self, period_start: datetime, level: int, attempts: int) -> None:
        self.trigger_event(self.AlertDelivered, period_start=period_start, level=level, attempts=attempts)

    def alert_delivery_failed(self, period_start: datetime, level: int, attempts: int, reason: str) -> None:
        self.trigger_event(
            self.AlertDeliveryFailed, period_start=period_start, level=level, attempts=attempts, reason=reason
        )

    def disable(self) -> None:
        if self.enabled:
            self.trigger_event(self.Disabled)

    def enable(self) -> None:
        if not self.enabled:
            self.trigger_event(self.Enabled)
