"""`/v1/responses` end to end through the real gateway, with the official openai SDK as the client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing

from events.request import Request
from runtime.auth import DEMO_KEY, hash_key
from tests.fake_anthropic import fake_anthropic
from tests.fake_openai import Behaviour as FakeBehaviour
from tests.fake_openai import fake_openai
from tests.harness import (
    ADMIN,
    in_thread,
    make_config,
    openai_provider,
    request_events,
    running_gateway,
    wait_for_events,
)

PRICING = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}
OTHER_KEY = "tg-other-tenant-key"
TENANTS = [
    {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY)},
    {"name": "other", "api_key_sha256": hash_key(OTHER_KEY)},
]


def anthropic_provider(fake_url: str) -> dict[str, Any]:
    return {
        "name": "claude",
        "kind": "anthropic",
        "base_url": fake_url,
        "api_key_env": "FAKE_KEY",
        "models": ["claude-test"],
    }


async def test_create_non_stream_through_the_simulator_is_priced_in_the_ledger() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw:
        client = gw.client()
        response = await in_thread(
            client.responses.create, model="sim-1", input="Say something about ledgers.", instructions="Be brief."
        )
        assert response.id.startswith("resp_")
        assert response.status == "completed"
        assert response.output_text
        assert response.output[0].type == "message"
        assert response.usage is not None
        assert response.usage.output_tokens == 16
        assert response.usage.input_tokens > 0
        assert response.usage.total_tokens == response.usage.input_tokens + 16
        assert response.instructions == "Be brief."
        x = response.model_extra["x_gateway"] if response.model_extra else {}
        assert x["provider"] == "sim"
        events = await wait_for_events(gw, lambda es: any(isinstance(e, Request.Completed) for e in es))
    completed = next(e for e in events if isinstance(e, Request.Completed))
    usage = response.usage
    expected = (Decimal(usage.input_tokens) * 10 + Decimal(16) * 20) / 1_000_000
    assert completed.cost_usd == expected
    assert x["cost_usd"] == str(expected.normalize()) or Decimal(x["cost_usd"]) == expected


async def test_stream_speaks_named_events_and_matches_the_non_stream_answer() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()

        def consume() -> list[Any]:
            return list(client.responses.create(model="sim-1", input="Say something about ledgers.", stream=True))

        events = await in_thread(consume)
        whole = await in_thread(client.responses.create, model="sim-1", input="Say something about ledgers.")
        kinds = [event.type for event in events]
        assert kinds[:4] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert kinds[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert [event.sequence_number for event in events] == list(range(len(events)))
        text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
        assert text == whole.output_text
        final = events[-1].response
        assert final.output_text == text
        assert final.usage is not None and final.usage.output_tokens == 16
        stored = await in_thread(client.responses.retrieve, final.id)  # stored before `completed` was sent
        assert stored.output_text == text


async def test_three_turn_chain_through_the_simulator_grows_the_input() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        first = await in_thread(client.responses.create, model="sim-1", input="One.")
        second = await in_thread(client.responses.create, model="sim-1", input="Two.", previous_response_id=first.id)
        third = await in_thread(client.responses.create, model="sim-1", input="Three.", previous_response_id=second.id)
        assert third.previous_response_id == second.id
        assert first.usage and second.usage and third.usage
        assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens


async def test_three_turn_chain_through_anthropic_replays_every_turn() -> None:
    async with fake_anthropic() as fake:
        config = make_config(providers=[anthropic_provider(fake.url)])
        async with running_gateway(config) as gw:
            client = gw.client()
            first = await in_thread(
                client.responses.create, model="claude-test", input="One.", instructions="Be brief."
            )
            second = await in_thread(
                client.responses.create, model="claude-test", input="Two.", previous_response_id=first.id
            )

            def streamed() -> list[Any]:
                return list(
                    client.responses.create(
                        model="claude-test", input="Three.", previous_response_id=second.id, stream=True
                    )
                )

            third = await in_thread(streamed)
    assert third[-1].type == "response.completed"
    last = fake.bodies[-1]
    texts = [
        (m["role"], "".join(p["text"] for p in m["content"]) if isinstance(m["content"], list) else m["content"])
        for m in last["messages"]
    ]
    assert texts == [
        ("user", "One."),
        ("assistant", first.output_text),
        ("user", "Two."),
        ("assistant", second.output_text),
        ("user", "Three."),
    ]
    assert "system" not in last  # instructions belong to the turn that gave them, as OpenAI
    assert fake.bodies[0]["system"] == "Be brief."


async def test_another_tenant_can_neither_read_continue_nor_delete() -> None:
    async with running_gateway(make_config(tenants=TENANTS)) as gw:
        mine = gw.client()
        theirs = gw.client(OTHER_KEY)
        response = await in_thread(mine.responses.create, model="sim-1", input="Secret.")
        with pytest.raises(openai.NotFoundError):
            await in_thread(theirs.responses.retrieve, response.id)
        with pytest.raises(openai.NotFoundError) as continued:
            await in_thread(theirs.responses.create, model="sim-1", input="More.", previous_response_id=response.id)
        assert continued.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
        assert continued.value.body["param"] == "previous_response_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await in_thread(theirs.responses.delete, response.id)
        assert (await in_thread(mine.responses.retrieve, response.id)).output_text == response.output_text
        events = await wait_for_events(gw, lambda es: any(isinstance(e, Request.Rejected) for e in es))
    rejected = [e for e in events if isinstance(e, Request.Rejected)]
    assert [(e.status, e.reason) for e in rejected] == [(404, "previous_response_not_found")]


async def test_get_then_delete() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        response = await in_thread(client.responses.create, model="sim-1", input="Keep this.")
        fetched = await in_thread(client.responses.retrieve, response.id)
        assert fetched.id == response.id and fetched.output_text == response.output_text
        await in_thread(client.responses.delete, response.id)
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.responses.retrieve, response.id)
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.responses.delete, response.id)
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.responses.create, model="sim-1", input="x", previous_response_id=response.id)


async def test_store_false_keeps_nothing() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        response = await in_thread(client.responses.create, model="sim-1", input="Forget this.", store=False)
        assert response.output_text and response.store is False
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.responses.retrieve, response.id)


async def test_a_stored_response_expires_after_retention(mock_clock: trio.testing.MockClock) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    config = make_config(responses={"retention_s": 60})
    async with running_gateway(config, clock=lambda: start + timedelta(seconds=trio.current_time())) as gw:
        auth = {"Authorization": f"Bearer {DEMO_KEY}"}
        async with gw.http() as http:
            created = await http.post("/v1/responses", json={"model": "sim-1", "input": "Brief."}, headers=auth)
            assert created.status_code == 200, created.text
            response_id = created.json()["id"]
            mock_clock.jump(59)
            assert (await http.get(f"/v1/responses/{response_id}", headers=auth)).status_code == 200
            mock_clock.jump(2)
            gone = await http.get(f"/v1/responses/{response_id}", headers=auth)
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == "not_found"
            continued = await http.post(
                "/v1/responses",
                json={"model": "sim-1", "input": "More.", "previous_response_id": response_id},
                headers=auth,
            )
            assert continued.status_code == 404
        conversations = gw.gateway.conversations
        assert conversations is not None
        await conversations.expire((start + timedelta(seconds=trio.current_time())).timestamp())
        rows = await conversations._run("SELECT count(*) FROM tollgate_responses", ())
        assert rows[0][0] == 0


async def test_function_tools_and_outputs_round_trip_through_anthropic() -> None:
    from tests.fake_anthropic import Behaviour

    async with fake_anthropic(Behaviour(tool_use=("get_weather", {"city": "Paris"}))) as fake:
        config = make_config(providers=[anthropic_provider(fake.url)])
        async with running_gateway(config) as gw:
            client = gw.client()
            tools: Any = [
                {
                    "type": "function",
                    "name": "get_weather",
                    "description": "Weather by city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": False,
                }
            ]
            first = await in_thread(
                client.responses.create, model="claude-test", input="Weather in Paris?", tools=tools
            )
            calls = [item for item in first.output if item.type == "function_call"]
            assert len(calls) == 1
            assert calls[0].name == "get_weather" and calls[0].call_id == "toolu_fake"
            fake.behaviour = Behaviour()
            output: Any = [{"type": "function_call_output", "call_id": "toolu_fake", "output": "Sunny."}]
            second = await in_thread(
                client.responses.create,
                model="claude-test",
                input=output,
                tools=tools,
                previous_response_id=first.id,
            )
            assert second.output_text
    sent = fake.bodies[0]
    assert sent["tools"][0]["name"] == "get_weather"
    replay = fake.bodies[-1]["messages"]
    assert replay[1]["role"] == "assistant"
    assert any(block.get("type") == "tool_use" and block["id"] == "toolu_fake" for block in replay[1]["content"])
    assert replay[2]["role"] == "user"
    assert replay[2]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "sim-1"}, "input"),
        ({"model": "sim-1", "input": 3}, "input"),
        ({"model": "sim-1", "input": [{"type": "message", "role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"model": "sim-1", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"model": "sim-1", "input": [{"type": "function_call", "call_id": "c"}]}, "input[0]"),
    ],
)
async def test_bad_input_is_a_400_in_openai_shape(body: dict[str, Any], param: str) -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        answer = await http.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"})
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
        denied = await http.post("/v1/responses", json=body, headers={"Authorization": "Bearer nope"})
        assert denied.status_code == 401
        events = await wait_for_events(gw, lambda es: any(isinstance(e, Request.Rejected) for e in es))
    assert [(e.status, e.reason) for e in events if isinstance(e, Request.Event)] == [(400, "invalid_request")]


async def test_budget_refusal_is_402_and_rate_limit_is_429(mock_clock: trio.testing.MockClock) -> None:
    fifty = {"sim/sim-1": {"input_per_mtok": "0", "output_per_mtok": "3125000"}}
    async with running_gateway(make_config(pricing=fifty)) as gw, gw.http() as http:
        created = await http.post("/admin/tenants", json={"name": "poor", "budget_usd": "10"}, headers=ADMIN)
        poor = {"Authorization": f"Bearer {created.json()['api_key']}"}
        refused = await http.post(
            "/v1/responses", json={"model": "sim-1", "input": "hi", "max_output_tokens": 16}, headers=poor
        )
        assert refused.status_code == 402
        assert refused.json()["error"]["code"] == "budget_exceeded"
        created = await http.post("/admin/tenants", json={"name": "slow", "rpm": 1}, headers=ADMIN)
        slow = {"Authorization": f"Bearer {created.json()['api_key']}"}
        free = {"sim/sim-1": {"input_per_mtok": "0", "output_per_mtok": "0"}}
        assert free  # the rpm tenant has no budget: the price does not matter
        body = {"model": "sim-1", "input": "hi", "max_output_tokens": 1}
        assert (await http.post("/v1/responses", json=body, headers=slow)).status_code == 200
        limited = await http.post("/v1/responses", json=body, headers=slow)
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert "retry-after" in limited.headers


async def test_models_retrieve_with_the_sdk() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        model = await in_thread(client.models.retrieve, "sim-1")
        assert model.id == "sim-1"
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.models.retrieve, "no-such-model")


async def test_a_client_that_hangs_up_mid_stream_is_settled_as_cancelled(mock_clock: trio.testing.MockClock) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    mock_clock.autojump_threshold = 5
    async with fake_openai(FakeBehaviour(reply=words, chunks=40, chunk_delay_s=10)) as fake:
        config = make_config(
            providers=[openai_provider(fake.url, timeouts={"first_token_s": 200, "idle_s": 100})],
            pricing={"up/gpt-test": {"input_per_mtok": "1", "output_per_mtok": "2"}},
        )
        async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            delta = trio.Event()

            async def ask() -> None:
                headers = {"Authorization": f"Bearer {DEMO_KEY}", "X-Request-ID": "gone"}
                body = {"model": "gpt-test", "input": "hi", "stream": True}
                async with http.stream("POST", "/v1/responses", json=body, headers=headers) as answer:
                    async for line in answer.aiter_lines():
                        if line == "event: response.output_text.delta":
                            delta.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await fake.wait_for_requests(1)
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(10)
                await delta.wait()
                nursery.cancel_scope.cancel()  # the client hangs up
            await fake.wait_idle()
            assert fake.open_streams == 0
            events = await wait_for_events(gw, lambda es: "Cancelled" in request_events(es).get("gone", []))
            conversations = gw.gateway.conversations
            assert conversations is not None
            rows = await conversations._run("SELECT count(*) FROM tollgate_responses", ())
    assert request_events(events)["gone"] == ["Admitted", "Cancelled"]
    (cancelled,) = [e for e in events if isinstance(e, Request.Cancelled)]
    assert cancelled.outcome == "client_disconnected" and cancelled.completion_tokens > 0
    assert rows[0][0] == 0  # an interrupted response is not stored


async def test_replay_verify_is_clean_after_a_mixed_workload(tmp_path: Any) -> None:
    from runtime.ledger.replay import verify_open

    config = make_config(pricing=PRICING, ledger={"path": str(tmp_path / "ledger.sqlite3")})
    async with running_gateway(config) as gw, gw.http() as http:
        auth = {"Authorization": f"Bearer {DEMO_KEY}"}
        chat = {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}
        assert (await http.post("/v1/chat/completions", json=chat, headers=auth)).status_code == 200
        first = await http.post("/v1/responses", json={"model": "sim-1", "input": "One."}, headers=auth)
        follow = {"model": "sim-1", "input": "Two.", "previous_response_id": first.json()["id"], "stream": True}
        assert "response.completed" in (await http.post("/v1/responses", json=follow, headers=auth)).text
        assert (await http.post("/v1/responses", json={"model": "sim-1"}, headers=auth)).status_code == 400
        gateway = gw.gateway
        await gateway.projector.wait_for(gateway.journal.position)

        def check() -> list[str]:
            return verify_open(gateway.store, gateway.projector.projections)

        problems = await trio.to_thread.run_sync(check, limiter=gateway.projector._limiter)
        spent = await gateway.spent("demo", datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
        events = await wait_for_events(gw, lambda es: True)
    assert problems == []
    costs = [e.cost_usd for e in events if isinstance(e, Request.Completed)]
    assert len(costs) == 3 and all(cost is not None and cost > 0 for cost in costs)
    assert spent == sum(costs)


async def test_the_reservation_covers_earlier_turns_instructions_and_tools() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        created = await http.post("/admin/tenants", json={"name": "budgeted", "budget_usd": "1000"}, headers=ADMIN)
        auth = {"Authorization": f"Bearer {created.json()['api_key']}"}  # a budget: reservations are made
        base = {"model": "sim-1", "input": "Two.", "max_output_tokens": 4}
        fresh = await http.post("/v1/responses", json=base, headers={**auth, "X-Request-ID": "fresh"})
        tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
        long_input = {"model": "sim-1", "input": "One. " * 200}
        first = await http.post("/v1/responses", json=long_input, headers=auth)
        later = {**base, "previous_response_id": first.json()["id"], "instructions": "Be brief.", "tools": tools}
        follow = await http.post("/v1/responses", json=later, headers={**auth, "X-Request-ID": "later"})
        assert fresh.status_code == follow.status_code == 200
        events = await wait_for_events(gw, lambda es: len(request_events(es).get("later", [])) == 2)
    reserved = {e.request_id: e.reserved_usd for e in events if isinstance(e, Request.Admitted)}
    history_bytes = len("One. " * 200) + len("Be brief.") + len("lookup")
    assert reserved["later"] - reserved["fresh"] >= Decimal(history_bytes) * 10 / 1_000_000


async def test_a_stream_that_fails_mid_answer_ends_with_response_failed() -> None:
    simulator = {"error_rate": 1.0, "fail_at": "mid_stream"}
    providers = [{"name": "sim", "kind": "simulator", "models": ["sim-1"], "simulator": simulator}]
    async with running_gateway(make_config(providers=providers, pricing=PRICING)) as gw:
        client = gw.client()

        def consume() -> list[Any]:
            return list(client.responses.create(model="sim-1", input="Say something.", stream=True))

        events = await in_thread(consume)
        ledger = await wait_for_events(gw, lambda es: any(isinstance(e, Request.Failed) for e in es))
        conversations = gw.gateway.conversations
        assert conversations is not None
        rows = await conversations._run("SELECT count(*) FROM tollgate_responses", ())
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error is not None
    assert [e.sequence_number for e in events] == list(range(len(events)))
    (failed,) = [e for e in ledger if isinstance(e, Request.Failed)]
    assert failed.outcome == "truncated"
    assert rows[0][0] == 0
