"""A known workload for the dashboard's tests: two tenants, a healthy and a failing simulator, prices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from events.money import ZERO
from events.request import Request
from tests.harness import ADMIN, Running, ledger_events, make_config

PRICE = {"input_per_mtok": "10", "output_per_mtok": "20"}
PRICE_2 = {"input_per_mtok": "30", "output_per_mtok": "60"}
HISTORY_DAYS = 20
ACME_BUDGET = "0.023"  # the history spends ≈ $0.02 of it by the 25th: it runs out before the month does
BREAKER = {"consecutive_failures": 2, "cooldown_s": 30, "half_open_probes": 1, "success_threshold": 1}
PROMPT = [{"role": "user", "content": "hello there"}]
WORK = (("acme", "sim-1", 3), ("globex", "sim-1", 2), ("acme", "bad-1", 2))


def workload_config() -> Any:
    return make_config(
        providers=[
            {"name": "sim", "kind": "simulator", "models": ["sim-1", "sim-2"]},
            {
                "name": "bad",
                "kind": "simulator",
                "models": ["bad-1"],
                "simulator": {"error_rate": 1.0, "error_status": 500},
                "breaker": BREAKER,
                "max_retries": 0,
            },
        ],
        pricing={"sim/sim-1": PRICE, "sim/sim-2": PRICE_2, "bad/bad-1": PRICE},
    )


async def run_workload(gw: Running, http: httpx.AsyncClient) -> dict[str, str]:
    """Create acme (a monthly budget of ACME_BUDGET) and globex; send WORK; return each tenant's key header."""
    keys = {}
    for name, extra in (("acme", {"budget_usd": ACME_BUDGET}), ("globex", {})):
        created = await http.post("/admin/tenants", json={"name": name, **extra}, headers=ADMIN)
        assert created.status_code == 201, created.text
        keys[name] = f"Bearer {created.json()['api_key']}"
    for tenant, model, count in WORK:
        for _ in range(count):
            body = {"model": model, "messages": PROMPT, "max_tokens": 20}
            response = await http.post("/v1/chat/completions", json=body, headers={"Authorization": keys[tenant]})
            assert response.status_code == (200 if model == "sim-1" else 502), response.text
    return keys


async def ledger_spend(gw: Running) -> dict[tuple[str, str], Decimal]:
    """(tenant, model) → the sum of the ledger's settled costs (restatements folded in)."""
    events = await ledger_events(gw)
    admitted = {e.originator_id: (e.tenant, e.model) for e in events if isinstance(e, Request.Admitted)}
    cost: dict[Any, Decimal | None] = {}
    for event in events:
        if isinstance(event, Request.Settled) and event.cost_usd is not None:
            cost[event.originator_id] = event.cost_usd
        elif isinstance(event, Request.CostRestated):
            cost[event.originator_id] = event.new_cost_usd
    spend: dict[tuple[str, str], Decimal] = {}
    for ledger_id, amount in cost.items():
        key = admitted[ledger_id]
        spend[key] = spend.get(key, ZERO) + (amount or ZERO)
    return spend


class HistoryClock:
    """The gateway's wall clock for money, moved by the test: `HISTORY_DAYS` days ago at noon, then on."""

    def __init__(self, end: datetime = datetime(2026, 11, 25, 12, tzinfo=UTC)) -> None:
        self.end = end
        self.now = end - timedelta(days=HISTORY_DAYS - 1)

    def __call__(self) -> datetime:
        return self.now


async def run_history(http: httpx.AsyncClient, clock: HistoryClock, keys: dict[str, str]) -> None:
    """A few requests a day for `HISTORY_DAYS` days (a pattern of tenants and models), ending at clock.end."""
    for day in range(HISTORY_DAYS):
        clock.now = clock.end - timedelta(days=HISTORY_DAYS - 1 - day)
        for i in range(1 + day % 4):
            tenant = "acme" if (day + i) % 3 else "globex"
            model = "sim-2" if (day * 7 + i) % 5 == 0 else "sim-1"
            body = {"model": model, "messages": [{"role": "user", "content": f"day {day} call {i}"}], "max_tokens": 20}
            response = await http.post("/v1/chat/completions", json=body, headers={"Authorization": keys[tenant]})
            assert response.status_code == 200, response.text
    clock.now = clock.end


async def ledger_spend_by_day(gw: Running) -> dict[str, Decimal]:
    """UTC day of received_at → the sum of the ledger's settled costs that day."""
    events = await ledger_events(gw)
    days = {e.originator_id: e.received_at.date().isoformat() for e in events if isinstance(e, Request.Admitted)}
    cost: dict[Any, Decimal] = {}
    for event in events:
        if isinstance(event, Request.Settled) and event.cost_usd is not None:
            cost[event.originator_id] = event.cost_usd
    spend: dict[str, Decimal] = {}
    for ledger_id, amount in cost.items():
        spend[days[ledger_id]] = spend.get(days[ledger_id], ZERO) + amount
    return spend
