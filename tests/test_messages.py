"""Anthropic's Messages API on the gateway, used as users use it: the official `anthropic` SDK (sync,
async, streams, count_tokens) through the simulator (translated to chat) and through an Anthropic-kind
upstream fake (passed through); errors in Anthropic's shape; the ledger's account of each."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from events.request import Request
from providers.anthropic import encode_request, openai_usage
from providers.upstream import Call
from runtime.auth import DEMO_KEY, hash_key
from runtime.chat.messages import anthropic_usage, to_chat, to_message
from runtime.chat.messages_stream import MessagesStreamEncoder
from runtime.ledger.replay import verify_open
from tests.fake_anthropic import COUNTED_TOKENS, Behaviour, fake_anthropic
from tests.harness import Running, in_thread, ledger_events, make_config, running_gateway, wait_for_events

SIM_PRICING = {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}
CLAUDE_PRICING = {
    "claude/claude-test": {"input_per_mtok": "3", "output_per_mtok": "15", "cached_input_per_mtok": "0.3"}
}
HI = [{"role": "user", "content": "Say something about ledgers."}]


def claude_provider(url: str) -> dict[str, Any]:
    return {
        "name": "claude",
        "kind": "anthropic",
        "base_url": url,
        "api_key_env": "FAKE_KEY",
        "models": ["claude-test"],
    }


def sdk(gw: Running, key: str = DEMO_KEY, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, **options)


def messages_admitted(events: list[Any]) -> list[Request.Admitted]:
    return [e for e in events if isinstance(e, Request.Admitted) and e.operation == "messages"]


def settled(events: list[Any]) -> list[Request.Settled]:
    return [e for e in events if isinstance(e, Request.Settled)]


# --- through the simulator: Messages translated to chat and back -------------------------------------------


async def test_the_sdk_through_the_simulator_sync_async_streams_and_count_tokens() -> None:
    async with running_gateway(make_config(pricing=SIM_PRICING)) as gw:
        client = sdk(gw)
        message = await in_thread(client.messages.create, model="sim-1", max_tokens=64, messages=HI, system="Be terse.")
        assert message.type == "message" and message.role == "assistant"
        assert message.content[0].type == "text" and message.content[0].text
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

        def streamed() -> tuple[str, Any]:
            with client.messages.stream(model="sim-1", max_tokens=64, messages=HI) as stream:
                text = "".join(stream.text_stream)
                return text, stream.get_final_message()

        text, final = await in_thread(streamed)
        assert text and final.content[0].text == text
        assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0

        def raw_events() -> list[str]:
            return [
                event.type for event in client.messages.create(model="sim-1", max_tokens=64, messages=HI, stream=True)
            ]

        kinds = await in_thread(raw_events)
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        assert "content_block_start" in kinds and "content_block_delta" in kinds and "content_block_stop" in kinds

        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0) as async_client:
            answer = await async_client.messages.create(model="sim-1", max_tokens=32, messages=HI)
            assert answer.content[0].type == "text"

        with httpx.Client(base_url=gw.url) as http:
            counted = await in_thread(
                http.post,
                "/v1/messages/count_tokens",
                json={"model": "sim-1", "messages": HI},
                headers={"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"},
            )
        assert counted.status_code == 200 and counted.headers["x-tollgate-estimated"] == "true"
        assert counted.json()["input_tokens"] > 0
        sdk_count = await in_thread(client.messages.count_tokens, model="sim-1", messages=HI)
        assert sdk_count.input_tokens == counted.json()["input_tokens"]

        events = await wait_for_events(gw, lambda events: len(settled(events)) >= 4)
        client.close()
    assert len(messages_admitted(events)) == 4  # count_tokens is not a billed request: no event
    assert all(e.outcome == "ok" and e.cost_usd is not None and e.cost_usd > 0 for e in settled(events))
    streamed_settlement = settled(events)[1]
    assert streamed_settlement.completion_tokens == final.usage.output_tokens  # billed what the client was told


# --- through an Anthropic-kind upstream: passed through ------------------------------------------------------


async def test_the_body_is_passed_through_to_an_anthropic_provider_and_costs_are_exact() -> None:
    behaviour = Behaviour(cache_read_input_tokens=100)
    async with fake_anthropic(behaviour) as fake:
        config = make_config(providers=[claude_provider(fake.url)], pricing=CLAUDE_PRICING)
        async with running_gateway(config) as gw:
            client = sdk(gw)
            system = [{"type": "text", "text": "You are a ledger.", "cache_control": {"type": "ephemeral"}}]
            tools = [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object", "properties": {}}}]
            message = await in_thread(
                client.messages.create,
                model="claude-test",
                max_tokens=2048,
                system=system,
                messages=HI,
                tools=tools,
                thinking={"type": "enabled", "budget_tokens": 1024},
                extra_body={"a_field_from_the_future": {"kept": True}},
            )
            sent = fake.bodies[-1]
            assert sent["system"] == system and sent["tools"] == tools
            assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
            assert sent["a_field_from_the_future"] == {"kept": True}
            assert sent["max_tokens"] == 2048 and sent["model"] == "claude-test"
            assert message.id == "msg_fake"  # the provider's own answer
            assert message.usage.cache_read_input_tokens == 100 and message.usage.input_tokens == 11

            def streamed() -> Any:
                with client.messages.stream(model="claude-test", max_tokens=64, messages=HI) as stream:
                    return stream.get_final_message()

            final = await in_thread(streamed)
            assert final.content[0].text == "Hello from the fake Anthropic upstream."
            assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (
                11,
                100,
                6,
            )

            async with gw.http() as http:
                body = {"model": "claude-test", "max_tokens": 64, "messages": HI, "stream": True}
                raw = (await http.post("/v1/messages", json=body, headers={"x-api-key": DEMO_KEY})).text
            # the provider's own events, as they came: its ping, its message id and input usage
            assert "event: ping\n" in raw and '"id": "msg_fake"' in raw and '"cache_read_input_tokens": 100' in raw
            assert raw.endswith('event: message_stop\ndata: {"type": "message_stop"}\n\n')

            counted = await in_thread(client.messages.count_tokens, model="claude-test", messages=HI, system=system)
            assert counted.input_tokens == COUNTED_TOKENS
            assert "max_tokens" not in fake.bodies[-1] and fake.bodies[-1]["system"] == system
            events = await wait_for_events(gw, lambda events: len(settled(events)) >= 3)
            client.close()
    # 11 input at $3/M, 100 cache reads at $0.3/M, 6 output at $15/M: (33 + 30 + 90) / 1e6.
    for event in settled(events):
        assert (event.prompt_tokens, event.cached_tokens, event.completion_tokens) == (111, 100, 6)
        assert event.cost_usd == Decimal("0.000153000")
    # TODO(prices helper): cache-write tokens (usage.cache_creation_input_tokens) are in prompt_tokens
    # at the input price until `policies.cost` prices them; `anthropic_usage` already shows them.


CLAUDE_CODE_BODY = {
    "max_tokens": 32000,
    "stream": True,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1;"},
        {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]},
        {
            "role": "system",
            "content": [{"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}],
        },
    ],
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "metadata": {"user_id": '{"device_id":"5198","session_id":"117e"}'},
}


async def test_a_claude_code_request_is_served_by_both_kinds_of_provider() -> None:
    """What Claude Code sends (research/clients-claude-code-agents.md): `?beta=true`, `anthropic-beta`, a system
    turn inside `messages`, beta-only fields. Passed through with its headers; translated for the simulator."""
    headers = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    async with fake_anthropic() as fake:
        providers = [{"name": "sim", "kind": "simulator", "models": ["sim-1"]}, claude_provider(fake.url)]
        config = make_config(providers=providers, pricing={**SIM_PRICING, **CLAUDE_PRICING})
        async with running_gateway(config) as gw, gw.http() as http:
            for model in ("claude-test", "sim-1"):
                answer = await http.post(
                    "/v1/messages?beta=true", json={**CLAUDE_CODE_BODY, "model": model}, headers=headers
                )
                assert answer.status_code == 200, answer.text
                assert answer.text.startswith("event: message_start\n") and "text_delta" in answer.text
                assert answer.text.endswith('"type":"message_stop"}\n\n') or answer.text.endswith(
                    '"type": "message_stop"}\n\n'
                )
            counted = await http.post(
                "/v1/messages/count_tokens?beta=true", json={"model": "claude-test", "messages": HI}, headers=headers
            )
            assert counted.json() == {"input_tokens": COUNTED_TOKENS}
    sent = fake.bodies[0]
    assert {key: value for key, value in sent.items() if key != "model"} == CLAUDE_CODE_BODY
    assert fake.headers[0]["anthropic-beta"] == "claude-code-20250219" == fake.headers[1]["anthropic-beta"]


# --- errors in Anthropic's shape -----------------------------------------------------------------------------


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    assert message
    return message


async def test_errors_come_in_anthropics_shape_with_the_right_status() -> None:
    tenant = {"name": "poor", "api_key_sha256": hash_key("tg-poor"), "budget_usd": "0", "budget_mode": "hard"}
    demo = {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY)}
    async with running_gateway(make_config(pricing=SIM_PRICING, tenants=[demo, tenant])) as gw, gw.http() as http:
        key = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"}
        message = anthropic_error(
            await http.post("/v1/messages", json={"model": "sim-1", "messages": HI}, headers=key),
            400,
            "invalid_request_error",
        )
        assert "max_tokens" in message
        bad_role = {"model": "sim-1", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}
        anthropic_error(await http.post("/v1/messages", json=bad_role, headers=key), 400, "invalid_request_error")
        anthropic_error(await http.post("/v1/messages", content=b"{nope", headers=key), 400, "invalid_request_error")
        good = {"model": "sim-1", "max_tokens": 5, "messages": HI}
        anthropic_error(
            await http.post("/v1/messages", json=good, headers={"x-api-key": "wrong"}), 401, "authentication_error"
        )
        anthropic_error(await http.post("/v1/messages", json=good), 401, "authentication_error")
        unknown = {**good, "model": "nope"}
        anthropic_error(await http.post("/v1/messages", json=unknown, headers=key), 404, "not_found_error")
        anthropic_error(
            await http.post("/v1/messages/count_tokens", json={"model": "nope", "messages": HI}, headers=key),
            404,
            "not_found_error",
        )
        poor = {"x-api-key": "tg-poor"}
        anthropic_error(await http.post("/v1/messages", json=good, headers=poor), 402, "billing_error")
        # the same key as a bearer token works too, and the chat routes keep OpenAI's shape
        ok = await http.post("/v1/messages", json=good, headers={"Authorization": f"Bearer {DEMO_KEY}"})
        assert ok.status_code == 200 and ok.json()["type"] == "message"
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": HI},
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
        )
        assert chat.status_code == 404 and "error" in chat.json() and "type" not in chat.json()
        events = await ledger_events(gw)
    rejected = [e for e in events if isinstance(e, Request.Rejected)]
    assert {(e.operation, e.status) for e in rejected} >= {("messages", 400), ("messages", 404), ("messages", 402)}
    assert all(
        e.operation == "chat" for e in rejected if e.status == 404 and e.model == "nope" and e.operation != "messages"
    )


async def test_a_rate_limited_message_is_a_429_rate_limit_error_with_retry_after() -> None:
    tenant = {"name": "slow", "api_key_sha256": hash_key("tg-slow"), "rpm": 1}
    async with running_gateway(make_config(pricing=SIM_PRICING, tenants=[tenant])) as gw, gw.http() as http:
        good = {"model": "sim-1", "max_tokens": 5, "messages": HI}
        assert (await http.post("/v1/messages", json=good, headers={"x-api-key": "tg-slow"})).status_code == 200
        limited = await http.post("/v1/messages", json=good, headers={"x-api-key": "tg-slow"})
    anthropic_error(limited, 429, "rate_limit_error")
    assert int(limited.headers["retry-after"]) >= 1


async def test_the_sdk_raises_its_own_errors() -> None:
    async with running_gateway(make_config(pricing=SIM_PRICING)) as gw:
        client = sdk(gw, key="tg-wrong")
        with pytest.raises(anthropic.AuthenticationError):
            await in_thread(client.messages.create, model="sim-1", max_tokens=5, messages=HI)
        client.close()
        client = sdk(gw)
        with pytest.raises(anthropic.NotFoundError):
            await in_thread(client.messages.create, model="nope", max_tokens=5, messages=HI)
        client.close()


async def test_a_stream_failing_mid_answer_ends_with_an_error_event_and_settles_once() -> None:
    async with fake_anthropic(Behaviour(fault="error_event", chunks=4)) as fake:
        config = make_config(providers=[claude_provider(fake.url)], pricing=CLAUDE_PRICING)
        async with running_gateway(config) as gw, gw.http() as http:
            body = {"model": "claude-test", "max_tokens": 64, "messages": HI, "stream": True}
            response = await http.post("/v1/messages", json=body, headers={"x-api-key": DEMO_KEY})
            events = await wait_for_events(gw, lambda events: bool(settled(events)))
    assert response.status_code == 200
    assert "event: error\n" in response.text and "message_stop" not in response.text
    error = json.loads(response.text.split("event: error\ndata: ")[1].split("\n")[0])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    (failed,) = settled(events)
    assert isinstance(failed, Request.Failed) and failed.outcome == "truncated"


@pytest.mark.parametrize("route", ["/v1/messages", "/v1/chat/completions"])
async def test_a_client_leaving_a_stream_is_settled_once_with_the_input_the_upstream_reported(route: str) -> None:
    """Failed before: the input usage of `message_start` was not kept, the prompt was estimated. The
    Messages pass-through and a chat stream from an Anthropic provider alike."""
    behaviour = Behaviour(chunks=8, stall_after_first_s=3600, input_tokens=30, cache_read_input_tokens=100)
    async with fake_anthropic(behaviour) as fake:
        config = make_config(providers=[claude_provider(fake.url)], pricing=CLAUDE_PRICING)
        async with running_gateway(config) as gw, gw.http() as http:
            body = {"model": "claude-test", "max_tokens": 64, "messages": HI, "stream": True}
            headers = {"x-api-key": DEMO_KEY, "Authorization": f"Bearer {DEMO_KEY}", "X-Request-ID": "leaving"}
            first = "event: content_block_delta" if route == "/v1/messages" else '"content":"Hello'
            async with http.stream("POST", route, json=body, headers=headers) as response:
                async for line in response.aiter_lines():
                    if first in line:
                        break  # the first piece of text arrived; the client hangs up
            with trio.fail_after(10):
                await fake.wait_streams_closed()
            events = await wait_for_events(gw, lambda events: bool(settled(events)))
    assert [type(e).__name__ for e in events if isinstance(e, Request.Event)] == ["Admitted", "Cancelled"]
    (cancelled,) = settled(events)
    assert cancelled.outcome == "client_disconnected"
    # message_start's input (30 + 100 cache reads); its output (1) lags behind the word delivered
    # ("Hello", estimated at 2 tokens), so the output is the estimate and the usage says so.
    assert (cancelled.prompt_tokens, cancelled.cached_tokens, cancelled.completion_tokens) == (130, 100, 2)
    assert cancelled.usage_source == "estimated"
    assert cancelled.cost_usd == (Decimal(30) * 3 + Decimal(100) * Decimal("0.3") + 2 * 15) / 1_000_000


async def test_replay_verify_is_clean_after_a_mixed_workload(tmp_path: Path) -> None:
    async with fake_anthropic() as fake:
        config = make_config(
            providers=[{"name": "sim", "kind": "simulator", "models": ["sim-1"]}, claude_provider(fake.url)],
            pricing={**SIM_PRICING, **CLAUDE_PRICING},
            ledger={"path": str(tmp_path / "ledger.db")},
        )
        async with running_gateway(config) as gw, gw.http() as http:
            key = {"x-api-key": DEMO_KEY}
            for model in ("sim-1", "claude-test"):
                for stream in (False, True):
                    body = {"model": model, "max_tokens": 32, "messages": HI, "stream": stream}
                    assert (await http.post("/v1/messages", json=body, headers=key)).status_code == 200
                chat = {"model": model, "messages": HI}
                assert (
                    await http.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {DEMO_KEY}"})
                ).status_code == 200
            assert (
                await http.post("/v1/messages", json={"model": "nope", "max_tokens": 1, "messages": HI}, headers=key)
            ).status_code == 404
            gateway = gw.gateway
            await gateway.projector.wait_for(gateway.journal.position)
            problems = await trio.to_thread.run_sync(
                lambda: verify_open(gateway.store, gateway.projector.projections), limiter=gateway.projector._limiter
            )
            events = await ledger_events(gw)
    assert problems == []
    operations = sorted(e.operation for e in events if isinstance(e, Request.Admitted))
    assert operations == ["chat"] * 2 + ["messages"] * 4


# --- the translations as contracts -----------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
TOOL_ID = st.from_regex(r"toolu_[a-z0-9]{4}", fullmatch=True)
ARGS = st.dictionaries(st.sampled_from(["a", "b", "city"]), st.integers(0, 9) | TEXT, max_size=2)


@st.composite
def messages_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A Messages body in the part of the format chat can say exactly: alternating turns of text blocks,
    assistant tool_use, user tool_result (text), a system string, tools and a tool choice."""
    turns: list[dict[str, Any]] = []
    pending: list[str] = []
    for index in range(draw(st.integers(1, 4))):
        if index % 2 == 0:
            blocks: list[dict[str, Any]] = [
                {"type": "tool_result", "tool_use_id": tool, "content": [{"type": "text", "text": draw(TEXT)}]}
                for tool in pending
            ]
            blocks += [{"type": "text", "text": draw(TEXT)} for _ in range(draw(st.integers(0 if pending else 1, 2)))]
            pending = []
            turns.append({"role": "user", "content": blocks})
        else:
            blocks = [{"type": "text", "text": draw(TEXT)}]
            pending = draw(st.lists(TOOL_ID, max_size=2, unique=True))
            blocks += [{"type": "tool_use", "id": tool, "name": "lookup", "input": draw(ARGS)} for tool in pending]
            turns.append({"role": "assistant", "content": blocks})
    if turns[-1]["role"] == "assistant":
        turns[-1]["content"] = turns[-1]["content"][:1]
    body: dict[str, Any] = {"model": "claude-test", "max_tokens": draw(st.integers(1, 10_000))}
    if draw(st.booleans()):
        body["system"] = draw(TEXT)
    body["messages"] = turns
    if draw(st.booleans()):
        body["temperature"] = draw(st.sampled_from([0, 0.5, 1]))
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(TEXT, min_size=1, max_size=2))
    if draw(st.booleans()):
        body["metadata"] = {"user_id": draw(TEXT)}
    if draw(st.booleans()):
        body["tools"] = [
            {"name": "lookup", "description": "Look", "input_schema": {"type": "object", "properties": {}}}
        ]
        choice = draw(st.sampled_from([None, {"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "lookup"}]))
        if choice is not None:
            body["tool_choice"] = choice
    return body


@settings(deadline=None)  # a shared, loaded machine: no wall-clock limit
@given(messages_bodies())
def test_messages_to_chat_and_back_is_the_identity_where_chat_can_say_it(body: dict[str, Any]) -> None:
    chat = to_chat(body)
    back = json.loads(encode_request(Call(chat, "claude-test", False)))
    assert back == body


USAGE = st.fixed_dictionaries(
    {
        key: st.integers(0, 10**9)
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    }
)


@settings(deadline=None)
@given(USAGE)
def test_usage_to_openai_and_back_is_the_identity(usage: dict[str, int]) -> None:
    assert anthropic_usage(openai_usage(usage)) == usage


def test_a_chat_answer_becomes_a_message_with_tool_use_and_stop_reason() -> None:
    completion = {
        "id": "chatcmpl-1",
        "model": "gpt-x",
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": "Looking.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 10}},
    }
    message = to_message(completion, "gpt-x")
    assert message["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
    ]
    assert message["stop_reason"] == "tool_use" and message["id"].startswith("msg_")
    assert message["usage"] == {
        "input_tokens": 20,
        "output_tokens": 5,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 0,
    }


def test_the_stream_encoder_opens_and_closes_blocks_in_order() -> None:
    encoder = MessagesStreamEncoder("m", 7)
    chunks = [
        {"id": "c", "choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"id": "c", "choices": [{"delta": {"content": "Hi"}}]},
        {
            "id": "c",
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": ""}}]}}
            ],
        },
        {"id": "c", "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}}]},
        {"id": "c", "choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]
    text = "".join(encoder.feed(chunk) for chunk in chunks) + encoder.finish(
        {"prompt_tokens": 9, "completion_tokens": 2}, {}
    )
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"]["input_tokens"] == 7
    assert events[4]["content_block"] == {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    assert events[7]["delta"]["stop_reason"] == "tool_use" and events[7]["usage"]["input_tokens"] == 9


def test_a_native_stream_says_what_was_reported_before_its_end() -> None:
    """`message_start`'s input and the last `message_delta`'s output, as a stream cut there is settled."""
    from events.usage import Usage
    from policies.usage import reported_so_far
    from providers.anthropic import NativeStreamDecoder
    from providers.sse import SSEDecoder

    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 40, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 9}}
    raw = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (start, delta)).encode()
    decoder = NativeStreamDecoder("claude", "claude-test", 0)
    reported = [chunk.reported for event in SSEDecoder().feed(raw) for chunk in decoder.feed(event)]
    assert reported == [Usage(40, 1), Usage(40, 9)]
    estimate = Usage(12, 5, source="estimated")
    assert reported_so_far(Usage(40, 9), estimate) == Usage(40, 9)
    assert reported_so_far(Usage(40, 1), estimate) == Usage(40, 5, source="estimated")
    assert reported_so_far(None, estimate) == estimate
