"""The ledger: every request path leaves exactly its events, priced by the price in force."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import trio

from events.request import Request
from runtime.auth import DEMO_KEY
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import (
    ADMIN,
    in_thread,
    ledger_events,
    make_config,
    openai_provider,
    request_events,
    running_gateway,
    wait_for_events,
)

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
PROMPT = [{"role": "user", "content": "hi"}]
PRICING = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}


def settled(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, Request.Settled)]


async def test_success_records_admitted_then_completed_with_cost() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "sim-1", "messages": PROMPT},
            headers={**AUTH, "X-Request-ID": "r-ok"},
        )
        body = response.json()
        events = await ledger_events(gw)
    assert request_events(events)["r-ok"] == ["Admitted", "Completed"]
    (completed,) = settled(events)
    usage = body["usage"]
    assert (completed.prompt_tokens, completed.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    expected = (Decimal(usage["prompt_tokens"]) * 10 + Decimal(usage["completion_tokens"]) * 20) / 1_000_000
    assert completed.cost_usd == expected
    assert body["x_gateway"]["cost_usd"] == str(expected.normalize())
    assert completed.usage_source == "provider"
    assert completed.price_ref.startswith("sim/sim-1@")
    assert completed.outcome == "ok"
    assert completed.provider == "sim" and completed.served_model == "sim-1"
    assert completed.latency_us >= completed.overhead_us >= 0


async def test_stream_records_the_same_cost_as_non_stream() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw:
        client = gw.client()
        whole = await in_thread(client.chat.completions.create, model="sim-1", messages=PROMPT)
        chunks = await in_thread(
            lambda: list(
                client.chat.completions.create(
                    model="sim-1", messages=PROMPT, stream=True, stream_options={"include_usage": True}
                )
            )
        )
        events = await ledger_events(gw)
    first, second = settled(events)
    assert first.cost_usd == second.cost_usd is not None
    assert chunks[-1].model_extra["x_gateway"]["cost_usd"] == whole.model_extra["x_gateway"]["cost_usd"]
    assert [type(e).__name__ for e in events if isinstance(e, Request.Event)].count("Completed") == 2


async def test_unpriced_model_is_recorded_as_unpriced_not_zero() -> None:
    async with running_gateway(make_config()) as gw:
        completion = await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
        (completed,) = settled(await ledger_events(gw))
    assert completed.cost_usd is None and completed.price_ref is None
    assert completion.model_extra["x_gateway"]["cost_usd"] is None


@pytest.mark.parametrize(
    ("body", "reason", "model"),
    [
        ({"model": "sim-1"}, "missing_required_parameter", "sim-1"),
        ({"model": "gpt-unknown", "messages": PROMPT}, "model_not_found", "gpt-unknown"),
        ({"messages": PROMPT}, "missing_required_parameter", None),
    ],
)
async def test_rejections_record_one_rejected_event(body: dict[str, Any], reason: str, model: str | None) -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        response = await http.post("/v1/chat/completions", json=body, headers={**AUTH, "X-Request-ID": "r-bad"})
        assert response.status_code in (400, 404)
        events = await ledger_events(gw)
    assert request_events(events) == {"r-bad": ["Rejected"]}
    rejected = next(e for e in events if isinstance(e, Request.Rejected))
    assert (rejected.reason, rejected.model, rejected.tenant, rejected.status) == (
        reason,
        model,
        "demo",
        response.status_code,
    )


async def test_unknown_keys_leave_no_events() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        before = len(await ledger_events(gw))
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "sim-1", "messages": PROMPT},
            headers={"Authorization": "Bearer nope"},
        )
        assert response.status_code == 401
        assert len(await ledger_events(gw)) == before


async def test_fallback_records_each_failed_attempt_then_completed() -> None:
    async with fake_openai(Behaviour(status=503)) as bad, fake_openai() as good:
        config = make_config(
            providers=[
                openai_provider(bad.url, name="first", models=()),
                openai_provider(good.url, name="second", models=()),
            ],
            models={"m": {"deployments": [{"provider": "first", "model": "a"}, {"provider": "second", "model": "b"}]}},
            pricing={"second/b": {"input_per_mtok": "1", "output_per_mtok": "2"}},
        )
        async with running_gateway(config) as gw, gw.http() as http:
            response = await http.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": PROMPT},
                headers={**AUTH, "X-Request-ID": "r-fb"},
            )
            assert response.status_code == 200
            events = await ledger_events(gw)
    assert request_events(events)["r-fb"] == ["Admitted", "AttemptFailed", "Completed"]
    failed = next(e for e in events if isinstance(e, Request.AttemptFailed))
    assert (failed.provider, failed.error_kind, failed.status, failed.retryable) == ("first", "server_error", 503, True)
    completed = settled(events)[0]
    assert completed.provider == "second" and completed.cost_usd == Decimal("0.000025")  # 11 × 1 + 7 × 2 per M


async def test_upstream_failure_records_failed() -> None:
    async with (
        fake_openai(Behaviour(status=500)) as bad,
        running_gateway(make_config(providers=[openai_provider(bad.url)])) as gw,
    ):
        async with gw.http() as http:
            response = await http.post(
                "/v1/chat/completions",
                json={"model": "gpt-test", "messages": PROMPT},
                headers={**AUTH, "X-Request-ID": "r-fail"},
            )
            assert response.status_code == 502
        events = await ledger_events(gw)
    assert request_events(events)["r-fail"] == ["Admitted", "AttemptFailed", "Failed"]
    (failed,) = settled(events)
    assert failed.outcome == "upstream_error" and failed.cost_usd == 0 and failed.prompt_tokens == 0


async def test_client_disconnect_records_cancelled() -> None:
    slow = Behaviour(first_byte_delay_s=30)
    async with fake_openai(slow) as fake, running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw:
        async with gw.http() as http, trio.open_nursery() as nursery:

            async def ask() -> None:
                await http.post(
                    "/v1/chat/completions",
                    json={"model": "gpt-test", "messages": PROMPT},
                    headers={**AUTH, "X-Request-ID": "r-gone"},
                )

            nursery.start_soon(ask)
            await fake.wait_for_requests(1)  # the request is at the upstream: the client hangs up
            nursery.cancel_scope.cancel()
        # The handler is cancelled when its client goes; wait for that commit.
        with trio.fail_after(20):
            events = await wait_for_events(gw, lambda e: "Cancelled" in request_events(e).get("r-gone", []))
    assert request_events(events)["r-gone"] == ["Admitted", "Cancelled"]
    assert settled(events)[0].outcome == "client_disconnected"


async def test_price_with_past_effective_from_changes_neither_costs_nor_history() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT}, headers=AUTH)
        before = await ledger_events(gw)
        response = await http.put(
            "/admin/pricing",
            json={
                "effective_from": "2020-01-01T00:00:00Z",
                "prices": {"sim/sim-1": {"input_per_mtok": "999", "output_per_mtok": "999"}},
            },
            headers=ADMIN,
        )
        assert response.status_code == 200, response.text
        after = await ledger_events(gw)
        spend = (await http.get("/admin/spend", headers=ADMIN)).json()
    assert after[: len(before)] == before, "history is never rewritten"
    assert [type(e).__name__ for e in after[len(before) :]] == ["PriceSet"]
    assert settled(after)[0].cost_usd == settled(before)[0].cost_usd
    assert spend["totals"]["cost_usd"] == str(settled(before)[0].cost_usd.normalize())


async def test_a_bad_write_fails_alone_and_the_journal_keeps_going() -> None:
    """Two concurrent creations of one tenant: one wins; the other's write fails alone; the gateway lives."""
    async with running_gateway(make_config()) as gw, gw.http() as http:
        statuses: list[int] = []

        async def create() -> None:
            response = await http.post("/admin/tenants", json={"name": "twin"}, headers=ADMIN)
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(create)
        assert sorted(statuses)[0] == 201 and sorted(statuses)[1] in (409, 503)
        after = await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT}, headers=AUTH)
        assert after.status_code == 200, "the Journal survived the failed write"
        listed = (await http.get("/admin/tenants", headers=ADMIN)).json()["data"]
        assert [t["name"] for t in listed].count("twin") == 1


