"""When every attempt fails, the client learns what happened in the gateway's words — and a 429 stays a 429."""

from __future__ import annotations

import logging
from typing import Any

import openai
import pytest

from runtime.auth import DEMO_KEY
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import in_thread, make_config, openai_provider, running_gateway

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]
REFUSED_URL = "http://127.0.0.1:1/v1"  # nothing listens on port 1: the connect is refused


def two_providers(first: str, second: str, **extra: Any) -> Any:
    return make_config(
        providers=[
            openai_provider(first, name="a", models=(), **extra),
            openai_provider(second, name="b", models=(), **extra),
        ],
        models={"m": {"deployments": [{"provider": "a", "model": "x"}, {"provider": "b", "model": "y"}]}},
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_every_candidate_rate_limited_is_a_429_with_the_longest_retry_after(stream: bool) -> None:
    async with (
        fake_openai(Behaviour(status=429, retry_after="3")) as a,
        fake_openai(Behaviour(status=429, retry_after="7")) as b,
        running_gateway(two_providers(a.url, b.url)) as gw,
        gw.http() as http,
    ):
        response = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": stream}, headers=AUTH
        )
        with pytest.raises(openai.RateLimitError) as caught:  # the SDK sees OpenAI's own 429
            await in_thread(gw.client().chat.completions.create, model="m", messages=MESSAGES, stream=stream)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "upstream_rate_limited", None)
    assert "provider 'a': rate limited (429); provider 'b': rate limited (429)" in error["message"]
    assert "secret" not in response.text
    assert caught.value.response.headers["retry-after"] == "7"


async def test_an_absurd_retry_after_is_capped_and_none_means_one_second() -> None:
    async with fake_openai(Behaviour(status=429, retry_after="86400")) as a, fake_openai(Behaviour(status=429)) as b:
        async with running_gateway(two_providers(a.url, b.url)) as gw, gw.http() as http:
            capped = await http.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=AUTH)
        async with running_gateway(two_providers(b.url, b.url)) as gw, gw.http() as http:
            unsaid = await http.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=AUTH)
    assert (capped.status_code, capped.headers["retry-after"]) == (429, "60")
    assert (unsaid.status_code, unsaid.headers["retry-after"]) == (429, "1")


async def test_mixed_failures_name_each_provider_and_what_happened(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tollgate.router")
    async with (
        fake_openai(Behaviour(status=500)) as a,
        running_gateway(two_providers(a.url, REFUSED_URL)) as gw,
        gw.http() as http,
    ):
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={**AUTH, "X-Request-ID": "mixed-1"},
        )
    assert response.status_code == 502
    assert "retry-after" not in response.headers
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("api_error", "upstream_error")
    assert "provider 'a': upstream answered 500; provider 'b': connection refused" in error["message"]
    assert "secret" not in response.text  # the 500's body ("upstream secret internals") is never repeated
    failed = [r for r in caplog.records if r.name == "tollgate.router" and r.levelno == logging.WARNING]
    said = [r.getMessage() for r in failed]
    assert len(said) == 2, said
    assert "mixed-1" in said[0] and "'a'" in said[0] and "server_error" in said[0]
    assert "mixed-1" in said[1] and "'b'" in said[1] and "connect_failed" in said[1]


async def test_a_429_at_one_provider_and_a_503_at_the_other_is_a_502() -> None:
    async with (
        fake_openai(Behaviour(status=429, retry_after="3")) as a,
        fake_openai(Behaviour(status=503)) as b,
        running_gateway(two_providers(a.url, b.url)) as gw,
        gw.http() as http,
    ):
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=AUTH)
    assert response.status_code == 502
    assert (
        "provider 'a': rate limited (429); provider 'b': upstream answered 503" in response.json()["error"]["message"]
    )
