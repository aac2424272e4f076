"""Bad input is a 400 in OpenAI's error shape, on every route that reads JSON (issue #11, item 9)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from runtime.auth import hash_key
from runtime.config import ConfigError
from tests.harness import ADMIN, make_config, running_gateway

PRICING = {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}
DEMO = {"Authorization": "Bearer tg-demo-key"}
JSON = {"content-type": "application/json"}


def assert_openai_400(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"], error["message"]


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def chat_with(content: str) -> bytes:
    return ('{"model":"sim-1","messages":[{"role":"user","content":' + content + "}]}").encode()


JSON_ROUTES = [
    ("POST", "/v1/chat/completions", DEMO),
    ("POST", "/admin/tenants", ADMIN),
    ("PATCH", "/admin/tenants/demo", ADMIN),
    ("POST", "/admin/tenants/demo/rotate-key", ADMIN),
    ("PUT", "/admin/pricing", ADMIN),
    ("POST", "/admin/reprice", ADMIN),
]


async def test_deeply_nested_json_is_a_400_on_every_json_route() -> None:
    from runtime.auth import DEMO_KEY

    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        for method, path, headers in JSON_ROUTES:
            if headers is DEMO:
                headers = {"Authorization": f"Bearer {DEMO_KEY}"}
            for body in (
                deep(3000),
                deep(50_000),
                chat_with(deep(5000).decode()),
                b'{"a":' * 3000 + b"1" + b"}" * 3000,
            ):
                response = await http.request(method, path, content=body, headers={**headers, **JSON})
                assert_openai_400(response, "deeper than")
        # a moderately nested body that is otherwise fine still works
        shallow = chat_with('[{"type":"text","text":"' + "[" * 500 + '"}]')
        ok = await http.post(
            "/v1/chat/completions", content=shallow, headers={"Authorization": f"Bearer {DEMO_KEY}", **JSON}
        )
        assert ok.status_code == 200, ok.text


async def test_lone_surrogate_is_a_400_but_an_escaped_emoji_is_fine() -> None:
    from runtime.auth import DEMO_KEY

    auth = {"Authorization": f"Bearer {DEMO_KEY}", **JSON}
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        for content in ('"\\ud800"', '"a\\udfffb"', '"\\ud83d"', '"x\\ude00\\ud83d"'):
            response = await http.post("/v1/chat/completions", content=chat_with(content), headers=auth)
            assert_openai_400(response, "surrogate")
        raw_surrogate = chat_with('"').replace(b'"}]}', b'\xed\xa0\x80"}]}')  # UTF-8-encoded surrogate bytes
        assert_openai_400(await http.post("/v1/chat/completions", content=raw_surrogate, headers=auth), "UTF-8")
        created = await http.post("/admin/tenants", content=b'{"name":"\\ud800"}', headers={**ADMIN, **JSON})
        assert_openai_400(created, "surrogate")
        emoji = await http.post("/v1/chat/completions", content=chat_with('"\\ud83d\\ude00"'), headers=auth)
        assert emoji.status_code == 200, emoji.text


@pytest.mark.parametrize("value", [[], "cheap", 5, True])
async def test_a_price_that_is_not_an_object_is_a_400(value: Any) -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        response = await http.put("/admin/pricing", json={"prices": {"sim/sim-1": value}}, headers=ADMIN)
        assert_openai_400(response, "prices.sim/sim-1", "expected an object")
        assert response.json()["error"]["param"] == "prices.sim/sim-1"


@pytest.mark.parametrize("amount", ["1e308", "1e13", "-1", "NaN", "Infinity", "sNaN", "1e999999999999"])
async def test_an_absurd_amount_is_a_400_with_a_clear_message(amount: str) -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        created = await http.post("/admin/tenants", json={"name": "big", "budget_usd": amount}, headers=ADMIN)
        assert_openai_400(created, "budget_usd")
        assert "unknown error" not in created.text and "InvalidOperation" not in created.text
        patched = await http.patch("/admin/tenants/demo", json={"budget_usd": amount}, headers=ADMIN)
        assert_openai_400(patched, "budget_usd")
        price = {"input_per_mtok": amount, "output_per_mtok": "1"}
        priced = await http.put("/admin/pricing", json={"prices": {"sim/sim-1": price}}, headers=ADMIN)
        assert_openai_400(priced, "input_per_mtok")
        assert "unknown error" not in priced.text


def test_config_refuses_an_absurd_amount_with_a_clear_message() -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(pricing={"sim/sim-1": {"input_per_mtok": "1e308", "output_per_mtok": "1"}})
    assert raised.value.problems == [
        "pricing.\"sim/sim-1\".input_per_mtok: must be at most 1,000,000,000,000 USD, got '1e308'"
    ]
    with pytest.raises(ConfigError) as raised:
        make_config(tenants=[{"name": "t", "api_key_sha256": "0" * 64, "budget_usd": "NaN"}])
    assert raised.value.problems == ["tenants[0].budget_usd: expected a finite amount, got 'NaN'"]


@pytest.mark.parametrize("value", [[], "cheap", 5])
async def test_a_reprice_price_that_is_not_an_object_is_a_400(value: Any) -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        for key in ("sim/sim-1", ""):
            response = await http.post("/admin/reprice", json={"prices": {key: value}}, headers=ADMIN)
            assert_openai_400(response, f'prices."{key}"')


async def test_an_upstream_answer_with_a_lone_surrogate_is_relayed_escaped() -> None:
    """JSON may carry a lone surrogate (`\\ud800`); an upstream that sends one must not make the
    gateway fail: it answers with the same string, escaped, as the one JSON helper does everywhere."""
    from runtime.auth import DEMO_KEY
    from tests.fake_openai import Behaviour, fake_openai
    from tests.harness import openai_provider

    auth = {"Authorization": f"Bearer {DEMO_KEY}"}
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        fake_openai(Behaviour(reply="half \ud800 a pair")) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw,
        gw.http() as http,
    ):
        response = await http.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status_code == 200, response.text
    assert b"half \\ud800 a pair" in response.content
    assert response.json()["choices"][0]["message"]["content"] == "half \ud800 a pair"


@pytest.mark.parametrize("budgeted", [True, False], ids=["budget", "no-budget"])
@pytest.mark.parametrize("max_tokens", [10**30, int("9" * 400)], ids=["1e30", "400-digits"])
async def test_an_absurd_max_tokens_is_a_400_and_the_tenant_keeps_working(max_tokens: int, budgeted: bool) -> None:
    """It crashed the tenant's actor (Decimal or float overflow in the worst case): the request hung and the
    restart forgot the reservations in flight, so a hard budget could be spent twice."""
    policy = {"budget_usd": "1", "budget_mode": "hard"} if budgeted else {}
    config = make_config(pricing=PRICING, tenants=[{"name": "t", "api_key_sha256": hash_key("tg-t"), **policy}])
    body = {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}
    key = {"Authorization": "Bearer tg-t"}
    async with running_gateway(config) as gw, gw.http() as http:
        with trio.fail_after(10):
            absurd = await http.post("/v1/chat/completions", json={**body, "max_tokens": max_tokens}, headers=key)
            assert_openai_400(absurd, "max_tokens")
            assert (await http.post("/v1/chat/completions", json=body, headers=key)).status_code == 200


@pytest.mark.parametrize("grace", [1e20, "1e400"])
async def test_an_absurd_grace_period_is_a_400(grace: Any) -> None:
    raw = b'{"grace_period_s": ' + (grace.encode() if isinstance(grace, str) else repr(grace).encode()) + b"}"
    async with running_gateway(make_config()) as gw, gw.http() as http:
        answer = await http.post("/admin/tenants/demo/rotate-key", content=raw, headers={**ADMIN, **JSON})
    assert_openai_400(answer)


async def test_a_session_cookie_that_is_not_ascii_is_no_session() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        page = await http.get("/dashboard/overview", headers={"Cookie": "tollgate_session=1.2.%C3%A9"})
        forged = await http.get("/dashboard/overview", headers={"Cookie": "tollgate_session=1.2.é".encode()})
    assert page.status_code < 500 and forged.status_code < 500, (page.text, forged.text)
    assert page.status_code in (302, 303, 401) and forged.status_code in (302, 303, 401)
