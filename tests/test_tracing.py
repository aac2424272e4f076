"""X-Request-ID and W3C traceparent: continued from the client, passed upstream, returned."""

from __future__ import annotations

import re

from runtime.auth import DEMO_KEY
from runtime.http.tracing import continue_or_start
from tests.fake_openai import fake_openai
from tests.harness import make_config, openai_provider, running_gateway

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_request_id_and_traceparent_round_trip() -> None:
    async with (
        fake_openai() as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw,
        gw.http() as http,
    ):
        response = await http.post(
            "/v1/chat/completions",
            json=BODY,
            headers={**AUTH, "X-Request-ID": "my-req-123", "traceparent": TRACEPARENT},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "my-req-123"
    returned = response.headers["traceparent"]
    _, trace_id, span_id, flags = returned.split("-")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span_id != "00f067aa0ba902b7", "the gateway's span is a child of the client's"
    assert flags == "01"
    x = response.json()["x_gateway"]
    assert x["request_id"] == "my-req-123" and x["trace_id"] == trace_id
    upstream = fake.headers[-1]
    assert upstream["traceparent"] == returned
    assert upstream["x-request-id"] == "my-req-123"


async def test_ids_are_generated_when_absent_or_invalid() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        body = {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}
        response = await http.post("/v1/chat/completions", json=body, headers={**AUTH, "traceparent": "garbage"})
        error = await http.post("/v1/chat/completions", json={}, headers={**AUTH, "X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"req_[0-9a-f]{24}", response.headers["x-request-id"])
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", response.headers["traceparent"])
    assert error.status_code == 400 and error.headers["x-request-id"].startswith("req_")
    assert error.headers["traceparent"]


def test_invalid_traceparents_start_a_new_trace() -> None:
    for header in [
        None,
        "",
        "01-abc",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ]:
        trace = continue_or_start(header)
        assert trace.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736" and len(trace.trace_id) == 32
    assert continue_or_start(TRACEPARENT.upper()).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
