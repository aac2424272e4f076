"""`GET /metrics` (issue #15): the exposition parses with prometheus-client's own parser, its values
after a known workload equal the ledger's, and its cardinality stays bounded."""

from __future__ import annotations

import json
import random
import re
import string
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from events.projections import spend_report
from runtime.auth import DEMO_KEY
from runtime.metrics import Metrics
from tests.harness import ADMIN, in_thread, make_config, running_gateway

PROMPT = [{"role": "user", "content": "hi"}]
PRICING = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


def samples(text: str) -> dict[str, list[Any]]:
    """Samples by sample name, from the parser prometheus-client ships."""
    found: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(found: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in found.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def test_metrics_after_a_known_workload_equal_the_ledger() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        client = gw.client()
        for _ in range(3):
            await in_thread(client.chat.completions.create, model="sim-1", messages=PROMPT)
        stream = await in_thread(client.chat.completions.create, model="sim-1", messages=PROMPT, stream=True)
        await in_thread(lambda: list(stream))
        unknown = await http.post("/v1/chat/completions", json={"model": "nope", "messages": PROMPT}, headers=AUTH)
        assert unknown.status_code == 404
        bad_key = await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT})
        assert bad_key.status_code == 401

        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)
        rows = await gw.gateway.projector.query(lambda p: spend_report(p, group_by=("tenant",)))
        ledger = rows[0]

        assert value(found, "tollgate_requests_total", tenant="demo", model="sim-1", outcome="ok", status="200") == 4
        assert value(found, "tollgate_requests_total", tenant="demo", model="other", status="404") == 1
        assert value(found, "tollgate_requests_total", tenant="other", status="401", outcome="unauthenticated") == 1
        assert value(found, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == ledger["prompt_tokens"]
        assert value(found, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == ledger["completion_tokens"]
        assert value(found, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 4
        cost = value(found, "tollgate_cost_usd_total", tenant="demo", model="sim-1", provider="sim")
        assert cost == float(Decimal(ledger["cost_usd"])) and cost > 0
        assert value(found, "tollgate_attempts_total", provider="sim", result="ok") == 4
        assert value(found, "gen_ai_client_operation_duration_seconds_count", gen_ai_provider_name="sim") == 4
        assert value(found, "tollgate_overhead_seconds_count", provider="sim") == 4
        assert value(found, "gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model="sim-1") == 1
        assert value(found, "tollgate_journal_commit_seconds_count") >= 1
        assert value(found, "tollgate_journal_batch_events_count") == value(found, "tollgate_journal_commits")
        assert value(found, "tollgate_breaker_state", provider="sim", state="closed") == 1
        assert value(found, "tollgate_breaker_state", provider="sim", state="open") == 0
        assert "tollgate_journal_queue_depth" in found and "tollgate_projector_lag_positions" in found
        assert value(found, "tollgate_http_in_flight") >= 1  # this scrape (the one before may be finishing)
        assert value(found, "tollgate_budget_reserved_usd", tenant="demo") == 0


async def test_metrics_can_be_switched_off() -> None:
    async with running_gateway(make_config(metrics={"enabled": False})) as gw, gw.http() as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_random_model_names_add_a_bounded_number_of_series() -> None:
    """10 000 requests for random model names (recorded as the gateway records them: rejected,
    settled, counted at the edge) add no series beyond the `other` ones; a smaller set goes through
    the real gateway."""
    metrics = Metrics(["demo"], ["sim-1"])
    rng = random.Random(15)

    def series() -> int:
        return sum(len(family.samples) for family in metrics.registry.collect())

    def names() -> str:
        return "".join(rng.choices(string.ascii_lowercase, k=12))

    for _ in range(100):
        metrics.finished(names(), names(), "sim", "model_not_found", 404)
        metrics.settled(names(), names(), "sim", "ok", 3, 5, Decimal("0.0001"), 0.01, 0.001)
    before = series()
    for _ in range(10_000):
        metrics.finished(names(), names(), "sim", "model_not_found", 404)
        metrics.settled(names(), names(), "sim", "ok", 3, 5, Decimal("0.0001"), 0.01, 0.001)
    assert series() == before

    async with running_gateway(make_config()) as gw, gw.http() as http:
        client = gw.client()
        for _ in range(20):
            with pytest.raises(openai.NotFoundError):
                await in_thread(client.chat.completions.create, model=names(), messages=PROMPT)
        found = samples((await http.get("/metrics")).text)
        models = {s.labels["model"] for s in found["tollgate_requests_total"]}
        assert models == {"other"}
        assert value(found, "tollgate_requests_total", model="other", status="404") == 20


async def test_metrics_on_their_own_port() -> None:
    async with running_gateway(make_config(metrics={"port": 0})) as gw, gw.http() as http:
        await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
        assert (await http.get("/metrics")).status_code == 404  # not on the API port
        url = gw.gateway.metrics.url
        assert url is not None and url != gw.url
        async with httpx.AsyncClient(base_url=url) as scraper:
            found = samples((await scraper.get("/metrics")).text)
            assert (await scraper.get("/v1/models")).status_code == 404
        assert value(found, "tollgate_requests_total", tenant="demo", status="200") == 1
        assert "tollgate_journal_queue_depth" in found


DASHBOARD = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text())


async def test_the_grafana_dashboard_uses_only_metrics_the_gateway_exports() -> None:
    dashboard = DASHBOARD
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    labels = {"gen_ai_token_type", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_operation_name"}
    used = {name for expr in exprs for name in re.findall(r"\b(?:tollgate|gen_ai)_[a-z_]+", expr)} - labels
    async with running_gateway(make_config()) as gw, gw.http() as http:
        text = (await http.get("/metrics")).text
    families = {family.name for family in text_string_to_metric_families(text)}
    suffixes = ("_total", "_bucket", "_sum", "_count")
    exported = families | {family + suffix for family in families for suffix in suffixes}
    assert used and used <= exported, sorted(used - exported)


async def test_metrics_can_require_the_admin_key() -> None:
    config = make_config(metrics={"require_admin_key": True})
    async with running_gateway(config) as gw, gw.http() as http:
        refused = await http.get("/metrics")
        scraped = await http.get("/metrics", headers=ADMIN)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert scraped.status_code == 200 and "tollgate_requests_total" in scraped.text


async def test_metrics_on_their_own_port_can_require_the_admin_key() -> None:
    async with running_gateway(make_config(metrics={"port": 0, "require_admin_key": True})) as gw:
        url = gw.gateway.metrics.url
        assert url is not None
        async with httpx.AsyncClient(base_url=url) as scraper:
            refused = await scraper.get("/metrics")
            scraped = await scraper.get("/metrics", headers=ADMIN)
    assert refused.status_code == 401 and "admin key" in refused.text
    assert scraped.status_code == 200 and "tollgate_journal_queue_depth" in scraped.text
