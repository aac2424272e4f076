"""Budget alerts that reach someone: each 50/80/100 % threshold crossing the tenant actor records is
counted (`tollgate_budget_alerts_total`) and, with `[alerts] webhook_url`, POSTed as JSON.

`crossed` never blocks (settlement calls it): it queues the alert for `run`, a task under the
gateway's nursery that delivers each alert in its own task — bounded retries with exponential backoff
(`max_attempts`, `backoff_s`), a 2xx answer is delivered — and records the outcome on the tenant's
aggregate as `Tenant.AlertDelivered` or `Tenant.AlertDeliveryFailed` (through the aggregates' one door).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs
import httpx
import trio

from events.money import usd_str
from events.tenant import Tenant
from runtime.config import AlertsConfig
from runtime.ledger.aggregates import Aggregates
from runtime.metrics import Metrics

log = logging.getLogger("tollgate.alerts")
QUEUE_SIZE = 1024


@attrs.frozen
class Alert:
    tenant_id: str
    tenant: str
    period_start: datetime
    level: int
    spent_usd: Decimal
    budget_usd: Decimal

    def payload(self) -> dict[str, Any]:
        return {
            "type": "budget_threshold_crossed",
            "id": f"{self.tenant}:{self.period_start.isoformat()}:{self.level}",  # the same on every retry
            "tenant": self.tenant,
            "level_percent": self.level,
            "period_start": self.period_start.isoformat(),
            "spent_usd": usd_str(self.spent_usd),
            "budget_usd": usd_str(self.budget_usd),
        }


class AlertSender:
    def __init__(self, config: AlertsConfig, aggregates: Aggregates, metrics: Metrics) -> None:
        self._config = config
        self._aggregates = aggregates
        self._metrics = metrics
        self._send, self._receive = trio.open_memory_channel[Alert](QUEUE_SIZE)
        self._pending = 0
        self._quiet = trio.Event()
        self._quiet.set()

    def crossed(self, alert: Alert) -> None:
        """A threshold crossing was committed: count it and queue its delivery. Never blocks."""
        self._metrics.threshold_crossed(alert.tenant, alert.level)
        if self._config.webhook_url is None:
            return
        try:
            self._send.send_nowait(alert)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning(
                "budget alert for tenant %s (%d %%) dropped: the delivery queue is full", alert.tenant, alert.level
            )
            self._metrics.alert_deliveries.labels("dropped").inc()
            return
        self._pending += 1
        self._quiet = trio.Event() if self._quiet.is_set() else self._quiet

    async def quiet(self) -> None:
        """Wait until every queued alert's delivery outcome is recorded."""
        await self._quiet.wait()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=self._config.timeout_s) as client, trio.open_nursery() as nursery:
            task_status.started()
            async for alert in self._receive:
                nursery.start_soon(self._deliver, client, alert)

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert) -> None:
        url = self._config.webhook_url
        assert url is not None
        attempts, reason = 0, ""
        delivered = False
        try:
            for attempts in range(1, self._config.max_attempts + 1):
                try:
                    response = await client.post(url, json=alert.payload())
                    if 200 <= response.status_code < 300:
                        delivered = True
                        break
                    reason = f"the webhook answered {response.status_code}"
                except httpx.HTTPError as error:
                    reason = f"{type(error).__name__}"
                if attempts < self._config.max_attempts:
                    await trio.sleep(self._config.backoff_s * 2 ** (attempts - 1))
            self._metrics.alert_deliveries.labels("delivered" if delivered else "failed").inc()
            if not delivered:
                log.warning(
                    "budget alert for tenant %s (%d %%) not delivered after %d attempts: %s",
                    alert.tenant,
                    alert.level,
                    attempts,
                    reason,
                )

            def outcome(aggregate: Tenant | None) -> Tenant:
                if aggregate is None:
                    raise LookupError(f"no tenant {alert.tenant!r} in the ledger")
                if delivered:
                    aggregate.alert_delivered(alert.period_start, alert.level, attempts)
                else:
                    aggregate.alert_delivery_failed(alert.period_start, alert.level, attempts, reason)
                return aggregate

            try:
                await self._aggregates.change(uuid.UUID(alert.tenant_id), Tenant, outcome)
            except Exception:
                log.warning("tenant %s: could not record a budget alert's delivery", alert.tenant, exc_info=True)
        finally:
            self._pending -= 1
            if not self._pending:
                self._quiet.set()