async def test_a_full_journal_refuses_with_503_and_hands_the_reservation_back() -> None:
    """The Journal never drops money events: when its queue is full a new request is refused at
    admission (503 `overloaded`), settled with nothing consumed — its reservation handed back — and
    nothing of it is recorded."""
    import trio.testing

    from events.provider import Provider
    from runtime.auth import hash_key
    from runtime.errors import Overloaded

    tenants = [{"name": "demo", "api_key_sha256": hash_key(DEMO_KEY), "budget_usd": "10"}]
    body = {"model": "sim-1", "messages": PROMPT, "max_tokens": 50}
    async with running_gateway(make_config(pricing=PRICING, tenants=tenants)) as gw, gw.http() as http:
        journal = gw.gateway.journal
        async with journal.limiter:  # the writer cannot write: its queue fills up
            fillers = 0
            for _ in range(3):  # fill; let the Journal take its batch and block on the writer's door; fill again
                while True:
                    try:
                        journal.submit(Provider.register(f"filler-{fillers}").collect_events())
                    except Overloaded:
                        break
                    fillers += 1
                await trio.testing.wait_all_tasks_blocked()
            refused = await http.post("/v1/chat/completions", json={**body, "user": "r-full"}, headers=AUTH)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert "x-tollgate-ledger-id" not in refused.headers  # nothing recorded
        await journal.commit(Provider.register("after-the-fillers").collect_events())  # the queue has drained
        ok = await http.post("/v1/chat/completions", json=body, headers={**AUTH, "X-Request-ID": "r-after"})
        assert ok.status_code == 200, ok.text
        (stats,) = gw.gateway.tenants.statistics()  # the mailbox is FIFO: the refused one's settle came first
        assert stats.in_flight == 0
        assert Decimal(stats.reserved_usd) == 0
        assert Decimal(stats.spent_usd) == Decimal(ok.json()["x_gateway"]["cost_usd"])
