"""A mixed workload through the real gateway, with the official clients: chat (openai SDK), messages
(anthropic SDK, prompt caching with `cache_control`: cache writes, 1-hour writes and reads), responses
(translated for an Anthropic provider, passed through to an OpenAI one), each whole and streamed. Every
request's cost in the ledger is the price math done by hand, and `tollgate replay --verify` is clean."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
import trio

from events.request import Request
from runtime.auth import DEMO_KEY
from runtime.cli.commands import main
from tests.fake_anthropic import Behaviour as Claude
from tests.fake_anthropic import fake_anthropic
from tests.fake_openai import Behaviour as OpenAI
from tests.fake_openai import fake_openai
from tests.harness import in_thread, ledger_events, make_config, openai_provider, running_gateway

M = Decimal(1_000_000)
CLAUDE = {
    "input": Decimal(3),
    "output": Decimal(15),
    "read": Decimal("0.3"),
    "write": Decimal("3.75"),
    "1h": Decimal(6),
}
UP = {"input": Decimal(2), "output": Decimal(8), "read": Decimal("0.5")}
PRICING = {
    "claude/claude-test": {
        "input_per_mtok": "3",
        "output_per_mtok": "15",
        "cached_input_per_mtok": "0.3",
        "cache_write_per_mtok": "3.75",
        "cache_write_1h_per_mtok": "6",
    },
    "up/gpt-test": {"input_per_mtok": "2", "output_per_mtok": "8", "cached_input_per_mtok": "0.5"},
}
LONG = "You keep a double-entry ledger. " * 100  # a cacheable prefix, long enough to bound 1000+ prompt tokens
SYSTEM = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
HI = [{"role": "user", "content": "Say something about ledgers."}]
UP_REPLY = OpenAI(reply="From the OpenAI-kind upstream.", prompt_tokens=40, cached_tokens=30, completion_tokens=5)
WORDS = 6  # the fake Anthropic upstream's reply, one output token per word


def claude_cost(fresh: int, read: int, write: int, write_1h: int, output: int) -> Decimal:
    rates = CLAUDE
    return (
        fresh * rates["input"]
        + read * rates["read"]
        + (write - write_1h) * rates["write"]
        + write_1h * rates["1h"]
        + output * rates["output"]
    ) / M


def up_cost(prompt: int, cached: int, output: int) -> Decimal:
    return ((prompt - cached) * UP["input"] + cached * UP["read"] + output * UP["output"]) / M


def settled_by_request(events: list[Any]) -> dict[str, Request.Settled]:
    ids = {e.originator_id: e.request_id for e in events if isinstance(e, Request.Admitted)}
    return {ids[e.originator_id]: e for e in events if isinstance(e, Request.Settled)}


async def test_every_route_costs_exactly_the_price_math_and_replay_verify_is_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    expected: dict[str, tuple[tuple[int, int, int, int, int], Decimal]] = {}  # prompt, cached, written, 1h, output
    async with fake_anthropic() as claude, fake_openai(UP_REPLY) as up:
        providers = [
            {"name": "claude", "kind": "anthropic", "base_url": claude.url, "api_key_env": "FAKE_KEY"}
            | {"models": ["claude-test"]},
            openai_provider(up.url, responses=True),
        ]
        config = make_config(providers=providers, pricing=PRICING, ledger={"path": str(ledger)})
        async with running_gateway(config) as gw:
            chat = gw.client()
            messages = anthropic.Anthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)

            # chat completions, to the OpenAI-kind upstream: 40 prompt tokens, 30 of them cache reads
            def chat_stream() -> list[Any]:
                stream = chat.chat.completions.create(
                    model="gpt-test",
                    messages=HI,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers={"X-Request-ID": "chat-stream"},
                )
                return list(stream)

            whole = await in_thread(
                chat.chat.completions.create,
                model="gpt-test",
                messages=HI,
                extra_headers={"X-Request-ID": "chat"},
            )
            assert whole.usage is not None and whole.usage.prompt_tokens_details is not None
            assert whole.usage.prompt_tokens_details.cached_tokens == 30
            chunks = await in_thread(chat_stream)
            assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 40
            for name in ("chat", "chat-stream"):
                expected[name] = ((40, 30, 0, 0, 5), up_cost(40, 30, 5))

            # messages, passed through to the Anthropic upstream: a cache write (100 of it for 1 hour), then a read
            claude.queue.append(Claude(cache_creation_input_tokens=500, cache_creation_1h_input_tokens=100))
            message = await in_thread(
                messages.messages.create,
                model="claude-test",
                max_tokens=64,
                system=SYSTEM,
                messages=HI,
                extra_headers={"X-Request-ID": "messages"},
            )
            assert claude.bodies[-1]["system"] == SYSTEM  # cache_control reached the provider
            assert (message.usage.input_tokens, message.usage.cache_creation_input_tokens) == (11, 500)
            expected["messages"] = ((511, 0, 500, 100, WORDS), claude_cost(11, 0, 500, 100, WORDS))

            claude.queue.append(Claude(cache_read_input_tokens=500))

            def messages_stream() -> Any:
                with messages.messages.stream(
                    model="claude-test",
                    max_tokens=64,
                    system=SYSTEM,  # type: ignore[arg-type]
                    messages=HI,  # type: ignore[arg-type]
                    extra_headers={"X-Request-ID": "messages-stream"},
                ) as stream:
                    return stream.get_final_message()

            final = await in_thread(messages_stream)
            assert final.usage.cache_read_input_tokens == 500
            expected["messages-stream"] = ((511, 500, 0, 0, WORDS), claude_cost(11, 500, 0, 0, WORDS))

            # responses translated to chat for the Anthropic upstream (its cache reads shown as cached tokens)
            for name, stream in (("responses-translated", False), ("responses-translated-stream", True)):
                claude.queue.append(Claude(cache_read_input_tokens=300))
                answer = await responses(chat, "claude-test", stream, name)
                assert answer.usage.input_tokens_details.cached_tokens == 300
                expected[name] = ((311, 300, 0, 0, WORDS), claude_cost(11, 300, 0, 0, WORDS))

            # responses passed through to the OpenAI-kind upstream
            for name, stream in (("responses-passed", False), ("responses-passed-stream", True)):
                answer = await responses(chat, "gpt-test", stream, name)
                assert answer.id.startswith("resp_fake") and answer.usage.input_tokens_details.cached_tokens == 30
                expected[name] = ((40, 30, 0, 0, 5), up_cost(40, 30, 5))
            assert up.paths[-2:] == ["/v1/responses", "/v1/responses"]
            messages.close()
            gateway = gw.gateway
            await gateway.projector.wait_for(gateway.journal.position)
            events = await ledger_events(gw)
    settled = settled_by_request(events)
    assert sorted(settled) == sorted(expected)
    for name, (counts, cost) in expected.items():
        event = settled[name]
        assert isinstance(event, Request.Completed) and event.usage_source == "provider", name
        recorded = (
            event.prompt_tokens,
            event.cached_tokens,
            event.cache_write_tokens,
            event.cache_write_1h_tokens,
            event.completion_tokens,
        )
        assert recorded == counts, name
        assert event.cost_usd == cost, name
    operations = sorted(e.operation for e in events if isinstance(e, Request.Admitted))
    assert operations == ["chat"] * 2 + ["messages"] * 2 + ["responses"] * 4

    config_file = tmp_path / "tollgate.toml"
    config_file.write_text(f'[ledger]\npath = "{ledger}"\n')
    capsys.readouterr()
    assert await trio.to_thread.run_sync(main, ["replay", "--verify", "--config", str(config_file)]) == 0
    assert "the live projections match a rebuild from the ledger" in capsys.readouterr().out


async def responses(client: Any, model: str, stream: bool, request_id: str) -> Any:
    """A Responses API call through the SDK, whole or streamed: the final `response`."""
    headers = {"X-Request-ID": request_id}
    if not stream:
        return await in_thread(
            client.responses.create, model=model, input="Hi.", instructions=LONG, extra_headers=headers
        )

    def streamed() -> Any:
        events = list(
            client.responses.create(model=model, input="Hi.", instructions=LONG, stream=True, extra_headers=headers)
        )
        assert events[-1].type == "response.completed"
        return events[-1].response

    return await in_thread(streamed)
