"""`/v1/responses` passed through to an OpenAI-kind provider configured with `responses = true`, with the
official openai SDK as the client: the body as the client wrote it (unknown fields kept), `store: false`
upstream and the conversation kept by the gateway, per tenant; costs exact in the ledger, cache reads
included; fallback to a provider that is not passed through."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import attrs
import openai
import pytest

from events.request import Request
from runtime.auth import DEMO_KEY, hash_key
from runtime.cli.commands import main
from runtime.config import ConfigError
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import in_thread, make_config, openai_provider, running_gateway, wait_for_events

OTHER_KEY = "tg-other-tenant-key"
TENANTS = [
    {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY)},
    {"name": "other", "api_key_sha256": hash_key(OTHER_KEY)},
]
PRICING = {"up/gpt-test": {"input_per_mtok": "2", "output_per_mtok": "8", "cached_input_per_mtok": "0.5"}}
SIM_PRICING = {**PRICING, "sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}
CACHED = Behaviour(reply="Passed through.", prompt_tokens=40, cached_tokens=30, completion_tokens=5)


def cost(prompt: int, cached: int, completion: int) -> Decimal:
    """The price math by hand: up/gpt-test at $2 input, $0.5 cached input, $8 output per million."""
    return (Decimal(prompt - cached) * 2 + Decimal(cached) * Decimal("0.5") + Decimal(completion) * 8) / 1_000_000


def settled(events: list[Any]) -> list[Request.Settled]:
    return [e for e in events if isinstance(e, Request.Settled)]


def passthrough(url: str, **extra: Any) -> dict[str, Any]:
    return openai_provider(url, responses=True, **extra)


async def test_create_stream_and_not_is_passed_through_and_priced_exactly() -> None:
    async with fake_openai(CACHED) as fake:
        config = make_config(providers=[passthrough(fake.url)], pricing=PRICING)
        async with running_gateway(config) as gw:
            client = gw.client()
            response = await in_thread(
                client.responses.create,
                model="gpt-test",
                input="Say something about ledgers.",
                instructions="Be brief.",
                reasoning={"effort": "low"},
                extra_body={"a_field_from_the_future": {"kept": True}},
            )
            sent = fake.bodies[-1]
            assert fake.paths == ["/v1/responses"]
            assert sent["input"] == "Say something about ledgers." and sent["instructions"] == "Be brief."
            assert sent["reasoning"] == {"effort": "low"} and sent["a_field_from_the_future"] == {"kept": True}
            assert sent["store"] is False and "previous_response_id" not in sent
            assert response.id == "resp_fake1"  # the provider's own answer
            assert response.output_text == "Passed through."
            assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 30
            x = response.model_extra["x_gateway"] if response.model_extra else {}
            assert x["provider"] == "up" and Decimal(x["cost_usd"]) == cost(40, 30, 5)

            def streamed() -> list[Any]:
                return list(client.responses.create(model="gpt-test", input="Again.", stream=True))

            events = await in_thread(streamed)
            assert fake.paths[-1] == "/v1/responses" and fake.bodies[-1]["stream"] is True
            assert events[0].type == "response.created" and events[-1].type == "response.completed"
            assert [event.sequence_number for event in events] == list(range(len(events)))  # as the provider sent
            text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
            assert text == "Passed through."
            final = events[-1].response
            assert final.id == "resp_fake2" and final.usage is not None and final.usage.output_tokens == 5
            stored = await in_thread(client.responses.retrieve, final.id)  # stored before `completed` was sent
            assert stored.output_text == "Passed through."
            ledger = await wait_for_events(gw, lambda es: len(settled(es)) >= 2)
    for event in settled(ledger):
        assert isinstance(event, Request.Completed) and event.usage_source == "provider"
        assert (event.prompt_tokens, event.cached_tokens, event.completion_tokens) == (40, 30, 5)
        assert event.cost_usd == cost(40, 30, 5)
    operations = [e.operation for e in ledger if isinstance(e, Request.Admitted)]
    assert operations == ["responses", "responses"]


async def test_a_three_turn_chain_through_the_pass_through_and_another_tenant_cannot_continue_it() -> None:
    async with fake_openai(CACHED) as fake:
        config = make_config(providers=[passthrough(fake.url)], pricing=PRICING, tenants=TENANTS)
        async with running_gateway(config) as gw:
            client = gw.client()
            first = await in_thread(client.responses.create, model="gpt-test", input="One.")

            def streamed() -> list[Any]:
                return list(
                    client.responses.create(model="gpt-test", input="Two.", previous_response_id=first.id, stream=True)
                )

            second = (await in_thread(streamed))[-1].response
            third = await in_thread(
                client.responses.create, model="gpt-test", input="Three.", previous_response_id=second.id
            )
            assert (first.id, second.id, third.id) == ("resp_fake1", "resp_fake2", "resp_fake3")
            for body in fake.bodies:
                assert body["store"] is False and "previous_response_id" not in body
            assert fake.bodies[2]["input"] == [
                {"type": "message", "role": "user", "content": "One."},
                {"type": "message", "role": "assistant", "content": "Passed through."},
                {"type": "message", "role": "user", "content": "Two."},
                {"type": "message", "role": "assistant", "content": "Passed through."},
                {"type": "message", "role": "user", "content": "Three."},
            ]
            other = gw.client(OTHER_KEY)
            with pytest.raises(openai.NotFoundError) as continued:
                await in_thread(other.responses.create, model="gpt-test", input="Mine?", previous_response_id=third.id)
            assert continued.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
            with pytest.raises(openai.NotFoundError):
                await in_thread(other.responses.retrieve, third.id)
            assert len(fake.bodies) == 3  # the refused continuation reached no provider
            ledger = await wait_for_events(gw, lambda es: len(settled(es)) >= 3)
    assert [event.cost_usd for event in settled(ledger)] == [cost(40, 30, 5)] * 3


async def test_a_chain_continues_on_a_provider_that_is_not_passed_through() -> None:
    async with fake_openai(CACHED) as fake:
        providers = [passthrough(fake.url), {"name": "sim", "kind": "simulator", "models": ["sim-1"]}]
        async with running_gateway(make_config(providers=providers, pricing=SIM_PRICING)) as gw:
            client = gw.client()
            first = await in_thread(client.responses.create, model="gpt-test", input="One.")
            second = await in_thread(
                client.responses.create, model="sim-1", input="Two.", previous_response_id=first.id
            )
            third = await in_thread(
                client.responses.create, model="gpt-test", input="Three.", previous_response_id=second.id
            )
            assert second.previous_response_id == first.id and second.id.startswith("resp_")
            replayed = fake.bodies[-1]["input"]
            assert [item["role"] for item in replayed] == ["user", "assistant", "user", "assistant", "user"]
            assert replayed[1]["content"] == "Passed through." and replayed[3]["content"] == second.output_text
            assert third.output_text == "Passed through."


async def test_a_failing_pass_through_provider_falls_back_to_a_translated_one() -> None:
    async with fake_openai(Behaviour(status=503)) as fake:
        providers = [passthrough(fake.url), {"name": "sim", "kind": "simulator", "models": ["sim-1"]}]
        models = {
            "smart": {"deployments": [{"provider": "up", "model": "gpt-test"}, {"provider": "sim", "model": "sim-1"}]}
        }
        config = make_config(providers=providers, models=models, pricing=SIM_PRICING)
        async with running_gateway(config) as gw:
            client = gw.client()
            response = await in_thread(client.responses.create, model="smart", input="Hello?")

            def streamed() -> list[Any]:
                return list(client.responses.create(model="smart", input="Hello?", stream=True))

            events = await in_thread(streamed)
            ledger = await wait_for_events(gw, lambda es: len(settled(es)) >= 2)
    assert fake.paths == ["/v1/responses", "/v1/responses"]
    assert response.output_text and response.id.startswith("resp_")
    x = response.model_extra["x_gateway"] if response.model_extra else {}
    assert x["provider"] == "sim" and x["attempts"] == 2
    assert events[-1].type == "response.completed" and events[-1].response.output_text
    failures = [e for e in ledger if isinstance(e, Request.AttemptFailed)]
    assert [(e.provider, e.status) for e in failures] == [("up", 503), ("up", 503)]
    assert all(e.provider == "sim" and e.usage_source == "provider" for e in settled(ledger))


def test_only_an_openai_kind_provider_passes_responses_through(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(providers=[{"name": "sim", "kind": "simulator", "models": ["sim-1"], "responses": True}])
    assert error.value.problems == [
        "providers[0].responses: only an 'openai'-kind provider serves the Responses API itself"
    ]
    path = tmp_path / "config.toml"
    path.write_text(
        '[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["gpt-test"]\n'
        "responses = true\n"
    )
    assert main(["check-config", "--config", str(path)]) == 0
    assert "Responses API passed through to: up (translated to chat for the others)" in capsys.readouterr().out


async def test_what_chat_cannot_say_is_passed_through_not_refused() -> None:
    """Built-in tools and file inputs: sent to a pass-through provider as written (its admission reads
    the rest); for a model some provider serves translated, still a 400 naming the field."""
    tools = [{"type": "web_search"}, {"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    content = [
        {"type": "input_text", "text": "What does this file say?"},
        {"type": "input_file", "file_id": "file-abc"},
    ]
    body = {"model": "gpt-test", "input": [{"role": "user", "content": content}], "tools": tools}
    async with fake_openai(CACHED) as fake:
        providers = [passthrough(fake.url), {"name": "sim", "kind": "simulator", "models": ["sim-1"]}]
        async with running_gateway(make_config(providers=providers, pricing=SIM_PRICING)) as gw, gw.http() as http:
            headers = {"Authorization": f"Bearer {DEMO_KEY}"}
            answered = await http.post(
                "/v1/responses", json={**body, "tool_choice": {"type": "web_search"}}, headers=headers
            )
            refused = await http.post("/v1/responses", json={**body, "model": "sim-1"}, headers=headers)
    assert answered.status_code == 200 and answered.json()["id"] == "resp_fake1"
    sent = fake.bodies[0]
    assert sent["tools"] == tools and sent["input"][0]["content"] == content
    assert sent["tool_choice"] == {"type": "web_search"}
    assert refused.status_code == 400 and len(fake.bodies) == 1


async def test_a_pass_through_stream_failing_mid_answer_ends_with_an_error_event_and_is_settled_once() -> None:
    async with fake_openai(attrs.evolve(CACHED, reply="one two three four", fault="reset_mid_stream")) as fake:
        config = make_config(providers=[passthrough(fake.url)], pricing=PRICING)
        async with running_gateway(config) as gw, gw.http() as http:
            body = {"model": "gpt-test", "input": "Hi.", "stream": True}
            response = await http.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"})
            ledger = await wait_for_events(gw, lambda es: bool(settled(es)))
    assert response.status_code == 200
    raw = response.text
    assert '"delta":"one"' in raw.replace(" ", "") and "response.completed" not in raw
    error = json.loads(raw.split("event: error\ndata: ")[1].split("\n")[0])
    assert error["type"] == "error" and error["code"] == "upstream_error"
    (failed,) = settled(ledger)
    assert isinstance(failed, Request.Failed) and failed.outcome == "truncated"
    assert failed.usage_source == "estimated" and failed.completion_tokens == 1  # "one", delivered


def test_a_hard_budget_caps_a_pass_through_body_in_its_own_field() -> None:
    from policies.validation import parse_chat_request

    chat = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    responses = attrs.evolve(chat, native={"model": "m", "input": "hi"}, native_api="responses").capped(7)
    messages = attrs.evolve(chat, native={"model": "m", "max_tokens": 100}, native_api="messages").capped(7)
    assert responses.native == {"model": "m", "input": "hi", "max_output_tokens": 7}
    assert messages.native == {"model": "m", "max_tokens": 7}
    assert responses.body["max_tokens"] == 7 and responses.max_tokens == 7


async def test_usage_beyond_the_reservation_is_billed_capped_and_shown_as_billed() -> None:
    """A pass-through provider claiming more input than the request could hold: billed at the bound,
    and the client (whole answer or held `response.completed`) sees the usage billed, not the claim."""
    claim = {"input_tokens": 5_000_000, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5}
    async with fake_openai(attrs.evolve(CACHED, usage=claim)) as fake:
        config = make_config(providers=[passthrough(fake.url)], pricing=PRICING)
        async with running_gateway(config) as gw:
            client = gw.client()
            whole = await in_thread(client.responses.create, model="gpt-test", input="Hi.")

            def streamed() -> list[Any]:
                return list(client.responses.create(model="gpt-test", input="Hi.", stream=True))

            final = (await in_thread(streamed))[-1].response
            ledger = await wait_for_events(gw, lambda es: len(settled(es)) >= 2)
    billed = [(e.usage_source, e.prompt_tokens, e.completion_tokens) for e in settled(ledger)]
    for answer, (source, prompt, completion) in zip((whole, final), billed, strict=True):
        assert source == "provider_capped" and prompt < 5_000_000 and completion == 5
        assert answer.usage is not None
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (prompt, completion)


def test_a_data_only_responses_stream_keeps_each_event_name_from_its_type() -> None:
    """A server that sends Responses events without `event:` lines (SSE's default name, "message"):
    each relayed event is named by its `type`, so the closing `response.completed` is still found and
    held until settlement. Failed before: every event was relayed as `event: message`."""
    from providers.openai_responses import ResponsesStreamDecoder
    from providers.sse import SSEEvent

    decoder = ResponsesStreamDecoder("up")
    delta = decoder.feed(SSEEvent(json.dumps({"type": "response.output_text.delta", "delta": "hi"})))
    usage = {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
    completed = {"type": "response.completed", "response": {"id": "resp_1", "output": [], "usage": usage}}
    closing = decoder.feed(SSEEvent(json.dumps(completed)))
    assert [c.native.split("\n", 1)[0] for c in delta + closing if c.native] == [
        "event: response.output_text.delta",
        "event: response.completed",
    ]
    assert decoder.finished


async def test_inputs_no_reservation_bounds_are_refused_under_a_hard_budget_and_billed_as_reported_otherwise() -> None:
    """A passed-through body with a file by id (its tokens are not in the body): under a hard budget it
    is refused before any call (403 cost_unbounded) — its cost could not be reserved; without one it is
    billed as the provider reports it, not capped at the body's bound. Failed before: admitted under
    the hard budget and billed `provider_capped` at a fraction of the provider's claim."""
    content = [{"type": "input_text", "text": "Summarise."}, {"type": "input_file", "file_id": "file-abc"}]
    body = {"model": "gpt-test", "input": [{"role": "user", "content": content}]}
    claim = {"input_tokens": 120_000, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5}
    tenants = [
        {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY)},
        {"name": "other", "api_key_sha256": hash_key(OTHER_KEY), "budget_usd": "100", "budget_mode": "hard"},
    ]
    async with fake_openai(attrs.evolve(CACHED, usage=claim)) as fake:
        config = make_config(providers=[passthrough(fake.url)], pricing=PRICING, tenants=tenants)
        async with running_gateway(config) as gw, gw.http() as http:
            refused = await http.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {OTHER_KEY}"})
            assert not fake.bodies
            answered = await http.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"})
            ledger = await wait_for_events(gw, lambda es: bool(settled(es)))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "cost_unbounded"
    assert answered.status_code == 200 and len(fake.bodies) == 1
    (event,) = settled(ledger)
    assert event.usage_source == "provider" and event.prompt_tokens == 120_000
    assert event.cost_usd == cost(120_000, 0, 5)


async def test_a_pass_through_stream_logs_its_usage_once_before_its_terminal_event() -> None:
    """`response.completed`'s usage is in the ledger (`Request.UsageReported`) before the request's
    terminal event, so a crash between the two keeps it. Failed before: the pass-through relay kept
    the usage only in memory."""
    async with fake_openai(CACHED) as fake:
        config = make_config(providers=[passthrough(fake.url)], pricing=PRICING)
        async with running_gateway(config) as gw:
            client = gw.client()
            await in_thread(lambda: list(client.responses.create(model="gpt-test", input="Hi.", stream=True)))
            ledger = await wait_for_events(gw, lambda es: bool(settled(es)))
    kinds = [type(e).__name__ for e in ledger if isinstance(e, (Request.UsageReported, Request.Settled))]
    assert kinds == ["UsageReported", "Completed"]
    (reported,) = [e for e in ledger if isinstance(e, Request.UsageReported)]
    assert (reported.prompt_tokens, reported.cached_tokens, reported.completion_tokens) == (40, 30, 5)
