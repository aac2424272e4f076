"""The response cache through the real gateway: hits are ledger events, scoped to their tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from events.request import Request
from runtime.auth import DEMO_KEY, hash_key
from runtime.ledger.replay import verify_open
from tests.harness import ADMIN_KEY, in_thread, make_config, running_gateway

PROMPT = [{"role": "user", "content": "Say something about ledgers."}]
PRICING = {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}
OTHER_KEY = "tg-other-tenant-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def cached_config(cache: str = "all", **sections: Any) -> Any:
    tenants = [
        {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY), "cache": cache, "cache_ttl_s": 600},
        {"name": "other", "api_key_sha256": hash_key(OTHER_KEY), "cache": cache},
    ]
    return make_config(tenants=tenants, pricing=PRICING, **sections)


async def chat(
    http: httpx.AsyncClient, key: str = DEMO_KEY, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    body = {"model": "sim-1", "messages": PROMPT, **body}
    return await http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **(headers or {})}
    )


async def test_a_second_identical_request_is_a_hit_billed_zero_with_its_saving() -> None:
    async with running_gateway(cached_config()) as gw, gw.http() as http:
        first = await chat(http)
        second = await chat(http)
        assert first.status_code == second.status_code == 200
        assert first.headers["x-tollgate-cache"] == "miss"
        assert second.headers["x-tollgate-cache"] == "hit"
        one, two = first.json(), second.json()
        assert two["choices"] == one["choices"] and two["usage"] == one["usage"]
        assert one["x_gateway"]["cache_hit"] is False and two["x_gateway"]["cache_hit"] is True
        assert Decimal(two["x_gateway"]["cost_usd"]) == 0
        assert Decimal(two["x_gateway"]["saved_usd"]) == Decimal(one["x_gateway"]["cost_usd"]) > 0
        request = await gw.gateway.load(uuid.UUID(two["x_gateway"]["ledger_id"]), Request)
        assert request is not None and request.outcome == "cache_hit"
        (hit,) = [e for e in gw.gateway.store.read(0) if isinstance(e.event, Request.ServedFromCache)]
        assert hit.event.cost_usd == 0 and hit.event.saved_usd == Decimal(one["x_gateway"]["cost_usd"])
        assert hit.event.prompt_tokens == one["usage"]["prompt_tokens"]
        assert hit.event.completion_tokens == one["usage"]["completion_tokens"]
        assert gw.gateway.reserved_usd("demo") == 0, "the hit's reservation is released"

        usage = (await http.get("/v1/usage", headers={"Authorization": f"Bearer {DEMO_KEY}"})).json()
        assert usage["requests"] == 2 and usage["cache_hits"] == 1
        assert Decimal(usage["spent_usd"]) == Decimal(one["x_gateway"]["cost_usd"]), "a hit bills nothing"
        assert Decimal(usage["saved_usd"]) == Decimal(two["x_gateway"]["saved_usd"])
        spend = (await http.get("/admin/spend", headers=ADMIN)).json()
        assert spend["totals"]["cache_hits"] == 1 and spend["totals"]["saved_usd"] == usage["saved_usd"]

        metrics = (await http.get("/metrics")).text
        assert 'tollgate_cache_lookups_total{result="hit",tenant="demo"} 1.0' in metrics
        assert 'tollgate_cache_lookups_total{result="miss",tenant="demo"} 1.0' in metrics
        assert "tollgate_cache_saved_usd_total" in metrics

        await gw.gateway.projector.wait_for(gw.gateway.journal.position)
        assert await gw.gateway.projector.query(lambda p: verify_open(gw.gateway.store, p)) == []


async def test_another_tenant_asking_the_same_never_gets_the_entry() -> None:
    async with running_gateway(cached_config()) as gw, gw.http() as http:
        assert (await chat(http)).headers["x-tollgate-cache"] == "miss"
        theirs = await chat(http, OTHER_KEY)
        assert theirs.headers["x-tollgate-cache"] == "miss"
        assert theirs.json()["x_gateway"]["cache_hit"] is False
        assert (await chat(http, OTHER_KEY)).headers["x-tollgate-cache"] == "hit", "their own entry"


async def test_no_cache_bypasses_and_refreshes_no_store_does_not_write() -> None:
    async with running_gateway(cached_config()) as gw, gw.http() as http:
        assert (await chat(http, headers={"Cache-Control": "no-store"})).headers["x-tollgate-cache"] == "miss"
        assert (await chat(http, headers={"Cache-Control": "no-store"})).headers["x-tollgate-cache"] == "miss"
        assert (await chat(http, headers={"Cache-Control": "no-cache"})).headers["x-tollgate-cache"] == "bypass"
        assert (await chat(http)).headers["x-tollgate-cache"] == "hit", "no-cache still stored its fresh answer"
        bypassed = await chat(http, headers={"Cache-Control": "max-age=0, No-Cache"})
        assert bypassed.headers["x-tollgate-cache"] == "bypass"
        assert bypassed.json()["x_gateway"]["cache_hit"] is False


async def test_off_is_bypass_and_deterministic_caches_only_temperature_zero_or_a_seed() -> None:
    async with running_gateway(cached_config("off")) as gw, gw.http() as http:
        assert (await chat(http, temperature=0)).headers["x-tollgate-cache"] == "bypass"
        assert (await chat(http, temperature=0)).headers["x-tollgate-cache"] == "bypass"
    async with running_gateway(cached_config("deterministic")) as gw, gw.http() as http:
        assert (await chat(http)).headers["x-tollgate-cache"] == "bypass"
        assert (await chat(http, temperature=0.7)).headers["x-tollgate-cache"] == "bypass"
        assert (await chat(http, temperature=0)).headers["x-tollgate-cache"] == "miss"
        assert (await chat(http, temperature=0)).headers["x-tollgate-cache"] == "hit"
        assert (await chat(http, temperature=0.7, seed=7)).headers["x-tollgate-cache"] == "miss"
        assert (await chat(http, temperature=0.7, seed=7)).headers["x-tollgate-cache"] == "hit"
        assert (await chat(http, temperature=0.7, seed=8)).headers["x-tollgate-cache"] == "miss"


async def test_a_stream_fills_the_cache_and_a_hit_replays_as_the_same_stream() -> None:
    async with running_gateway(cached_config()) as gw:
        client = gw.client()

        def consume(**extra: Any) -> tuple[list[Any], str]:
            raw = client.chat.completions.with_raw_response.create(model="sim-1", messages=PROMPT, stream=True, **extra)
            return list(raw.parse()), raw.headers["x-tollgate-cache"]

        original, status = await in_thread(consume, stream_options={"include_usage": True})
        assert status == "miss"
        replayed, status = await in_thread(consume, stream_options={"include_usage": True})
        assert status == "hit"

        def text(chunks: list[Any]) -> str:
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        def finish(chunks: list[Any]) -> list[str]:
            return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]

        assert text(replayed) == text(original) != ""
        assert finish(replayed) == finish(original) == ["stop"]
        assert replayed[-1].choices == [] and replayed[-1].usage == original[-1].usage
        assert replayed[-1].model_extra["x_gateway"]["cache_hit"] is True
        assert replayed[0].choices[0].delta.role == "assistant"

        plain, status = await in_thread(consume)  # no usage chunk asked for
        assert status == "hit" and text(plain) == text(original)
        assert all(c.choices for c in plain), "no usage chunk unless asked"
        whole = await in_thread(client.chat.completions.with_raw_response.create, model="sim-1", messages=PROMPT)
        assert whole.headers["x-tollgate-cache"] == "hit"
        assert whole.parse().choices[0].message.content == text(original)


async def test_admission_still_applies_to_hits() -> None:
    providers = [{"name": "sim", "kind": "simulator", "models": ["sim-1", "sim-2"]}]
    async with running_gateway(cached_config(providers=providers)) as gw, gw.http() as http:
        created = await http.post("/admin/tenants", json={"name": "acme", "cache": "all"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        key = created.json()["api_key"]
        assert (await chat(http, key)).headers["x-tollgate-cache"] == "miss"
        assert (await chat(http, key)).headers["x-tollgate-cache"] == "hit"

        patched = await http.patch("/admin/tenants/acme", json={"allowed_models": ["sim-2"]}, headers=ADMIN)
        assert patched.status_code == 200, patched.text
        refused = await chat(http, key)
        assert refused.status_code == 403 and "x-tollgate-cache" not in refused.headers
        assert "error" in refused.json()

        await http.patch("/admin/tenants/acme", json={"allowed_models": []}, headers=ADMIN)
        assert (await chat(http, key)).headers["x-tollgate-cache"] == "hit"
        assert (await http.post("/admin/tenants/acme/disable", headers=ADMIN)).status_code == 200
        disabled = await chat(http, key)
        assert disabled.status_code in (401, 403) and "x-tollgate-cache" not in disabled.headers
        hits = [e for e in gw.gateway.store.read(0, 10_000) if isinstance(e.event, Request.ServedFromCache)]
        assert len(hits) == 2


async def test_an_entry_expires_after_the_tenants_ttl_in_virtual_wall_time() -> None:
    now = [datetime(2026, 12, 2, 12, 0, tzinfo=UTC)]
    async with running_gateway(cached_config(), clock=lambda: now[0]) as gw, gw.http() as http:
        assert (await chat(http)).headers["x-tollgate-cache"] == "miss"
        now[0] += timedelta(seconds=599)
        assert (await chat(http)).headers["x-tollgate-cache"] == "hit"
        now[0] += timedelta(seconds=1)
        assert (await chat(http)).headers["x-tollgate-cache"] == "miss", "600 s after it was written"
        assert (await chat(http)).headers["x-tollgate-cache"] == "hit"


async def test_the_tenant_cache_policy_is_validated_by_the_admin_api() -> None:
    async with running_gateway(cached_config()) as gw, gw.http() as http:
        bad = await http.post("/admin/tenants", json={"name": "acme", "cache": "sometimes"}, headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache"
        bad = await http.post("/admin/tenants", json={"name": "acme", "cache_ttl_s": 0}, headers=ADMIN)
        assert bad.status_code == 400 and "cache_ttl_s" in bad.json()["error"]["message"]
        good = await http.post("/admin/tenants", json={"name": "acme", "cache": "deterministic"}, headers=ADMIN)
        assert good.status_code == 201 and good.json()["cache"] == "deterministic"


async def test_repricing_restates_a_hits_saving_and_never_bills_it() -> None:
    async with running_gateway(cached_config()) as gw, gw.http() as http:
        miss = (await chat(http)).json()
        hit = (await chat(http)).json()
        assert hit["x_gateway"]["cache_hit"] is True
        tenfold = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}
        report = await http.post("/admin/reprice", json={"prices": tenfold, "commit": True}, headers=ADMIN)
        assert report.status_code == 200, report.text
        totals = report.json()["totals"]
        assert totals["restated"] == 1 and totals["savings_restated"] == 1 and totals["requests"] == 1
        events = [e.event for e in gw.gateway.store.read(0, 10_000)]
        (saving,) = [e for e in events if isinstance(e, Request.SavingRestated)]
        assert saving.old_saved_usd == Decimal(hit["x_gateway"]["saved_usd"])
        assert saving.new_saved_usd == 10 * saving.old_saved_usd
        (cost,) = [e for e in events if isinstance(e, Request.CostRestated)]
        assert str(cost.originator_id) == miss["x_gateway"]["ledger_id"], "only the miss is billed again"

        await gw.gateway.projector.wait_for(gw.gateway.journal.position)
        usage = (await http.get("/v1/usage", headers={"Authorization": f"Bearer {DEMO_KEY}"})).json()
        assert Decimal(usage["spent_usd"]) == 10 * Decimal(miss["x_gateway"]["cost_usd"])
        assert Decimal(usage["saved_usd"]) == saving.new_saved_usd
        assert await gw.gateway.projector.query(lambda p: verify_open(gw.gateway.store, p)) == []

        again = await http.post("/admin/reprice", json={"prices": tenfold, "commit": True}, headers=ADMIN)
        assert again.json()["totals"]["savings_restated"] == 0, "a saving already at the new price is skipped"
        back = {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}
        twice = await http.post("/admin/reprice", json={"prices": back, "commit": True}, headers=ADMIN)
        assert twice.json()["totals"]["savings_restated"] == 1, "a second restatement of the same hit"
        await gw.gateway.projector.wait_for(gw.gateway.journal.position)
        usage = (await http.get("/v1/usage", headers={"Authorization": f"Bearer {DEMO_KEY}"})).json()
        assert Decimal(usage["saved_usd"]) == Decimal(hit["x_gateway"]["saved_usd"])
