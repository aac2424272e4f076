"""Admin writes go through one door: an aggregate changes in memory only after its commit is confirmed."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.testing

from events.provider import Provider
from events.request import Request
from events.store import LedgerStore
from events.tenant import Tenant, tenant_id
from runtime.auth import DEMO_KEY, hash_key
from runtime.ledger.journal import Journal, LedgerUnavailable
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import ADMIN, ledger_events, make_config, openai_provider, running_gateway

PROMPT = [{"role": "user", "content": "hi"}]
PRICE = {"input_per_mtok": "1", "output_per_mtok": "2"}


async def test_the_loser_of_a_concurrent_create_gets_409_and_nothing_of_it_is_kept() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        answers: list[tuple[int, dict[str, Any]]] = []

        async def create() -> None:
            response = await http.post("/admin/tenants", json={"name": "twin"}, headers=ADMIN)
            answers.append((response.status_code, response.json()))

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(create)
        assert sorted(status for status, _ in answers) == [201, 409]
        (winner,) = [body for status, body in answers if status == 201]
        (loser,) = [body for status, body in answers if status == 409]
        assert loser["error"]["code"] == "conflict" and "api_key" not in loser
        kept = await gw.gateway.aggregates.get(tenant_id("twin"), Tenant)
        assert kept is not None and kept.key_sha256 == hash_key(winner["api_key"]), "the winner's tenant is kept"

        disabled = await http.post("/admin/tenants/twin/disable", headers=ADMIN)
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False
        assert (await http.get("/admin/tenants/twin", headers=ADMIN)).json()["enabled"] is False
        refused = await http.post(
            "/v1/chat/completions",
            json={"model": "sim-1", "messages": PROMPT},
            headers={"Authorization": f"Bearer {winner['api_key']}"},
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "tenant_disabled"


def _refuse_writes(ledger: Path, refuse: bool) -> None:
    """The ledger's own database refuses (or accepts again) every append: a real failed commit."""
    connection = sqlite3.connect(ledger, timeout=10)
    try:
        if refuse:
            connection.execute(
                "create trigger refuse_appends before insert on stored_events"
                " begin select raise(abort, 'refused by the test'); end"
            )
        else:
            connection.execute("drop trigger refuse_appends")
        connection.commit()
    finally:
        connection.close()


async def test_a_failed_write_leaves_no_trace_the_next_write_applies_and_the_next_start_works(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    config = make_config(ledger={"path": str(ledger)})
    async with running_gateway(config) as gw, gw.http() as http:
        assert (await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)).status_code == 201
        await trio.to_thread.run_sync(_refuse_writes, ledger, True)
        failed = await http.post("/admin/tenants/acme/disable", headers=ADMIN)
        assert failed.status_code == 503, failed.text
        failed_price = await http.put(
            "/admin/pricing",
            json={"prices": {"sim/sim-1": PRICE}},
            headers=ADMIN,
        )
        assert failed_price.status_code == 503, failed_price.text
        assert (await http.get("/admin/tenants/acme", headers=ADMIN)).json()["enabled"] is True
        kept = await gw.gateway.aggregates.get(tenant_id("acme"), Tenant)
        assert kept is not None and kept.enabled, "the failed change left no trace in memory"
        await trio.to_thread.run_sync(_refuse_writes, ledger, False)

        patched = await http.patch("/admin/tenants/acme", json={"rpm": 7}, headers=ADMIN)
        assert patched.status_code == 200 and patched.json()["rpm"] == 7, "the next write applies"
        assert patched.json()["enabled"] is True
        priced = await http.put("/admin/pricing", json={"prices": {"sim/sim-1": PRICE}}, headers=ADMIN)
        assert priced.status_code == 200, priced.text

    # The next start loads every tenant and the price list: no version gap for eventsourcing to refuse.
    async with running_gateway(config) as gw, gw.http() as http:
        acme = (await http.get("/admin/tenants/acme", headers=ADMIN)).json()
        assert (acme["enabled"], acme["rpm"]) == (True, 7)
        pricing = (await http.get("/admin/pricing", headers=ADMIN)).json()["data"]
        assert [(p["key"], p["input_per_mtok"]) for p in pricing] == [("sim/sim-1", "1")]
        disabled = await http.post("/admin/tenants/acme/disable", headers=ADMIN)
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False
        assert (await http.get("/admin/tenants/acme", headers=ADMIN)).json()["enabled"] is False


