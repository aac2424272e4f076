"""The admin API, /v1/usage and the CLI on top of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import trio

from runtime.auth import DEMO_KEY
from tests.harness import ADMIN, ADMIN_KEY, in_thread, make_config, running_gateway

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "hi"}]
PRICING = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}


async def test_tenant_lifecycle() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        created = await http.post(
            "/admin/tenants",
            json={"name": "acme", "budget_usd": "25", "rpm": 60, "allowed_models": ["sim-1"]},
            headers=ADMIN,
        )
        assert created.status_code == 201, created.text
        tenant = created.json()
        key = tenant["api_key"]
        assert key.startswith("tg-") and tenant["budget_usd"] == "25" and tenant["rpm"] == 60 and tenant["enabled"]
        assert tenant["id"] and tenant["source"] == "api"
        shown = (await http.get(f"/admin/tenants/{tenant['id']}", headers=ADMIN)).json()
        assert "api_key" not in shown and key not in json.dumps(shown)
        assert (await http.get("/admin/tenants/acme", headers=ADMIN)).json()["id"] == tenant["id"]
        listed = (await http.get("/admin/tenants", headers=ADMIN)).json()["data"]
        assert [t["name"] for t in listed] == ["acme", "demo"]
        assert key not in json.dumps(listed)

        completion = await in_thread(gw.client(key=key).chat.completions.create, model="sim-1", messages=PROMPT)
        assert completion.choices[0].message.content

        duplicate = await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "conflict"

        patched = await http.patch(
            f"/admin/tenants/{tenant['id']}", json={"rpm": 120, "budget_usd": "30.5"}, headers=ADMIN
        )
        assert patched.status_code == 200 and patched.json()["rpm"] == 120 and patched.json()["budget_usd"] == "30.5"
        bad = await http.patch(f"/admin/tenants/{tenant['id']}", json={"rpm": -3}, headers=ADMIN)
        assert bad.status_code == 400 and "rpm" in bad.json()["error"]["message"]
        unknown = await http.patch(f"/admin/tenants/{tenant['id']}", json={"colour": "red"}, headers=ADMIN)
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "colour"

        disabled = await http.post(f"/admin/tenants/{tenant['id']}/disable", headers=ADMIN)
        assert disabled.json()["enabled"] is False
        enabled = await http.post(f"/admin/tenants/{tenant['id']}/enable", headers=ADMIN)
        assert enabled.json()["enabled"] is True
        missing = await http.get("/admin/tenants/nobody", headers=ADMIN)
        assert missing.status_code == 404


async def test_rotate_key_with_and_without_grace() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        tenant = (await http.post("/admin/tenants", json={"name": "rot"}, headers=ADMIN)).json()
        old = tenant["api_key"]
        body = {"model": "sim-1", "messages": PROMPT}
        rotated = (
            await http.post(f"/admin/tenants/{tenant['id']}/rotate-key", json={"grace_period_s": 3600}, headers=ADMIN)
        ).json()
        new = rotated["api_key"]
        assert new != old and rotated["previous_key_valid_until"]
        for key in (old, new):
            response = await http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, "the old key works during its grace period"
        again = (await http.post(f"/admin/tenants/{tenant['id']}/rotate-key", headers=ADMIN)).json()
        for key, status in ((old, 401), (new, 401), (again["api_key"], 200)):
            response = await http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == status


async def test_admin_endpoints_need_the_admin_key() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        for method, path in [
            ("GET", "/admin/tenants"),
            ("POST", "/admin/tenants"),
            ("GET", "/admin/spend"),
            ("GET", "/admin/events"),
            ("PUT", "/admin/pricing"),
            ("GET", "/admin/ledger"),
        ]:
            response = await http.request(method, path, headers={"Authorization": f"Bearer {DEMO_KEY}"})
            assert response.status_code == 401, path


async def test_usage_spend_and_events_read_the_ledger() -> None:
    config = make_config(pricing=PRICING)
    async with running_gateway(config) as gw, gw.http() as http:
        client = gw.client()
        for _ in range(3):
            await in_thread(
                client.chat.completions.create,
                model="sim-1",
                messages=PROMPT,
                extra_headers={"X-Request-ID": "same-id"},
            )
        usage = (await http.get("/v1/usage", headers={"Authorization": f"Bearer {DEMO_KEY}"})).json()
        assert usage["requests"] == 3
        assert usage["budget_usd"] is None and usage["remaining_usd"] is None
        assert usage["reserved_usd"] == "0"
        assert usage["period_start"].endswith("T00:00:00+00:00") and usage["period"] == "month"
        spend = (await http.get("/admin/spend", params={"group_by": "tenant,model,provider,day"}, headers=ADMIN)).json()
        (row,) = spend["data"]
        assert row["tenant"] == "demo" and row["requests"] == 3 and row["unpriced"] == 0
        assert Decimal(row["cost_usd"]) == Decimal(usage["spent_usd"]) > 0
        assert spend["totals"]["cost_usd"] == row["cost_usd"]
        nothing = (
            await http.get("/admin/spend", params={"from": "2001-01-01", "to": "2001-01-31"}, headers=ADMIN)
        ).json()
        assert nothing["data"] == [] and nothing["totals"]["cost_usd"] == "0"
        bad = await http.get("/admin/spend", params={"group_by": "colour"}, headers=ADMIN)
        assert bad.status_code == 400

        page = (await http.get("/admin/events", params={"limit": 2}, headers=ADMIN)).json()
        assert len(page["data"]) == 2 and page["next_after"] == page["data"][-1]["position"]
        rest = (await http.get("/admin/events", params={"after": page["next_after"]}, headers=ADMIN)).json()
        assert rest["data"][0]["position"] == page["next_after"] + 1
        by_request = (await http.get("/admin/events", params={"request_id": "same-id"}, headers=ADMIN)).json()["data"]
        assert [e["type"] for e in by_request] == ["Request.Admitted", "Request.Completed"] * 3
        assert by_request[1]["data"]["cost_usd"] == str(Decimal(row["cost_usd"]) / 3)
        by_tenant = (await http.get("/admin/events", params={"tenant": "demo"}, headers=ADMIN)).json()["data"]
        assert {e["type"] for e in by_tenant} >= {"Tenant.Registered", "Request.Admitted", "Request.Completed"}
        assert not any(e["type"].startswith("PriceList") for e in by_tenant)


async def test_pricing_api() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        current = (await http.get("/admin/pricing", headers=ADMIN)).json()["data"]
        assert [(p["key"], p["input_per_mtok"], p["output_per_mtok"]) for p in current] == [("sim/sim-1", "10", "20")]
        put = await http.put(
            "/admin/pricing",
            json={"prices": {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}},
            headers=ADMIN,
        )
        assert put.status_code == 200
        completion = await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
        usage = completion.usage
        assert usage is not None
        expected = (Decimal(usage.prompt_tokens) + 2 * usage.completion_tokens) / 1_000_000
        assert Decimal(completion.model_extra["x_gateway"]["cost_usd"]) == expected
        history = (await http.get("/admin/pricing", params={"history": "true"}, headers=ADMIN)).json()["data"]
        assert len(history) == 2
        for body, param in [
            ({"prices": {"nope/x": {"input_per_mtok": "1", "output_per_mtok": "1"}}}, "prices.nope/x"),
            ({"prices": {"sim/sim-1": {"input_per_mtok": 1.5, "output_per_mtok": "1"}}}, "prices.sim/sim-1"),
            ({"prices": {}}, "prices"),
            ({"prices": {"sim/sim-1": None}, "effective_from": "yesterday"}, "effective_from"),
        ]:
            response = await http.put("/admin/pricing", json=body, headers=ADMIN)
            assert response.status_code == 400, body
            assert response.json()["error"]["param"] == param
        half_bad = {
            "sim/sim-1": {"input_per_mtok": "7", "output_per_mtok": "7"},
            "nope/x": {"input_per_mtok": "1", "output_per_mtok": "1"},
        }
        assert (await http.put("/admin/pricing", json={"prices": half_bad}, headers=ADMIN)).status_code == 400
        await http.put(
            "/admin/pricing",
            json={"prices": {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}},
            headers=ADMIN,
        )
        history = (await http.get("/admin/pricing", params={"history": "true"}, headers=ADMIN)).json()["data"]
        assert "7" not in [p["input_per_mtok"] for p in history], "a refused PUT applies nothing, now or later"
        removed = await http.put("/admin/pricing", json={"prices": {"sim/sim-1": None}}, headers=ADMIN)
        assert removed.status_code == 200
        unpriced = await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
        assert unpriced.model_extra["x_gateway"]["cost_usd"] is None


@pytest.mark.slow
async def test_cli_talks_to_the_admin_api() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw:
        env = {**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN_KEY}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "runtime.cli", *args, "--url", gw.url],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                check=False,
            )

        created = await trio.to_thread.run_sync(
            lambda: cli("tenants", "create", "cli-co", "--rpm", "10", "--allowed-models", "sim-1", "--format", "json")
        )
        assert created.returncode == 0, created.stderr
        body = json.loads(created.stdout)
        assert body["rpm"] == 10 and body["allowed_models"] == ["sim-1"] and body["api_key"].startswith("tg-")
        await in_thread(gw.client(key=body["api_key"]).chat.completions.create, model="sim-1", messages=PROMPT)
        listed = await trio.to_thread.run_sync(lambda: cli("tenants", "list"))
        assert "cli-co" in listed.stdout and "demo" in listed.stdout
        spend = await trio.to_thread.run_sync(lambda: cli("spend", "--format", "csv", "--group-by", "tenant"))
        assert spend.stdout.splitlines()[0] == (
            "tenant,requests,prompt_tokens,completion_tokens,cached_tokens,unpriced,interrupted_unknown_usage,"
            "cache_hits,saved_unpriced,cost_usd,saved_usd"
        )
        assert spend.stdout.splitlines()[1].startswith("cli-co,1,")
        priced = await trio.to_thread.run_sync(
            lambda: cli("pricing", "set", "sim/sim-1", "--input", "3", "--output", "4")
        )
        assert priced.returncode == 0 and "sim/sim-1" in priced.stdout
        events = await trio.to_thread.run_sync(lambda: cli("events", "--tenant", "cli-co", "--format", "json"))
        types = [e["type"] for e in json.loads(events.stdout)["data"]]
        assert types == ["Tenant.Registered", "Request.Admitted", "Request.Completed"]
        env["TOLLGATE_ADMIN_KEY"] = "wrong"
        denied = await trio.to_thread.run_sync(lambda: cli("tenants", "list"))
        assert denied.returncode == 1 and "401" in denied.stderr


@pytest.mark.parametrize("key", [DEMO_KEY])
async def test_disabled_tenant_cannot_authenticate_models_endpoint_still_lists(key: str) -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        models = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert [m["id"] for m in models.json()["data"]] == ["sim-1"]
        with pytest.raises(openai.AuthenticationError):
            await in_thread(gw.client(key="tg-unknown").models.list)
