"""Provider actors: circuit breakers, fallback order, retries — over real HTTP, in virtual time."""

from __future__ import annotations

from typing import Any

import httpx
import trio
import trio.testing

from events.provider import Provider
from events.request import Request
from runtime.auth import DEMO_KEY
from tests.fake_openai import Behaviour, FakeOpenAI, fake_openai
from tests.harness import ADMIN, ledger_events, make_config, openai_provider, running_gateway

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
BREAKER = {"consecutive_failures": 2, "cooldown_s": 30, "half_open_probes": 1, "success_threshold": 1}


async def post(http: httpx.AsyncClient, body: dict[str, Any] = BODY, **headers: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=body, headers={**AUTH, **headers})


async def provider_stats(http: httpx.AsyncClient, name: str = "up") -> dict[str, Any]:
    providers = (await http.get("/admin/providers", headers=ADMIN)).json()["providers"]
    return next(p for p in providers if p["name"] == name)


async def test_breaker_opens_half_opens_admits_k_probes_and_closes(mock_clock: trio.testing.MockClock) -> None:
    async with fake_openai(Behaviour(status=500)) as fake:
        config = make_config(providers=[openai_provider(fake.url, breaker=BREAKER)])
        async with running_gateway(config) as gw, gw.http() as http:
            assert (await post(http)).status_code == 502
            assert (await provider_stats(http))["breaker"] == "closed"
            assert (await post(http)).status_code == 502  # the second failure in a row opens it
            stats = await provider_stats(http)
            assert stats["breaker"] == "open" and stats["half_open_in_s"] == 30
            refused = await post(http)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "provider_unavailable"
            assert refused.headers["retry-after"] == "30"
            assert len(fake.bodies) == 2, "an open breaker sends nothing upstream"

            mock_clock.jump(30)
            fake.behaviour = Behaviour(first_byte_delay_s=5)  # a slow but healthy provider
            async with trio.open_nursery() as nursery:
                probe: list[httpx.Response] = []

                async def send_probe() -> None:
                    probe.append(await post(http))

                nursery.start_soon(send_probe)
                while (await provider_stats(http))["probes_in_flight"] == 0:
                    await trio.testing.wait_all_tasks_blocked()
                second = await post(http)  # K = 1: a second request during the probe is refused
                assert second.status_code == 503
                said = second.json()["error"]["message"]  # what is true: not "circuit open"
                assert "half-open, a probe request is in flight" in said and "circuit open" not in said
                assert (await provider_stats(http))["breaker"] == "half_open"
                mock_clock.jump(5)
            assert probe[0].status_code == 200
            assert (await provider_stats(http))["breaker"] == "closed"
            fake.behaviour = Behaviour()
            assert (await post(http)).status_code == 200
            events = await ledger_events(gw)
    transitions = [(e.from_state, e.to_state) for e in events if isinstance(e, Provider.BreakerTransitioned)]
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    reasons = [e.reason for e in events if isinstance(e, Provider.BreakerTransitioned)]
    assert reasons[0] == "2 consecutive failures"


async def test_a_failed_probe_reopens(mock_clock: trio.testing.MockClock) -> None:
    async with fake_openai(Behaviour(status=503)) as fake:
        config = make_config(providers=[openai_provider(fake.url, breaker=BREAKER)])
        async with running_gateway(config) as gw, gw.http() as http:
            for _ in range(2):
                await post(http)
            mock_clock.jump(30)
            assert (await post(http)).status_code == 502  # the probe fails
            stats = await provider_stats(http)
            assert stats["breaker"] == "open" and stats["half_open_in_s"] == 30


