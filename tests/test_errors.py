"""Every refusal is an OpenAI-shaped error with the right status, type, code and param."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from runtime.auth import DEMO_KEY
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import in_thread, make_config, openai_provider, running_gateway

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def assert_error(
    response: Any, status: int, code: str, param: str | None = None, type_: str = "invalid_request_error"
) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == type_
    assert error["param"] == param
    assert error["message"]
    assert response.headers["x-request-id"]
    return str(error["message"])


MALFORMED: list[tuple[bytes, str | None, str, str]] = [
    (b"{not json", None, "invalid_json", "not valid JSON"),
    (b"", None, "invalid_json", "empty"),
    (b"[1, 2]", None, "invalid_type", "JSON object"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "missing_required_parameter", "'model'"),
    (b'{"model": "sim-1"}', "messages", "missing_required_parameter", "'messages'"),
    (b'{"model": 7, "messages": []}', "model", "invalid_type", "must be a string"),
    (b'{"model": "sim-1", "messages": "hi"}', "messages", "invalid_type", "must be an array"),
    (
        b'{"model": "sim-1", "messages": [{"content": "hi"}]}',
        "messages[0].role",
        "missing_required_parameter",
        "role",
    ),
    (
        b'{"model": "sim-1", "messages": [{"role": "robot", "content": "hi"}]}',
        "messages[0].role",
        "invalid_value",
        "robot",
    ),
    (
        b'{"model": "sim-1", "messages": [{"role": "user", "content": 5}]}',
        "messages[0].content",
        "invalid_type",
        "content",
    ),
    (
        b'{"model": "sim-1", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        "stream",
        "invalid_type",
        "boolean",
    ),
    (
        b'{"model": "sim-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
        "max_tokens",
        "invalid_value",
        "at least 1",
    ),
    (
        b'{"model": "sim-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": true}',
        "max_tokens",
        "invalid_type",
        "integer",
    ),
    (
        b'{"model": "sim-1", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": 1}}',
        "stream_options.include_usage",
        "invalid_type",
        "boolean",
    ),
]
"""Chat bodies the gateway refuses: (body, param, code, a fragment of the message). Each case is
checked against the pure validation in `tests/test_validation.py`; two go through the route here."""


@pytest.mark.parametrize(("body", "param", "code", "fragment"), [MALFORMED[0], MALFORMED[-1]])
async def test_a_malformed_request_is_a_400_in_openai_shape_naming_the_field(
    body: bytes, param: str | None, code: str, fragment: str
) -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        response = await http.post(
            "/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"}
        )
        assert fragment in assert_error(response, 400, code, param)


async def test_auth_errors() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        body = {"model": "sim-1", "messages": OK_MESSAGES}
        missing = await http.post("/v1/chat/completions", json=body)
        assert "API key" in assert_error(missing, 401, "invalid_api_key")
        wrong = await http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer tg-nope"})
        assert_error(wrong, 401, "invalid_api_key")
        basic = await http.post("/v1/chat/completions", json=body, headers={"Authorization": "Basic abc"})
        assert_error(basic, 401, "invalid_api_key")
        models = await http.get("/v1/models")
        assert_error(models, 401, "invalid_api_key")
        admin = await http.get("/admin/providers", headers=AUTH)
        assert_error(admin, 401, "invalid_api_key")


async def test_auth_error_through_the_sdk() -> None:
    async with running_gateway(make_config()) as gw:
        with pytest.raises(openai.AuthenticationError):
            await in_thread(gw.client(key="tg-wrong").chat.completions.create, model="sim-1", messages=OK_MESSAGES)


async def test_unknown_model_is_404() -> None:
    async with running_gateway(make_config()) as gw:
        with pytest.raises(openai.NotFoundError) as caught:
            await in_thread(gw.client().chat.completions.create, model="gpt-nope", messages=OK_MESSAGES)
        assert caught.value.code == "model_not_found"
        assert "gpt-nope" in caught.value.message


async def test_oversize_body_is_413() -> None:
    config = make_config(server={"host": "127.0.0.1", "port": 0, "max_body_bytes": 2048})
    async with running_gateway(config) as gw, gw.http() as http:
        big = {"model": "sim-1", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = await http.post("/v1/chat/completions", json=big, headers=AUTH)
        assert "2048" in assert_error(response, 413, "request_too_large")


async def test_unknown_path_and_method() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        assert_error(await http.get("/v1/nothing-here"), 404, "not_found")
        assert_error(await http.get("/v1/chat/completions", headers=AUTH), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour(status=500),
        Behaviour(status=503),
        Behaviour(fault="malformed_json"),
        Behaviour(status=401),
    ],
)
async def test_upstream_failure_is_502_without_upstream_body(behaviour: Behaviour) -> None:
    async with (
        fake_openai(behaviour) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw,
        gw.http() as http,
    ):
        response = await http.post(
            "/v1/chat/completions", json={"model": "gpt-test", "messages": OK_MESSAGES}, headers=AUTH
        )
        message = assert_error(response, 502, "upstream_error", type_="api_error")
        assert "up" in message
        assert "secret" not in response.text
        stream = await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": OK_MESSAGES, "stream": True},
            headers=AUTH,
        )
        assert_error(stream, 502, "upstream_error", type_="api_error")


async def test_unreachable_upstream_is_502() -> None:
    async with running_gateway(make_config(providers=[openai_provider("http://127.0.0.1:1/v1")])) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await in_thread(gw.client().chat.completions.create, model="gpt-test", messages=OK_MESSAGES)
        assert caught.value.status_code == 502


async def test_upstream_client_error_is_passed_back_as_400_and_not_retried() -> None:
    rejected = Behaviour(
        status=400, error_body='{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}'
    )
    async with fake_openai(rejected) as bad, fake_openai() as good:
        config = make_config(
            providers=[
                openai_provider(bad.url, name="first", models=()),
                openai_provider(good.url, name="second", models=()),
            ],
            models={"m": {"deployments": [{"provider": "first", "model": "a"}, {"provider": "second", "model": "b"}]}},
        )
        async with running_gateway(config) as gw, gw.http() as http:
            response = await http.post(
                "/v1/chat/completions", json={"model": "m", "messages": OK_MESSAGES}, headers=AUTH
            )
            assert "max_tokens is too large" in assert_error(response, 400, "upstream_rejected")
            assert len(good.bodies) == 0, "a client error is not retried elsewhere"
