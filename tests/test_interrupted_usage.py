"""A request the gateway died under is recorded with its usage unknown (cost None) — unless its
provider had already reported usage (a stream's usage chunk, read before the stop): then that usage,
priced, is what crash recovery records."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import trio

from events.request import Request
from runtime.auth import DEMO_KEY
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import (
    ADMIN,
    ledger_events,
    make_config,
    openai_provider,
    request_events,
    running_gateway,
    wait_for_events,
)

DEMO = {"Authorization": f"Bearer {DEMO_KEY}"}
PRICING = {"up/gpt-test": {"input_per_mtok": "10", "output_per_mtok": "20"}}
ASK = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def backup(source: Path, target: Path) -> None:
    """A consistent copy of the ledger file as it is now: what a kill -9 at this moment leaves on disk."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


async def test_a_stream_interrupted_after_its_usage_chunk_is_recovered_with_that_usage(tmp_path: Path) -> None:
    ledger, crashed = tmp_path / "ledger.sqlite3", tmp_path / "crashed.sqlite3"
    behaviour = Behaviour(fault="hang_after_usage", prompt_tokens=11, completion_tokens=7)
    async with fake_openai(behaviour) as fake:
        config = make_config(providers=[openai_provider(fake.url)], pricing=PRICING, ledger={"path": str(ledger)})
        async with running_gateway(config) as gw, gw.http() as http, trio.open_nursery() as nursery:

            async def stream() -> None:
                async with http.stream("POST", "/v1/chat/completions", json=ASK, headers=DEMO) as answer:
                    async for _ in answer.aiter_bytes():
                        pass

            nursery.start_soon(stream)
            with trio.fail_after(30):  # no UsageReported ever (before it existed): fail, not hang
                events = await wait_for_events(
                    gw, lambda found: any(isinstance(e, Request.UsageReported) for e in found)
                )
            assert not any(isinstance(e, Request.Settled) for e in events), "the stream is still open upstream"
            await trio.to_thread.run_sync(backup, ledger, crashed)
            nursery.cancel_scope.cancel()

    # A start on the crashed ledger, once the dead process's heartbeat has expired, recovers the request.
    later = make_config(providers=[openai_provider(fake.url)], pricing=PRICING, ledger={"path": str(crashed)})
    async with running_gateway(later, clock=lambda: datetime.now(UTC) + timedelta(minutes=1)) as gw, gw.http() as http:
        events = await ledger_events(gw)
        spend = (await http.get("/admin/spend", headers=ADMIN)).json()
    recovered = [e for e in events if isinstance(e, Request.Failed)]
    assert [e.outcome for e in recovered] == ["interrupted"]
    failed = recovered[0]
    assert (failed.prompt_tokens, failed.completion_tokens, failed.usage_source) == (11, 7, "provider")
    assert (failed.provider, failed.served_model) == ("up", "gpt-test")
    assert failed.cost_usd == Decimal("0.00025")  # (11 × 10 + 7 × 20) / 1e6
    assert failed.price_ref is not None and failed.price_ref.startswith("up/gpt-test@")
    assert spend["totals"]["interrupted_unknown_usage"] == 0, "its usage is known"


async def test_a_stream_writes_one_usage_reported_before_its_terminal_event_chat_and_messages() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        chat = {"model": "sim-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        answer = await http.post("/v1/chat/completions", json=chat, headers={**DEMO, "X-Request-ID": "chat"})
        assert answer.status_code == 200 and "[DONE]" in answer.text
        messages = {**chat, "max_tokens": 50}
        answer = await http.post("/v1/messages", json=messages, headers={"x-api-key": DEMO_KEY, "X-Request-ID": "msg"})
        assert answer.status_code == 200 and "message_stop" in answer.text
        plain = {**chat, "stream": False}
        answer = await http.post("/v1/chat/completions", json=plain, headers={**DEMO, "X-Request-ID": "plain"})
        assert answer.status_code == 200
        chains = request_events(await ledger_events(gw))
    assert chains["chat"] == ["Admitted", "UsageReported", "Completed"]
    assert chains["msg"] == ["Admitted", "UsageReported", "Completed"]
    assert chains["plain"] == ["Admitted", "Completed"], "only streams: an answer is settled as it arrives"