async def test_client_errors_and_cancellations_do_not_move_the_breaker(mock_clock: trio.testing.MockClock) -> None:
    rejected = Behaviour(status=400, error_body='{"error":{"message":"bad tools"}}')
    async with fake_openai(rejected) as fake:
        config = make_config(providers=[openai_provider(fake.url, breaker=BREAKER)])
        async with running_gateway(config) as gw, gw.http() as http:
            for _ in range(5):
                assert (await post(http)).status_code == 400
            fake.behaviour = Behaviour(first_byte_delay_s=60)
            for _ in range(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(post, http)
                    while len(fake.bodies) < 6 + _:
                        await trio.testing.wait_all_tasks_blocked()
                    nursery.cancel_scope.cancel()  # the client goes away mid-request
            while (stats := await provider_stats(http))["in_flight"]:
                await trio.testing.wait_all_tasks_blocked()
            assert stats["breaker"] == "closed"
            assert stats["consecutive_failures"] == 0
            assert stats["cancellations"] == 5


async def test_fallback_follows_the_tenant_order_every_time(mock_clock: trio.testing.MockClock) -> None:
    async with fake_openai(Behaviour(status=500)) as a, fake_openai(Behaviour(status=500)) as b, fake_openai() as c:
        fakes: dict[str, FakeOpenAI] = {"a": a, "b": b, "c": c}
        config = make_config(
            providers=[openai_provider(f.url, name=n, models=()) for n, f in fakes.items()],
            models={"m": {"deployments": [{"provider": n, "model": f"{n}-model"} for n in fakes]}},
        )
        async with running_gateway(config) as gw, gw.http() as http:
            created = await http.post(
                "/admin/tenants",
                json={"name": "ordered", "default_provider": "b", "fallback_providers": ["a"]},
                headers=ADMIN,
            )
            key = {"Authorization": f"Bearer {created.json()['api_key']}"}
            body = {**BODY, "model": "m"}
            for _ in range(3):  # b, then a, then c (config order) — the same every time
                response = await http.post("/v1/chat/completions", json=body, headers=key)
                assert response.status_code == 200
                assert response.json()["x_gateway"]["provider"] == "c"
                assert response.json()["x_gateway"]["attempts"] == 3
            events = await ledger_events(gw)
            plain = await post(http, body)  # the demo tenant has no preference: config order a, b, c
            assert plain.json()["x_gateway"]["provider"] == "c"
    order = [e.provider for e in events if isinstance(e, Request.AttemptFailed)]
    assert order == ["b", "a"] * 3


async def test_retries_honour_retry_after_then_fall_back(mock_clock: trio.testing.MockClock) -> None:
    async with fake_openai(Behaviour(status=429, retry_after="2")) as limited, fake_openai() as spare:
        config = make_config(
            providers=[
                openai_provider(limited.url, name="limited", models=(), max_retries=2, max_retry_wait_s=10),
                openai_provider(spare.url, name="spare", models=()),
            ],
            models={"m": {"deployments": [{"provider": "limited", "model": "x"}, {"provider": "spare", "model": "y"}]}},
        )
        async with (
            running_gateway(config) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=None) as http,  # virtual time must not time it out
            trio.open_nursery() as nursery,
        ):
            result: list[httpx.Response] = []

            async def ask() -> None:
                result.append(await post(http, {**BODY, "model": "m"}))

            nursery.start_soon(ask)
            for expected in (1, 2):  # each retry waits the provider's Retry-After: 2 s of virtual time
                await limited.wait_for_requests(expected)
                await trio.testing.wait_all_tasks_blocked()  # the gateway now sleeps in its backoff
                mock_clock.jump(2)
            await limited.wait_for_requests(3)
        response = result[0]
    assert response.status_code == 200
    assert response.json()["x_gateway"] == {**response.json()["x_gateway"], "provider": "spare", "attempts": 4}
    assert len(limited.bodies) == 3 and len(spare.bodies) == 1


async def test_all_breakers_open_is_503_with_the_earliest_half_open_time(mock_clock: trio.testing.MockClock) -> None:
    async with fake_openai(Behaviour(status=500)) as a, fake_openai(Behaviour(status=500)) as b:
        config = make_config(
            providers=[
                openai_provider(
                    a.url, name="a", models=(), breaker={**BREAKER, "consecutive_failures": 1, "cooldown_s": 40}
                ),
                openai_provider(
                    b.url, name="b", models=(), breaker={**BREAKER, "consecutive_failures": 1, "cooldown_s": 20}
                ),
            ],
            models={"m": {"deployments": [{"provider": "a", "model": "x"}, {"provider": "b", "model": "y"}]}},
        )
        async with running_gateway(config) as gw, gw.http() as http:
            first = await post(http, {**BODY, "model": "m"})
            assert first.status_code == 502
            message = first.json()["error"]["message"]
            assert "provider 'a': upstream answered 500; provider 'b': upstream answered 500" in message
            assert "secret" not in first.text
            refused = await post(http, {**BODY, "model": "m"})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "20"


async def test_retry_after_rounds_up_like_the_message(mock_clock: trio.testing.MockClock) -> None:
    """Retry-After is whole seconds rounded up: a client told to come back sooner than the breaker opens
    would be refused again (29.4 s left said "retry in 30s" but sent Retry-After: 29)."""
    async with fake_openai(Behaviour(status=500)) as fake:
        config = make_config(providers=[openai_provider(fake.url, breaker=BREAKER)])
        async with running_gateway(config) as gw, gw.http() as http:
            for _ in range(2):
                assert (await post(http)).status_code == 502  # two failures open the breaker for 30 s
            mock_clock.jump(0.6)
            refused = await post(http)
    assert refused.status_code == 503
    assert "retry in 30s" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "30"
