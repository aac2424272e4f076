"""Budget alerts that reach someone (issue #15): a threshold crossing is counted and POSTed as JSON
to `[alerts] webhook_url`, retried on failure, and its delivery outcome recorded as an event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from prometheus_client.parser import text_string_to_metric_families

from events.tenant import Tenant
from tests.harness import ADMIN, ledger_events, make_config, running_gateway
from tests.test_tenant_policies import FIFTY, chat, new_tenant


@attrs.define
class Receiver:
    """A loopback webhook receiver answering the statuses in `answers` in turn (then `otherwise`)."""

    answers: list[int]
    otherwise: int = 200
    url: str = ""
    bodies: list[dict[str, Any]] = attrs.field(factory=list)  # JSON bodies
    raw: list[bytes] = attrs.field(factory=list)  # other bodies (protobuf: an OTLP collector)
    paths: list[str] = attrs.field(factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.paths.append(scope["path"])
        if scope["path"] == "/v1/traces":
            self.raw.append(body)
        else:
            self.bodies.append(json.loads(body))
        status = self.answers.pop(0) if self.answers else self.otherwise
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


@asynccontextmanager
async def receiver(answers: list[int], otherwise: int = 200) -> AsyncIterator[Receiver]:
    app = Receiver(answers, otherwise)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, app, config))  # type: ignore[arg-type]
        app.url = binds[0] + "/hooks/budget"
        yield app
        nursery.cancel_scope.cancel()


async def through_the_actor(http: Any, auth: dict[str, str]) -> None:
    """One more admission by the tenant's actor: it handles messages in order, so the crossings of the
    settlement before are committed and queued for delivery once this is answered (any status)."""
    await chat(http, auth, max_tokens=1)


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_a_crossed_threshold_is_posted_retried_on_500_and_recorded() -> None:
    async with receiver([500]) as hook:
        config = make_config(pricing=FIFTY, alerts={"webhook_url": hook.url, "backoff_s": 0})
        async with running_gateway(config) as gw, gw.http() as http:
            auth = await new_tenant(http, "alerts", budget_usd="100")
            assert (await chat(http, auth, max_tokens=16)).status_code == 200  # $50 of $100: 50 %
            await through_the_actor(http, auth)  # $3.125 more: 53 %, nothing crossed
            assert gw.gateway.alerts is not None
            await gw.gateway.alerts.quiet()
            events = await ledger_events(gw)
            scraped = (await http.get("/metrics")).text
    assert len(hook.bodies) == 2 and hook.bodies[0] == hook.bodies[1]  # the 500, then the retry
    sent = hook.bodies[0]
    assert sent["type"] == "budget_threshold_crossed" and sent["tenant"] == "alerts"
    assert sent["level_percent"] == 50 and Decimal(sent["spent_usd"]) == 50 and Decimal(sent["budget_usd"]) == 100
    assert sent["id"] == f"alerts:{sent['period_start']}:50"
    delivered = [e for e in events if isinstance(e, Tenant.AlertDelivered)]
    assert [(e.level, e.attempts) for e in delivered] == [(50, 2)]
    assert not [e for e in events if isinstance(e, Tenant.AlertDeliveryFailed)]
    assert metric(scraped, "tollgate_budget_alerts_total", tenant="other", threshold="50") == 1
    assert metric(scraped, "tollgate_alert_deliveries_total", result="delivered") == 1


async def test_an_alert_the_webhook_never_takes_is_recorded_as_failed() -> None:
    async with receiver([], otherwise=503) as hook:
        config = make_config(pricing=FIFTY, alerts={"webhook_url": hook.url, "backoff_s": 0, "max_attempts": 3})
        async with running_gateway(config) as gw, gw.http() as http:
            auth = await new_tenant(http, "alerts", budget_usd="50")
            assert (await chat(http, auth, max_tokens=16)).status_code == 200  # 100 %: 50, 80 and 100 crossed
            await through_the_actor(http, auth)  # refused (402): the budget is spent
            assert gw.gateway.alerts is not None
            await gw.gateway.alerts.quiet()
            events = await ledger_events(gw)
    failed = [e for e in events if isinstance(e, Tenant.AlertDeliveryFailed)]
    assert len(hook.bodies) == 3 * 3  # three alerts, three attempts each
    assert sorted(e.level for e in failed) == [50, 80, 100]
    assert {(e.attempts, e.reason) for e in failed} == {(3, "the webhook answered 503")}
    assert not [e for e in events if isinstance(e, Tenant.AlertDelivered)]


async def test_without_a_webhook_alerts_are_only_counted() -> None:
    async with running_gateway(make_config(pricing=FIFTY)) as gw, gw.http() as http:
        auth = await new_tenant(http, "alerts", budget_usd="100")
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        await through_the_actor(http, auth)
        scraped = (await http.get("/metrics")).text
        assert (await http.get("/admin/tenants/alerts", headers=ADMIN)).status_code == 200
    assert metric(scraped, "tollgate_budget_alerts_total", threshold="50") == 1
    assert metric(scraped, "tollgate_alert_deliveries_total") == 0
