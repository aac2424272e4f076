"""/admin/series/*: the dashboard's JSON, equal to the ledger's numbers after a known workload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from events.money import ZERO
from events.provider import Provider
from runtime.http.admin_series import breaker_lanes, burn_down_of
from tests.dashboard_workload import ACME_BUDGET, WORK, ledger_spend, run_workload, workload_config
from tests.harness import ADMIN, ledger_events, running_gateway


async def test_spend_series_per_day_by_model_equals_the_ledger() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        await run_workload(gw, http)
        ledger = await ledger_spend(gw)
        series = (await http.get("/admin/series/spend?days=30", headers=ADMIN)).json()
        today = datetime.now(UTC).date().isoformat()
        assert series["days"][-1] == today and len(series["days"]) == 30
        by_model = {s["name"]: s for s in series["series"]}
        for model in ("sim-1", "bad-1"):
            expected = sum((v for (_, m), v in ledger.items() if m == model), ZERO)
            assert Decimal(by_model[model]["total_cost_usd"]) == expected
            assert Decimal(by_model[model]["cost_usd"][-1]) == expected  # all of it today
        assert by_model["sim-1"]["total_requests"] == 5 and by_model["bad-1"]["total_requests"] == 2
        assert Decimal(series["totals"]["cost_usd"]) == sum(ledger.values(), ZERO) > 0
        assert series["totals"]["requests"] == sum(count for _, _, count in WORK)

        acme = (await http.get("/admin/series/spend?days=90&tenant=acme&stack=provider", headers=ADMIN)).json()
        assert len(acme["days"]) == 90 and acme["tenant"] == "acme"
        assert Decimal(acme["totals"]["cost_usd"]) == sum((v for (t, _), v in ledger.items() if t == "acme"), ZERO)
        assert {s["name"] for s in acme["series"]} == {"sim", "bad"}

        for bad in ("days=0", "days=367", "days=x", "stack=colour", "basis=maybe"):
            refused = await http.get(f"/admin/series/spend?{bad}", headers=ADMIN)
            assert refused.status_code == 400, bad
        assert (await http.get("/admin/series/spend?tenant=nobody", headers=ADMIN)).status_code == 404


async def test_tenants_and_burn_down_equal_usage_and_the_ledger() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        keys = await run_workload(gw, http)
        ledger = await ledger_spend(gw)
        tenants = {t["tenant"]: t for t in (await http.get("/admin/series/tenants", headers=ADMIN)).json()["data"]}
        for name, key in keys.items():
            usage = (await http.get("/v1/usage", headers={"Authorization": key})).json()
            assert tenants[name]["spent_usd"] == usage["spent_usd"]
            assert Decimal(usage["spent_usd"]) == sum((v for (t, _), v in ledger.items() if t == name), ZERO)
        assert tenants["acme"]["budget_usd"] == ACME_BUDGET and tenants["globex"]["budget_usd"] is None
        assert tenants["acme"]["used"] == f"{Decimal(tenants['acme']['spent_usd']) / Decimal(ACME_BUDGET):.4f}"

        burn = (await http.get("/admin/series/burn-down?tenant=acme", headers=ADMIN)).json()
        assert burn["points"][-1]["spent_usd"] == tenants["acme"]["spent_usd"]
        assert [t["usd"] for t in burn["thresholds"]] == ["0.0115", "0.0184", "0.023"]
        missing = await http.get("/admin/series/burn-down", headers=ADMIN)
        assert missing.status_code == 400


async def test_providers_and_breakers_come_from_the_outcomes_and_the_provider_events() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        await run_workload(gw, http)
        health = {p["provider"]: p for p in (await http.get("/admin/series/providers", headers=ADMIN)).json()["data"]}
        assert health["sim"]["requests"] == 5 and health["sim"]["error_rate"] == "0.0000"
        assert health["bad"]["requests"] == 2 and health["bad"]["error_rate"] == "1.0000"
        assert health["bad"]["breaker"] == "open"
        breakers = (await http.get("/admin/series/breakers?days=30", headers=ADMIN)).json()
        events = await ledger_events(gw)
        logged = [(e.from_state, e.to_state, e.reason) for e in events if isinstance(e, Provider.BreakerTransitioned)]
        assert [(t["from_state"], t["to_state"], t["reason"]) for t in breakers["transitions"]] == logged
        assert logged and all(t["provider"] == "bad" for t in breakers["transitions"])
        lanes = {lane["provider"]: lane["segments"] for lane in breakers["lanes"]}
        assert lanes["sim"] == [{"from": 0.0, "to": 1.0, "state": "closed"}]
        assert lanes["bad"][-1]["state"] == "open" and lanes["bad"][-1]["to"] == 1.0


async def test_series_need_the_admin_key() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        for path in ("spend", "tenants", "burn-down?tenant=demo", "providers", "breakers"):
            refused = await http.get(f"/admin/series/{path}", headers={"Authorization": "Bearer tg-nope"})
            assert refused.status_code == 401, path
            assert (await http.get(f"/admin/series/{path}")).status_code == 401


def test_burn_down_projects_the_run_out_day_at_the_pace_so_far() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    end = datetime(2026, 12, 1, tzinfo=UTC)
    now = start + timedelta(days=3, hours=5)  # the 4th day
    daily = {"2026-11-01": Decimal("1"), "2026-11-03": Decimal("2"), "2026-11-04": Decimal("1")}
    burn = burn_down_of(daily, Decimal("10"), start, end, now)
    assert [p["spent_usd"] for p in burn["points"]] == ["1", "1", "3", "4"]
    assert burn["projected_run_out"] == "2026-11-10"  # $1 a day: 6 more days after the 4th
    assert burn_down_of(daily, Decimal("100"), start, end, now)["projected_run_out"] is None  # not this period
    assert burn_down_of(daily, Decimal("3"), start, end, now)["projected_run_out"] == "2026-11-03"  # already
    assert burn_down_of(daily, None, start, end, now)["thresholds"] == []
    assert len(burn["days"]) == 30


def test_breaker_lanes_split_the_window_at_each_transition() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    end = start + timedelta(days=10)
    transitions = [
        {"provider": "a", "at": (start - timedelta(days=1)).isoformat(), "to_state": "open"},
        {"provider": "a", "at": (start + timedelta(days=5)).isoformat(), "to_state": "closed"},
    ]
    lanes = dict(breaker_lanes(["a", "b"], transitions, start, end))
    assert lanes["a"] == [(0.0, 0.5, "open"), (0.5, 1.0, "closed")]
    assert lanes["b"] == [(0.0, 1.0, "closed")]
