"""Re-pricing: history is never rewritten; restatements are appended and every projection folds them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.money import ZERO, usd
from events.projections import Projections, spend_report
from events.repricing import Repricing
from events.request import Request
from events.store import LedgerStore
from events.tenant import Tenant, tenant_id
from events.usage import Usage
from policies.cost import Price, PriceBook, PriceEntry
from policies.repricing import Filters, PriceSet, flat_prices, ledger_history
from runtime.auth import DEMO_KEY
from runtime.cli.progress import Progress
from runtime.ledger.replay import verify_open
from runtime.ledger.reprice import Scan, dry_run, restatement_events
from tests.harness import ADMIN, ADMIN_KEY, ledger_events, make_config, running_gateway

DEMO = {"Authorization": f"Bearer {DEMO_KEY}"}
PROMPT = [{"role": "user", "content": "hello there"}]
RIGHT = {"input_per_mtok": "10", "output_per_mtok": "20"}
TYPO = {"input_per_mtok": "10000", "output_per_mtok": "20000"}  # a 1000× typo


def cost(usage: Any, price: dict[str, str]) -> Decimal:
    return usd(
        (
            usage.prompt_tokens * Decimal(price["input_per_mtok"])
            + usage.completion_tokens * Decimal(price["output_per_mtok"])
        )
        / 1_000_000
    )


async def test_a_1000x_typo_is_fixed_retroactively_and_the_original_costs_stay_in_the_log() -> None:
    config = make_config(pricing={"sim/sim-1": RIGHT})
    async with running_gateway(config) as gw, gw.http() as http:
        typo = await http.put("/admin/pricing", json={"prices": {"sim/sim-1": TYPO}}, headers=ADMIN)
        typo_from = typo.json()["data"][0]["effective_from"]
        keys = {}
        for name in ("acme", "globex"):
            created = await http.post("/admin/tenants", json={"name": name}, headers=ADMIN)
            keys[name] = {"Authorization": f"Bearer {created.json()['api_key']}"}
        for name, count in (("acme", 3), ("globex", 2)):
            for _ in range(count):
                body = {"model": "sim-1", "messages": PROMPT, "max_tokens": 20}
                response = await http.post("/v1/chat/completions", json=body, headers=keys[name])
                assert response.status_code == 200, response.text
        # The price list is corrected (same effective time: the later entry wins) ...
        await http.put(
            "/admin/pricing", json={"prices": {"sim/sim-1": RIGHT}, "effective_from": typo_from}, headers=ADMIN
        )
        events = await ledger_events(gw)
        admitted = {e.originator_id: e.tenant for e in events if isinstance(e, Request.Admitted)}
        completed = [e for e in events if isinstance(e, Request.Completed)]
        old = {n: sum((e.cost_usd for e in completed if admitted[e.originator_id] == n), ZERO) for n in keys}
        new = {n: sum((cost(e, RIGHT) for e in completed if admitted[e.originator_id] == n), ZERO) for n in keys}
        assert all(old[n] == 1000 * new[n] for n in keys)
        # ... and acme gets a budget its typo'd spend is over, and its corrected spend is well under.
        budget = new["acme"] + Decimal("0.01")
        await http.patch("/admin/tenants/acme", json={"budget_usd": str(budget)}, headers=ADMIN)
        body = {"model": "sim-1", "messages": PROMPT, "max_tokens": 20}
        refused = await http.post("/v1/chat/completions", json=body, headers=keys["acme"])
        assert refused.status_code == 402 and "Budget exceeded" in refused.text

        before_dry_run = await ledger_events(gw)
        dry = await http.post("/admin/reprice", json={"ledger": True}, headers=ADMIN)
        report = dry.json()
        assert dry.status_code == 200 and report["committed"] is False
        by_tenant = {row["tenant"]: row for row in report["rows"]}
        for name in keys:
            assert by_tenant[name]["old_usd"] == str(old[name].normalize())
            assert by_tenant[name]["new_usd"] == str(new[name].normalize())
            assert Decimal(by_tenant[name]["delta_usd"]) == new[name] - old[name]
        assert report["totals"]["requests"] == 5 and report["totals"]["newly_priced"] == 0
        assert Decimal(report["totals"]["delta_usd"]) == sum(new.values()) - sum(old.values())
        assert await ledger_events(gw) == before_dry_run  # a dry run writes nothing

        committed = (await http.post("/admin/reprice", json={"ledger": True, "commit": True}, headers=ADMIN)).json()
        assert committed["committed"] and committed["totals"] == report["totals"]
        spend = (await http.get("/admin/spend", params={"group_by": "tenant"}, headers=ADMIN)).json()
        recorded = (
            await http.get("/admin/spend", params={"group_by": "tenant", "basis": "as_recorded"}, headers=ADMIN)
        ).json()
        assert {r["tenant"]: Decimal(r["cost_usd"]) for r in spend["data"]} == new
        assert {r["tenant"]: Decimal(r["cost_usd"]) for r in recorded["data"]} == old
        usage = (await http.get("/v1/usage", headers=keys["acme"])).json()
        assert Decimal(usage["spent_usd"]) == new["acme"] and Decimal(usage["remaining_usd"]) > 0
        # The running actor's budget reflects the restatement: acme is admitted again.
        assert gw.gateway.tenants.find(str(tenant_id("acme"))) is not None
        admitted_again = await http.post("/v1/chat/completions", json=body, headers=keys["acme"])
        assert admitted_again.status_code == 200, admitted_again.text

        after = await ledger_events(gw)
        assert after[: len(events)] == events  # nothing stored was modified
        restated = [e for e in after if isinstance(e, Request.CostRestated)]
        assert len(restated) == 5 and {(e.old_cost_usd, e.new_cost_usd) for e in restated} == {
            (e.cost_usd, cost(e, RIGHT)) for e in completed
        }
        (record,) = [e for e in after if isinstance(e, Repricing.Committed)]
        assert record.restated == 5 and record.fingerprint == committed["fingerprint"]
        assert all(e.repricing_id == str(record.originator_id) for e in restated)
        page = (await http.get("/admin/events", params={"tenant": "acme", "limit": 1000}, headers=ADMIN)).json()
        assert sum(e["type"] == "Request.CostRestated" for e in page["data"]) == 3

        again = (await http.post("/admin/reprice", json={"ledger": True, "commit": True}, headers=ADMIN)).json()
        assert again["committed"] is False and again["totals"]["restated"] == 0
        assert await ledger_events(gw) == after  # nothing appended: not even a second record

        gateway = gw.gateway
        await gateway.projector.wait_for(gateway.journal.position)
        problems = await trio.to_thread.run_sync(
            lambda: verify_open(gateway.store, gateway.projector.projections), limiter=gateway.projector._limiter
        )
        assert problems == []


async def test_a_restatement_upward_crosses_budget_alerts_in_the_running_actor() -> None:
    async with running_gateway(make_config(pricing={"sim/sim-1": RIGHT})) as gw, gw.http() as http:
        created = await http.post("/admin/tenants", json={"name": "watched"}, headers=ADMIN)
        auth = {"Authorization": f"Bearer {created.json()['api_key']}"}
        body = {"model": "sim-1", "messages": PROMPT, "max_tokens": 20}
        for _ in range(2):
            assert (await http.post("/v1/chat/completions", json=body, headers=auth)).status_code == 200
        completed = [e for e in await ledger_events(gw) if isinstance(e, Request.Completed)]
        corrected = sum((cost(e, TYPO) for e in completed), ZERO)
        budget = usd(corrected * Decimal("1.5"))  # the corrected spend is two thirds of it: past 50 %, not 80 %
        await http.patch("/admin/tenants/watched", json={"budget_usd": str(budget)}, headers=ADMIN)
        reprice = {"prices": {"sim/sim-1": TYPO}, "tenant": "watched", "commit": True}
        assert (await http.post("/admin/reprice", json=reprice, headers=ADMIN)).json()["totals"]["restated"] == 2
        # The next admission goes through the actor's mailbox after the restatement, and its commit
        # carries the alert the actor queued before it.
        assert (await http.post("/v1/chat/completions", json=body, headers=auth)).status_code == 200
        alerts = [e for e in await ledger_events(gw) if isinstance(e, Tenant.BudgetThresholdCrossed)]
        assert [(a.level, a.spent_usd, a.budget_usd) for a in alerts] == [(50, corrected, budget)]


async def test_reprice_refuses_bad_requests_by_param() -> None:
    async with running_gateway(make_config(pricing={"sim/sim-1": RIGHT})) as gw, gw.http() as http:
        cases = [
            ({}, "prices"),
            ({"ledger": True, "as_of": "2026-01-01"}, "prices"),
            ({"prices": {"sim-1": RIGHT}}, 'prices."sim-1"'),
            (
                {"prices": {"sim/sim-1": {"input_per_mtok": 1.5, "output_per_mtok": "2"}}},
                'prices."sim/sim-1".input_per_mtok',
            ),
            ({"ledger": True, "from": "yesterday"}, "from"),
            ({"ledger": True, "commit": "yes"}, "commit"),
        ]
        for body, param in cases:
            response = await http.post("/admin/reprice", json=body, headers=ADMIN)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["param"] == param
        assert (await http.post("/admin/reprice", json={"ledger": True})).status_code == 401


async def test_newly_priced_requests_are_listed_and_unpriced_counts_fall() -> None:
    config = make_config()  # sim-1 has no price: its requests are recorded unpriced
    async with running_gateway(config) as gw, gw.http() as http:
        auth = {**DEMO, "X-Request-ID": "r-unpriced"}
        response = await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT}, headers=auth)
        assert response.status_code == 200
        body = {"prices": {"sim/sim-1": RIGHT}, "commit": True}
        report = (await http.post("/admin/reprice", json=body, headers=ADMIN)).json()
        assert report["totals"]["newly_priced"] == 1 and report["newly_priced_requests"] == ["r-unpriced"]
        spend = (await http.get("/admin/spend", headers=ADMIN)).json()
        recorded = (await http.get("/admin/spend", params={"basis": "as_recorded"}, headers=ADMIN)).json()
        assert spend["totals"]["unpriced"] == 0 and Decimal(spend["totals"]["cost_usd"]) > 0
        assert recorded["totals"]["unpriced"] == 1 and recorded["totals"]["cost_usd"] == "0"


# --- properties, on the ledger itself -------------------------------------------------------------

KEYS = ("p/m1", "p/m2", "q/m1")
START = datetime(2026, 1, 1, tzinfo=UTC)
rates = st.integers(0, 5000).map(lambda n: Decimal(n) / 100)
prices = st.builds(Price, rates, rates, st.one_of(st.none(), rates))
# A price set leaves the requests it has no price for as they are, so A→B→C equals A→C when B and C
# price the same keys: every set here prices them all.
price_sets = st.fixed_dictionaries({key: prices for key in KEYS})
history = st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 100), st.one_of(st.none(), prices)), max_size=8)
requests = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(KEYS),
        st.integers(0, 100),
        st.integers(0, 5000),
        st.integers(0, 5000),
        st.integers(0, 6000),
        st.sampled_from([Request.Completed, Request.Completed, Request.Cancelled, Request.Failed]),
    ),
    min_size=1,
    max_size=30,
)


def write_ledger(
    path: str, price_history: list[Any], workload: list[Any]
) -> tuple[LedgerStore, Projections, PriceBook]:
    """Requests priced as the gateway prices them (the book in force at received_at), projected live."""
    book = PriceBook(PriceEntry(k, START + timedelta(hours=h), p) for k, h, p in price_history)
    store, projections = LedgerStore(path), Projections(":memory:")
    aggregates = []
    for tenant, key, hour, prompt, completion, cached, kind in workload:
        provider, model = key.split("/")
        at = START + timedelta(hours=hour, minutes=30)
        cached = min(cached, prompt)  # billed usage never has more cached than prompt tokens (replay checks it)
        usage = Usage(prompt, completion, cached)
        priced = book.price(provider, model, usage, at)
        request = Request.admit(str(uuid.uuid4()), tenant, model, False, ZERO, at)
        request.settle(
            kind,
            provider=provider,
            served_model=model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            usage_source="provider",
            cost_usd=priced.cost_usd,
            price_ref=priced.price_ref,
            latency_us=1,
            overhead_us=0,
            outcome="ok",
        )
        aggregates.append(request)
    projections.apply(store.append(aggregates))
    return store, projections, book


def commit(store: LedgerStore, projections: Projections, price_set: PriceSet, filters: Filters | None = None) -> int:
    """What `run_in_gateway` does, without a gateway: append each page's restatements."""
    scan, appended = Scan(store, price_set, filters or Filters(), store.position()), 0
    repricing_id = uuid.uuid4()
    while (found := scan.step()) is not None:
        if found:
            projections.apply(store.append(restatement_events(found, price_set, repricing_id)))
            appended += len(found)
    return appended


