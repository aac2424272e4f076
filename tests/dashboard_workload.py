"""A known workload for the dashboard's tests: two tenants, a healthy and a failing simulator, prices."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from events.money import ZERO
from events.request import Request
from tests.harness import ADMIN, Running, ledger_events, make_config

PRICE = {"input_per_mtok": "10", "output_per_mtok": "20"}
BREAKER = {"consecutive_failures": 2, "cooldown_s": 30, "half_open_probes": 1, "success_threshold": 1}
PROMPT = [{"role": "user", "content": "hello there"}]
WORK = (("acme", "sim-1", 3), ("globex", "sim-1", 2), ("acme", "bad-1", 2))


def workload_config() -> Any:
    return make_config(
        providers=[
            {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
            {
                "name": "bad",
                "kind": "simulator",
                "models": ["bad-1"],
                "simulator": {"error_rate": 1.0, "error_status": 500},
                "breaker": BREAKER,
                "max_retries": 0,
            },
        ],
        pricing={"sim/sim-1": PRICE, "bad/bad-1": PRICE},
    )


async def run_workload(gw: Running, http: httpx.AsyncClient) -> dict[str, str]:
    """Create acme (budget $1 a month) and globex; send WORK; return each tenant's key header."""
    keys = {}
    for name, extra in (("acme", {"budget_usd": "1"}), ("globex", {})):
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
