"""The upstream's usage object reaches the client whole: details and extra fields included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.auth import DEMO_KEY
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import make_config, openai_provider, running_gateway

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]
DETAILS: dict[str, Any] = {  # what OpenAI and LiteLLM send beyond the three counts
    "completion_tokens_details": {"reasoning_tokens": 3, "accepted_prediction_tokens": 0, "audio_tokens": 0},
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "cost_breakdown": {"note": "a field the gateway has never heard of"},
}
EXPECTED = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18, **DETAILS}


def sse_data(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


async def test_non_stream_usage_keeps_every_field() -> None:
    async with (
        fake_openai(Behaviour(usage_extra=DETAILS)) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw,
        gw.http() as http,
    ):
        response = await http.post(
            "/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES}, headers=AUTH
        )
    assert response.json()["usage"] == EXPECTED


@pytest.mark.parametrize("fault", [None, "usage_on_last_content"])  # a usage chunk; usage on a content chunk
async def test_stream_usage_keeps_every_field(fault: Any) -> None:
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    async with (
        fake_openai(Behaviour(usage_extra=DETAILS, fault=fault)) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw,
        gw.http() as http,
    ):
        response = await http.post("/v1/chat/completions", json=body, headers=AUTH)
    chunks = sse_data(response.text)
    assert response.text.endswith("data: [DONE]\n\n")
    closing = chunks[-1]
    assert closing["choices"] == [] and closing["x_gateway"]["provider"] == "up"
    assert closing["usage"] == EXPECTED
    assert all(chunk.get("usage") is None for chunk in chunks[:-1]), "usage is sent once, at the end"


async def test_an_empty_upstream_stream_closes_with_the_gateways_own_id_created_and_model() -> None:
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    async with (
        fake_openai(Behaviour(fault="empty_stream")) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw,
        gw.http() as http,
    ):
        response = await http.post("/v1/chat/completions", json=body, headers=AUTH)
        again = await http.post("/v1/chat/completions", json=body, headers=AUTH)
    (closing,) = sse_data(response.text)
    (other,) = sse_data(again.text)
    assert closing["id"].startswith("chatcmpl-") and closing["id"] != other["id"]
    assert isinstance(closing["created"], int) and closing["created"] > 0
    assert closing["model"] == "gpt-test"
    assert closing["object"] == "chat.completion.chunk" and closing["choices"] == []
