"""Streams never leak and are billed honestly — proved over real sockets."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from events.request import Request
from events.store import LedgerStore
from runtime.auth import DEMO_KEY, hash_key
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

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
PRICING = {"up/gpt-test": {"input_per_mtok": "1", "output_per_mtok": "2"}}
WORDS = " ".join(f"w{i}" for i in range(40))


def stream_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": "tell me"}], "stream": True, **extra}


async def quiet(gateway: Any) -> None:
    """Wait until no request is alive in the gateway (its lifetime guard counts them)."""
    with trio.fail_after(5):
        while gateway.http_in_flight:
            await trio.testing.wait_all_tasks_blocked()


@pytest.mark.slow
async def test_200_concurrent_streams_with_random_disconnects_leave_nothing_behind() -> None:
    paced = Behaviour(reply=WORDS, chunks=40, chunk_delay_s=0.01)
    rng = random.Random(7)
    async with fake_openai(paced) as fake:
        config = make_config(providers=[openai_provider(fake.url)], pricing=PRICING)
        async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            delivered: dict[str, int] = {}

            async def client(n: int) -> None:
                request_id = f"s{n}"
                keep = rng.choice([0, 1, 2, 5, 10, 20, 1000])  # events to read before hanging up
                seen = 0
                async with http.stream(
                    "POST", "/v1/chat/completions", json=stream_body(), headers={**AUTH, "X-Request-ID": request_id}
                ) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("data: {") and '"content":"w' in line.replace(" ", ""):
                            seen += 1
                        if seen >= keep:
                            break
                delivered[request_id] = seen

            async with trio.open_nursery() as nursery:
                for n in range(200):
                    nursery.start_soon(client, n)
            # Every upstream stream is closed once its client is gone. A guard against a hang, not a
            # measure: that a hang-up closes the upstream at once, with no timer, is proved on a frozen
            # clock by test_a_client_that_hangs_up_closes_the_upstream_at_once.
            with trio.fail_after(10):
                await fake.wait_idle()
            await quiet(gw.gateway)
            stats = gw.gateway.statistics()
            events = await ledger_events(gw)
    assert fake.open_streams == 0 and fake.open_requests == 0
    assert stats.http_in_flight == 0
    assert all(p.in_flight == 0 for p in stats.providers)
    assert all(t.in_flight == 0 and t.reserved_usd == "0" for t in stats.tenants)
    chains = request_events(events)
    assert len(chains) == 200
    for request_id, chain in chains.items():
        # a stream whose usage chunk was read also has its UsageReported (one) before the terminal event
        assert chain[0] == "Admitted" and chain[1:-1] in ([], ["UsageReported"]), (request_id, chain)
        assert chain[-1] in ("Completed", "Cancelled")
    settled = {e.originator_id: e for e in events if isinstance(e, Request.Settled)}
    admitted = {e.originator_id: e.request_id for e in events if isinstance(e, Request.Admitted)}
    for originator, event in settled.items():
        if delivered[admitted[originator]] > 0:
            assert event.completion_tokens > 0, "a stream that delivered content is billed for it"
            assert event.cost_usd is not None and event.cost_usd > 0


HANG_UPS = {
    "before the first byte": Behaviour(first_byte_delay_s=30),
    "before the first token": Behaviour(first_content_delay_s=30),
    "mid-stream": Behaviour(reply=WORDS, chunks=40, chunk_delay_s=10),
}


@pytest.mark.parametrize("behaviour", HANG_UPS.values(), ids=HANG_UPS.keys())
async def test_a_client_that_hangs_up_closes_the_upstream_at_once(
    mock_clock: trio.testing.MockClock, behaviour: Behaviour
) -> None:
    """The clock stands still (it moves only when the test jumps it), so no delay of the fake's and
    no timeout of the gateway's can end the upstream stream: only the hang-up can, and it must do so
    with no virtual time passing. Were it to hang, autojump (after 5 real seconds with every task
    blocked) moves the clock to the next timer and the assertion on the clock fails."""
    mock_clock.autojump_threshold = 5
    async with fake_openai(behaviour) as fake:
        timeouts = {"first_token_s": 200, "idle_s": 100}
        config = make_config(providers=[openai_provider(fake.url, timeouts=timeouts)], pricing=PRICING)
        async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            content = trio.Event()

            async def ask() -> None:
                headers = {**AUTH, "X-Request-ID": "gone"}
                async with http.stream("POST", "/v1/chat/completions", json=stream_body(), headers=headers) as answer:
                    async for line in answer.aiter_lines():
                        if '"content":"w' in line.replace(" ", ""):
                            content.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await fake.wait_for_requests(1)
                if behaviour.chunk_delay_s:
                    await trio.testing.wait_all_tasks_blocked()
                    mock_clock.jump(behaviour.chunk_delay_s)  # the first content arrives, the next is 10 s away
                    await content.wait()
                hung_up = trio.current_time()
                nursery.cancel_scope.cancel()  # the client hangs up
            await fake.wait_idle()
            assert trio.current_time() == hung_up, "the upstream was closed by a timer, not by the hang-up"
            assert fake.open_streams == 0
            await quiet(gw.gateway)
            events = await ledger_events(gw)
    assert request_events(events)["gone"] == ["Admitted", "Cancelled"]


async def test_ttft_disconnect_is_recorded_with_the_estimated_prompt() -> None:
    async with fake_openai(Behaviour(first_content_delay_s=30)) as fake:
        config = make_config(providers=[openai_provider(fake.url)], pricing=PRICING)
        async with running_gateway(config) as gw, gw.http() as http:
            async with trio.open_nursery() as nursery:

                async def ask() -> None:
                    await http.post(
                        "/v1/chat/completions", json=stream_body(), headers={**AUTH, "X-Request-ID": "early"}
                    )

                nursery.start_soon(ask)
                await fake.wait_for_requests(1)
                nursery.cancel_scope.cancel()
            with trio.fail_after(1):
                await fake.wait_idle()
            await quiet(gw.gateway)
            events = await ledger_events(gw)
    assert request_events(events)["early"] == ["Admitted", "Cancelled"]
    (cancelled,) = [e for e in events if isinstance(e, Request.Cancelled)]
    assert cancelled.outcome == "client_disconnected"
    assert cancelled.usage_source == "estimated" and cancelled.prompt_tokens > 0 and cancelled.completion_tokens == 0


async def test_a_three_minute_stream_completes_intact(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.rate = 60  # three virtual minutes take three real seconds; every timer runs on this clock
    config = make_config(
        providers=[
            {
                "name": "sim",
                "kind": "simulator",
                "models": ["sim-1"],
                "simulator": {"reply_tokens": 37, "chunk_interval_ms": 5000},
                "timeouts": {"first_token_s": 30, "idle_s": 30},
            }
        ]
    )
    async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
        started = trio.current_time()
        body = {"model": "sim-1", "messages": [{"role": "user", "content": "a long answer"}], "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as response:
            text = "".join([piece async for piece in response.aiter_text()])
        elapsed = trio.current_time() - started
        events = await ledger_events(gw)
    assert elapsed >= 180, "the stream really lasted three (virtual) minutes"
    assert text.endswith("data: [DONE]\n\n") and "event: error" not in text
    assert text.count('"content":') >= 38
    (completed,) = [e for e in events if isinstance(e, Request.Completed)]
    assert completed.completion_tokens == 37 and completed.outcome == "ok"


async def test_an_upstream_that_goes_quiet_mid_stream_is_ended_by_the_idle_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    quiet_upstream = Behaviour(reply=WORDS, chunks=4, chunk_delay_s=100)
    async with fake_openai(quiet_upstream) as fake:
        config = make_config(
            providers=[openai_provider(fake.url, timeouts={"first_token_s": 200, "idle_s": 10})], pricing=PRICING
        )
        async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            lines: list[str] = []

            async def read() -> None:
                async with http.stream(
                    "POST", "/v1/chat/completions", json=stream_body(), headers={**AUTH, "X-Request-ID": "idle"}
                ) as response:
                    lines.extend([line async for line in response.aiter_lines() if line])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await fake.wait_for_requests(1)
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(100)  # the first content arrives
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(10)  # then nothing for the idle limit
            events = await ledger_events(gw)
            stats = (await http.get("/admin/providers", headers=ADMIN)).json()
    assert lines[-2] == "event: error" and "upstream_timeout" in lines[-1] and "sent nothing for 10s" in lines[-1]
    assert "data: [DONE]" not in lines
    assert request_events(events)["idle"] == ["Admitted", "AttemptFailed", "Failed"]
    failed = next(e for e in events if isinstance(e, Request.Failed))
    assert failed.outcome == "truncated" and failed.completion_tokens > 0 and failed.usage_source == "estimated"
    attempt = next(e for e in events if isinstance(e, Request.AttemptFailed))
    assert attempt.error_kind == "timeout"
    assert stats["providers"][0]["failures"] == 1, "a broken stream counts against the breaker"


async def test_a_mid_stream_reset_is_recorded_as_truncated() -> None:
    broken = Behaviour(reply=WORDS, chunks=8, fault="reset_mid_stream")
    async with fake_openai(broken) as fake:
        config = make_config(providers=[openai_provider(fake.url)], pricing=PRICING)
        async with running_gateway(config) as gw, gw.http() as http:
            response = await http.post(
                "/v1/chat/completions", json=stream_body(), headers={**AUTH, "X-Request-ID": "cut"}
            )
            events = await ledger_events(gw)
    assert "event: error" in response.text and "data: [DONE]" not in response.text
    assert request_events(events)["cut"] == ["Admitted", "AttemptFailed", "Failed"]
    failed = next(e for e in events if isinstance(e, Request.Failed))
    assert failed.outcome == "truncated" and failed.completion_tokens > 0


async def test_a_client_that_stops_reading_is_ended_by_the_write_deadline() -> None:
    config = make_config(
        server={"host": "127.0.0.1", "port": 0, "write_timeout_s": 0.5},
        providers=[
            {
                "name": "sim",
                "kind": "simulator",
                "models": ["sim-1"],
                "simulator": {"reply_tokens": 100_000, "chunk_tokens": 500},
            }
        ],
    )
    async with running_gateway(config) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        body = b'{"model":"sim-1","stream":true,"messages":[{"role":"user","content":"x"}]}'
        await stream.send_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {DEMO_KEY}\r\nX-Request-ID: stuck\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # Never read: the gateway's writes fill the socket buffers, then its write deadline ends the request.
        with trio.fail_after(20):
            await wait_for_events(gw, lambda e: "Cancelled" in request_events(e).get("stuck", []))
        await stream.aclose()
        events = await ledger_events(gw)
    cancelled = next(e for e in events if isinstance(e, Request.Cancelled))
    assert cancelled.outcome == "client_stuck" and cancelled.completion_tokens > 0


def test_sigterm_cuts_streams_after_the_grace_period_and_records_them(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
grace_period_s = 0.5
[ledger]
path = "{ledger}"
[[providers]]
name = "sim"
kind = "simulator"
models = ["sim-1"]
[providers.simulator]
reply_tokens = 100
chunk_interval_ms = 100
[[tenants]]
name = "demo"
api_key_sha256 = "{hash_key(DEMO_KEY)}"
"""
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "TOLLGATE_ADMIN_KEY": "tga-x"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        body = {"model": "sim-1", "messages": [{"role": "user", "content": "x"}], "stream": True}
        received = ""
        cut = False
        try:
            with httpx.stream(
                "POST", url + "/v1/chat/completions", json=body, headers={**AUTH, "X-Request-ID": "long"}, timeout=30
            ) as response:
                for piece in response.iter_text():
                    received += piece
                    if received.count('"content"') == 3:
                        process.send_signal(signal.SIGTERM)
        except httpx.RemoteProtocolError:
            cut = True  # the connection is cut when the grace period ends
        assert cut
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for pipe in (process.stdout, process.stderr):
            if pipe:
                pipe.close()
    assert "data: [DONE]" not in received, "a 10 s stream cannot finish in a 0.5 s grace period"
    store = LedgerStore(str(ledger))
    events = [r.event for r in store.read_all()]
    store.close()
    assert request_events(events)["long"] == ["Admitted", "Cancelled"]
    cancelled = next(e for e in events if isinstance(e, Request.Cancelled))
    assert cancelled.outcome == "shutdown" and cancelled.completion_tokens > 0
