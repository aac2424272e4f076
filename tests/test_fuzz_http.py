"""Fuzz every route of the real gateway (issue #11): random methods, bodies and headers.

One gateway serves the whole test (started once, in its own thread with its own `trio.run`);
Hypothesis sends `MAX_EXAMPLES` requests through one `httpx.Client`. Every answer must be below
500, and every 4xx must carry OpenAI's error shape."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.auth import DEMO_KEY
from tests.harness import ADMIN_KEY, make_config, running_gateway

MAX_EXAMPLES = 2000
PRICING = {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}

PATHS = [
    "/v1/chat/completions",
    "/v1/models",
    "/v1/usage",
    "/healthz",
    "/readyz",
    "/admin/tenants",
    "/admin/tenants/demo",
    "/admin/tenants/fuzzed",
    "/admin/tenants/demo/rotate-key",
    "/admin/tenants/fuzzed/disable",
    "/admin/tenants/fuzzed/enable",
    "/admin/tenants/demo/unknown-action",
    "/admin/pricing",
    "/admin/spend",
    "/admin/reprice",
    "/admin/events",
    "/admin/providers",
    "/admin/ledger",
    "/admin/statistics",
    "/nowhere",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
QUERY_KEYS = ["tenant", "from", "to", "group_by", "basis", "after", "limit", "request_id", "history"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["sim-1", "sim/sim-1", "1e308", "-1", "0.5", "demo", "fuzzed", "hard", "day", "user"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "model", "messages", "stream", "max_tokens", "max_completion_tokens", "n", "tools", "stream_options",
    "name", "budget_usd", "budget_period", "budget_mode", "rpm", "tpm", "max_parallel", "allowed_models",
    "default_provider", "fallback_providers", "enabled", "grace_period_s", "prices", "effective_from",
    "commit", "by", "ledger", "as_of", "tenant", "from", "to",
]  # fmt: skip
objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
chat_like = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["sim-1", "nope"]) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]), "content": json_values}),
            max_size=3,
        )
        | json_values,
    },
    optional={"stream": json_values, "max_tokens": json_values, "stream_options": json_values},
)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from([127, 128, 129, 1000, 3000, 50_000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = b"1" if opener != b"[" else b""
    return opener * depth + inner + closer * depth


bodies = st.one_of(
    st.just(b""),
    objects.map(encoded),
    chat_like.map(encoded),
    json_values.map(encoded),
    deep(),
    st.binary(max_size=64),
    st.sampled_from(
        [
            b'{"model":"sim-1","messages":[{"role":"user","content":"\\ud800"}]}',
            b'{"name":"\\udfff"}',
            b'{"model":"sim-1","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
            b'{"budget_usd": 1e999, "name": "x"}',
            b'{"rpm": ' + b"9" * 5000 + b"}",
            b'{"prices": {"sim/sim-1": []}}',
            b'{"prices": {"sim/sim-1": "free"}}',
            b'{"prices": {"sim/sim-1": {"input_per_mtok": "1e308", "output_per_mtok": "1"}}}',
            b"NaN",
            b'{"a": Infinity}',
        ]
    ),
)
auths = st.sampled_from([f"Bearer {ADMIN_KEY}", f"Bearer {DEMO_KEY}", "Bearer nope", "", "Basic x", None])
header_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40)


ADMIN = f"Bearer {ADMIN_KEY}"
TENANT = f"Bearer {DEMO_KEY}"
ROUTES = [  # every route with the key it needs; most requests go to one of these
    ("POST", "/v1/chat/completions", TENANT),
    ("GET", "/v1/models", TENANT),
    ("GET", "/v1/usage", TENANT),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/admin/tenants", ADMIN),
    ("POST", "/admin/tenants", ADMIN),
    ("GET", "/admin/tenants/fuzzed", ADMIN),
    ("PATCH", "/admin/tenants/fuzzed", ADMIN),
    ("PATCH", "/admin/tenants/demo", ADMIN),
    ("POST", "/admin/tenants/fuzzed/rotate-key", ADMIN),
    ("POST", "/admin/tenants/fuzzed/disable", ADMIN),
    ("POST", "/admin/tenants/fuzzed/enable", ADMIN),
    ("GET", "/admin/pricing", ADMIN),
    ("PUT", "/admin/pricing", ADMIN),
    ("GET", "/admin/spend", ADMIN),
    ("POST", "/admin/reprice", ADMIN),
    ("GET", "/admin/events", ADMIN),
    ("GET", "/admin/providers", ADMIN),
    ("GET", "/admin/ledger", ADMIN),
    ("GET", "/admin/statistics", ADMIN),
]


@st.composite
def requests(draw: st.DrawFn) -> httpx.Request:
    if draw(st.integers(0, 9)) < 8:
        method, path, auth = draw(st.sampled_from(ROUTES))
    else:
        method, path, auth = draw(st.sampled_from(METHODS)), draw(st.sampled_from(PATHS)), draw(auths)
    headers = {"content-type": draw(st.sampled_from(["application/json", "text/plain", "application/x-ndjson"]))}
    if auth is not None:
        headers["authorization"] = auth
    if draw(st.booleans()):
        headers["x-request-id"] = draw(header_text)
    if draw(st.booleans()):
        headers["traceparent"] = draw(header_text)
    if draw(st.booleans()):
        headers["accept"] = draw(st.sampled_from(["application/x-ndjson", "*/*", "text/event-stream"]))
    params = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), header_text | scalars.map(str), max_size=3))
    return httpx.Request(method, path, params=params, headers=headers, content=draw(bodies))


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    ready: list[str] = []
    started = threading.Event()
    stop: list[trio.Event] = []
    token: list[trio.lowlevel.TrioToken] = []

    async def main() -> None:
        config = make_config(pricing=PRICING)
        async with running_gateway(config) as gw:
            stop.append(trio.Event())
            token.append(trio.lowlevel.current_trio_token())
            ready.append(gw.url)
            started.set()
            await stop[0].wait()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(30), "the gateway did not start"
    try:
        yield ready[0]
    finally:
        trio.from_thread.run_sync(stop[0].set, trio_token=token[0])
        thread.join(30)


def check(response: httpx.Response, request: httpx.Request) -> None:
    where = f"{request.method} {request.url} {request.content[:200]!r}"
    assert response.status_code < 500, f"{where} → {response.status_code} {response.text[:500]}"
    if 400 <= response.status_code < 500 and request.method != "HEAD":
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, where
        assert isinstance(error["message"], str) and error["message"], where
        assert isinstance(error["type"], str), where


@pytest.fixture(scope="module")
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=20) as http:
        yield http


@pytest.mark.slow
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(request=requests())
def test_no_route_answers_5xx_and_every_4xx_is_openai_shaped(client: httpx.Client, request: httpx.Request) -> None:
    request = client.build_request(request.method, request.url, headers=request.headers, content=request.content)
    check(client.send(request), request)
