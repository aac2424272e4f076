"""End to end through the real gateway with the official openai SDK as the client."""

from __future__ import annotations

import pytest

from tests.fake_openai import Behaviour, fake_openai
from tests.harness import in_thread, make_config, openai_provider, running_gateway

PROMPT = [{"role": "user", "content": "Say something about ledgers."}]


async def test_simulator_non_stream_has_usage_and_x_gateway() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        raw = await in_thread(client.chat.completions.with_raw_response.create, model="sim-1", messages=PROMPT)
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 16
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + 16
        x = completion.model_extra["x_gateway"]
        assert x["provider"] == "sim"
        assert x["served_model"] == "sim-1"
        assert x["attempts"] == 1
        assert x["cache_hit"] is False
        assert x["request_id"] == raw.headers["x-request-id"]
        assert x["overhead_ms"] >= 0
        assert x["latency_ms"] >= x["overhead_ms"]
        assert float(raw.headers["x-tollgate-overhead-ms"]) == x["overhead_ms"]


async def test_simulator_is_deterministic_and_honours_max_tokens() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        first = await in_thread(client.chat.completions.create, model="sim-1", messages=PROMPT)
        second = await in_thread(client.chat.completions.create, model="sim-1", messages=PROMPT, max_tokens=3)
        assert second.choices[0].finish_reason == "length"
        assert second.usage is not None and second.usage.completion_tokens == 3
        assert first.choices[0].message.content.startswith(second.choices[0].message.content)


async def test_simulator_stream_with_usage() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()

        def consume() -> list:
            return list(
                client.chat.completions.create(
                    model="sim-1", messages=PROMPT, stream=True, stream_options={"include_usage": True}
                )
            )

        chunks = await in_thread(consume)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        whole = await in_thread(client.chat.completions.create, model="sim-1", messages=PROMPT)
        assert text == whole.choices[0].message.content
        last = chunks[-1]
        assert last.choices == []
        assert last.usage is not None and last.usage.completion_tokens == 16
        assert last.model_extra["x_gateway"]["provider"] == "sim"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        chunks = await in_thread(
            lambda: list(client.chat.completions.create(model="sim-1", messages=PROMPT, stream=True))
        )
        assert all(c.choices for c in chunks)
        assert all(c.usage is None for c in chunks)


async def test_openai_adapter_non_stream_forwards_unknown_fields() -> None:
    async with fake_openai() as fake, running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw:
        client = gw.client()
        tools = [
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
        ]
        completion = await in_thread(
            client.chat.completions.create,
            model="gpt-test",
            messages=PROMPT,
            tools=tools,
            response_format={"type": "json_object"},
            n=1,
            seed=42,
            extra_body={"vendor_specific": {"a": 1}},
        )
        assert completion.choices[0].message.content == "Hello from the fake upstream."
        assert completion.usage is not None and completion.usage.prompt_tokens == 11
        assert completion.model_extra["x_gateway"]["provider"] == "up"
        sent = fake.bodies[-1]
        assert sent["tools"] == tools
        assert sent["response_format"] == {"type": "json_object"}
        assert sent["seed"] == 42 and sent["n"] == 1
        assert sent["vendor_specific"] == {"a": 1}
        assert fake.headers[-1]["authorization"] == "Bearer sk-fake-upstream"


async def test_openai_adapter_maps_alias_to_upstream_model() -> None:
    providers = [openai_provider("http://127.0.0.1:1/v1", name="dead", models=()), {}]
    async with fake_openai() as fake:
        providers[1] = openai_provider(fake.url, models=())
        config = make_config(
            providers=providers,
            models={
                "fast": {
                    "deployments": [{"provider": "dead", "model": "x"}, {"provider": "up", "model": "llama-3.1-8b"}]
                }
            },
        )
        async with running_gateway(config) as gw:
            completion = await in_thread(gw.client().chat.completions.create, model="fast", messages=PROMPT)
            assert fake.bodies[-1]["model"] == "llama-3.1-8b"
            x = completion.model_extra["x_gateway"]
            assert x["provider"] == "up" and x["served_model"] == "llama-3.1-8b" and x["attempts"] == 2


async def test_openai_adapter_stream_injects_include_usage_and_relays() -> None:
    async with fake_openai() as fake, running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw:
        client = gw.client()
        chunks = await in_thread(
            lambda: list(client.chat.completions.create(model="gpt-test", messages=PROMPT, stream=True))
        )
        assert fake.bodies[-1]["stream_options"] == {"include_usage": True}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream."
        assert all(c.choices for c in chunks), "the usage chunk is not forwarded unless asked for"
        chunks = await in_thread(
            lambda: list(
                client.chat.completions.create(
                    model="gpt-test", messages=PROMPT, stream=True, stream_options={"include_usage": True}
                )
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18
        assert chunks[-1].model_extra["x_gateway"]["provider"] == "up"
        assert fake.open_streams == 0


@pytest.mark.parametrize("fault", ["reset_mid_stream", "no_done"])
async def test_stream_cut_mid_answer_ends_with_error_event_not_done(fault: str) -> None:
    import openai

    behaviour = Behaviour(fault=fault, reply="one two three four five six seven eight", chunks=4)  # type: ignore[arg-type]
    async with (
        fake_openai(behaviour) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)])) as gw,
    ):
        client = gw.client()
        received: list[str] = []

        def consume() -> None:
            for chunk in client.chat.completions.create(model="gpt-test", messages=PROMPT, stream=True):
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIError, match="upstream stream failed"):
            await in_thread(consume)
        assert "".join(received).startswith("one two")
        async with gw.http() as http:
            raw = await http.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {client.api_key}"},
                json={"model": "gpt-test", "messages": PROMPT, "stream": True},
            )
        assert raw.status_code == 200
        assert "event: error" in raw.text and "data: [DONE]" not in raw.text