async def test_a_refused_entry_fails_alone_in_its_batch(tmp_path: Path) -> None:
    """The Journal's split: one entry the database refuses does not fail the others of its batch
    (the concurrent-create test exercised this before the aggregates' door made the loser a 409)."""
    ledger = tmp_path / "ledger.sqlite3"
    store = LedgerStore(str(ledger))
    try:
        await trio.to_thread.run_sync(_refuse, ledger, "events.tenant:Tenant.Registered")
        committed: list[Any] = []
        journal = Journal(store, committed.extend)
        refused = Tenant.register("refused", hash_key("tg-x"), {}, "api")
        request = Request.admit("r-1", "demo", "sim-1", False, Decimal(0), datetime.now(UTC))
        outcome: list[str] = []

        async def commit(events: Sequence[Any]) -> None:
            try:
                await journal.commit(events)
                outcome.append("committed")
            except LedgerUnavailable:
                outcome.append("refused")

        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                async with trio.open_nursery() as writers:
                    # Both entries wait in the queue before the Journal starts: it takes them as one batch.
                    writers.start_soon(commit, refused.collect_events())
                    await trio.testing.wait_all_tasks_blocked()
                    writers.start_soon(commit, request.collect_events())
                    await trio.testing.wait_all_tasks_blocked()
                    await nursery.start(journal.run)
            nursery.cancel_scope.cancel()
        assert sorted(outcome) == ["committed", "refused"]
        assert [type(r.event) for r in committed] == [Request.Admitted]
        assert journal.statistics().largest_batch == 1
    finally:
        store.close()


def _refuse(ledger: Path, topic: str) -> None:
    connection = sqlite3.connect(ledger, timeout=10)
    try:
        connection.execute(
            f"create trigger refuse_topic before insert on stored_events when new.topic = '{topic}'"
            " begin select raise(abort, 'refused by the test'); end"
        )
        connection.commit()
    finally:
        connection.close()


def _accept_again(ledger: Path) -> None:
    connection = sqlite3.connect(ledger, timeout=10)
    try:
        connection.execute("drop trigger refuse_topic")
        connection.commit()
    finally:
        connection.close()


async def test_a_refused_breaker_transition_leaves_the_next_start_working(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A `Provider` aggregate changes only after its commit too: a transition the ledger refused left a
    version gap in memory, the next transitions were written after it, and the next start could not load
    the provider (eventsourcing's OriginatorVersionError)."""
    ledger = tmp_path / "ledger.sqlite3"
    breaker = {"consecutive_failures": 1, "cooldown_s": 5, "half_open_probes": 1, "success_threshold": 1}
    body = {"model": "gpt-test", "messages": PROMPT}
    demo = {"Authorization": f"Bearer {DEMO_KEY}"}
    async with fake_openai(Behaviour(status=500)) as fake:
        config = make_config(ledger={"path": str(ledger)}, providers=[openai_provider(fake.url, breaker=breaker)])
        async with running_gateway(config) as gw, gw.http() as http:
            await trio.to_thread.run_sync(_refuse, ledger, "events.provider:Provider.BreakerTransitioned")
            assert (await http.post("/v1/chat/completions", json=body, headers=demo)).status_code == 502
            await gw.gateway.breakers.wait_idle()  # closed → open: refused by the ledger
            await trio.to_thread.run_sync(_accept_again, ledger)
            mock_clock.jump(5)  # the cooldown; below header_timeout_s, so the keep-alive connection stays
            assert (await http.post("/v1/chat/completions", json=body, headers=demo)).status_code == 502
            await gw.gateway.breakers.wait_idle()  # open → half_open → open: committed
        async with running_gateway(config) as gw:  # the next start loads the provider
            events = await ledger_events(gw)
    transitions = [(e.from_state, e.to_state) for e in events if isinstance(e, Provider.BreakerTransitioned)]
    assert transitions == [("open", "half_open"), ("half_open", "open")]