def spend(projections: Projections, basis: str = "restated") -> list[dict[str, Any]]:
    return spend_report(projections, group_by=("tenant", "day", "model", "provider"), basis=basis)


def ledger_case(test: Any) -> Any:
    return settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])(test)


@ledger_case
@given(history, requests)
def test_repricing_with_the_prices_in_force_reproduces_every_recorded_cost(
    price_history: list[Any], workload: list[Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, projections, book = write_ledger(str(Path(tmp) / "l.sqlite3"), price_history, workload)
        report = dry_run(store, ledger_history(book), Filters())
        assert report.totals["delta_usd"] == "0" and report.totals["restated"] == 0
        assert report.totals["requests"] == len(workload)
        assert commit(store, projections, ledger_history(book)) == 0
        store.close()


@pytest.mark.slow
@ledger_case
@given(history, requests, price_sets, price_sets)
def test_restating_a_to_b_then_b_to_c_equals_a_to_c_and_replay_stays_clean(
    price_history: list[Any], workload: list[Any], b: dict[str, Price], c: dict[str, Price]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one, one_projections, _ = write_ledger(str(Path(tmp) / "one.sqlite3"), price_history, workload)
        two, two_projections, _ = write_ledger(str(Path(tmp) / "two.sqlite3"), price_history, workload)
        recorded = spend(one_projections)
        commit(one, one_projections, flat_prices(b))
        commit(one, one_projections, flat_prices(c))
        commit(two, two_projections, flat_prices(c))
        assert spend(one_projections) == spend(two_projections)
        assert dry_run(one, flat_prices(c), Filters()).totals == dry_run(two, flat_prices(c), Filters()).totals
        assert spend(one_projections, "as_recorded") == recorded == spend(two_projections, "as_recorded")
        assert commit(one, one_projections, flat_prices(c)) == 0  # a committed run repeated is a no-op
        assert verify_open(one, one_projections) == [] and verify_open(two, two_projections) == []
        one.close()
        two.close()


@ledger_case
@given(history, requests, price_sets, st.sampled_from(["a", "b", None]), st.integers(0, 100))
def test_filters_restate_only_what_they_select(
    price_history: list[Any], workload: list[Any], b: dict[str, Price], tenant: str | None, hour: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, projections, _ = write_ledger(str(Path(tmp) / "l.sqlite3"), price_history, workload)
        before = {(r["tenant"], r["day"], r["model"], r["provider"]): r["cost_usd"] for r in spend(projections)}
        filters = Filters(start=START + timedelta(hours=hour), tenant=tenant, provider="p")
        report = dry_run(store, flat_prices(b), filters)
        selected = [w for w in workload if (tenant is None or w[0] == tenant) and w[2] >= hour and w[1][0] == "p"]
        assert report.totals["requests"] == len(selected)
        commit(store, projections, flat_prices(b), filters)
        for row in spend(projections):
            if row["provider"] != "p" or (tenant is not None and row["tenant"] != tenant):
                assert row["cost_usd"] == before[(row["tenant"], row["day"], row["model"], row["provider"])]
        store.close()


# --- the command ----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "reprice", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN_KEY, **(env or {})},
        check=False,
    )


@pytest.mark.slow
async def test_cli_reprices_from_a_toml_file_through_the_admin_api_and_offline(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    prices = tmp_path / "prices.toml"
    prices.write_text('[pricing."sim/sim-1"]\ninput_per_mtok = "20"\noutput_per_mtok = "40"\n')
    config = make_config(pricing={"sim/sim-1": RIGHT}, ledger={"path": str(ledger)})
    async with running_gateway(config) as gw, gw.http() as http:
        for _ in range(2):
            body = {"model": "sim-1", "messages": PROMPT}
            response = await http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"}
            )
            assert response.status_code == 200
        old = Decimal((await http.get("/admin/spend", headers=ADMIN)).json()["totals"]["cost_usd"])

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return run_cli("--url", gw.url, *args)

        dry = await trio.to_thread.run_sync(lambda: cli("--prices", str(prices), "--format", "json"))
        assert dry.returncode == 0, dry.stderr
        report = json.loads(dry.stdout)
        assert set(report["totals"]) >= {"requests", "old_usd", "new_usd", "delta_usd", "newly_priced"}
        assert Decimal(report["totals"]["new_usd"]) == 2 * old and report["committed"] is False
        table = await trio.to_thread.run_sync(lambda: cli("--prices", str(prices), "--tenant", "demo"))
        assert "TOTAL" in table.stdout and "dry run" in table.stderr
        assert "[" not in table.stderr  # not a terminal: no progress bar
        csv_out = await trio.to_thread.run_sync(lambda: cli("--prices", str(prices), "--format", "csv"))
        assert csv_out.stdout.splitlines()[0].startswith("tenant,model,provider,requests")
        committed = await trio.to_thread.run_sync(lambda: cli("--prices", str(prices), "--commit", "--by", "ops"))
        assert committed.returncode == 0 and "committed as repricing" in committed.stderr
        again = await trio.to_thread.run_sync(lambda: cli("--prices", str(prices), "--commit"))
        assert "nothing to commit" in again.stderr
        new = Decimal((await http.get("/admin/spend", headers=ADMIN)).json()["totals"]["cost_usd"])
        assert new == 2 * old
        bad = tmp_path / "bad.toml"
        bad.write_text('[pricing."sim/sim-1"]\ninput_per_mtok = 1.5\noutput_per_mtok = "4"\n')
        refused = await trio.to_thread.run_sync(lambda: cli("--prices", str(bad)))
        assert refused.returncode == 1 and 'prices."sim/sim-1".input_per_mtok' in refused.stderr
    # Offline: a dry run on the ledger file with the gateway stopped; as of now, the config's prices.
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[ledger]\npath = "{ledger}"\n[[providers]]\nname = "sim"\nkind = "simulator"\nmodels = ["sim-1"]\n'
    )
    offline = await trio.to_thread.run_sync(
        lambda: run_cli("--offline", "--config", str(config_file), "--ledger-prices", "--format", "json")
    )
    assert offline.returncode == 0, offline.stderr
    report = json.loads(offline.stdout)
    assert Decimal(report["totals"]["old_usd"]) == 2 * old and Decimal(report["totals"]["new_usd"]) == old
    refused = await trio.to_thread.run_sync(
        lambda: run_cli("--offline", "--config", str(config_file), "--ledger-prices", "--commit")
    )
    assert refused.returncode == 1 and "commit through the running gateway" in refused.stderr


def test_the_progress_bar_shows_rate_and_eta_on_a_terminal_and_nothing_elsewhere() -> None:
    out = io.StringIO()
    bar = Progress("reprice", out, enabled=True)
    assert "50/100 events" in bar.line(50, 100, bar._started + 1) and "50/s" in bar.line(50, 100, bar._started + 1)
    assert "ETA 0:01" in bar.line(50, 100, bar._started + 1)
    bar(100, 100)
    bar.close()
    assert out.getvalue().startswith("\rreprice [") and out.getvalue().endswith("\n")
    quiet = io.StringIO()
    silent = Progress("reprice", quiet)  # a StringIO is not a TTY
    silent(1, 2)
    silent.close()
    assert quiet.getvalue() == ""
