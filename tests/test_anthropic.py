"""The Anthropic adapter: the pure translation both ways, then the adapter over HTTP against the fake."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.anthropic import (
    AnthropicStreamDecoder,
    AnthropicUpstream,
    UntranslatableRequest,
    decode_response,
    encode_request,
    event_error,
)
from providers.errors import (
    ConnectFailed,
    MalformedResponse,
    ProviderError,
    StreamBroken,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)
from providers.sse import SSEDecoder, SSEEvent
from providers.upstream import Call, Chunk, Timeouts
from tests.fake_anthropic import Behaviour, FakeAnthropic, fake_anthropic
from tests.harness import in_thread, make_config, running_gateway

PROMPT = [{"role": "user", "content": "Say something about ledgers."}]


def encode(body: dict[str, Any], stream: bool = False, default_max_tokens: int = 4096) -> dict[str, Any]:
    sent: dict[str, Any] = json.loads(encode_request(Call(body, "claude-test", stream), default_max_tokens))
    return sent


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


# --- request ---------------------------------------------------------------------------------------------


def test_system_messages_are_joined_and_same_role_turns_merged() -> None:
    sent = encode(
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "one"},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in "}, text("English.")]},
                {"role": "user", "content": [text("two")]},
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "four"},
                {"role": "user", "content": "five"},
            ]
        }
    )
    assert sent["system"] == "You are terse.\n\nAnswer in English."
    assert sent["messages"] == [
        {"role": "user", "content": [text("one"), text("two")]},
        {"role": "assistant", "content": [text("three"), text("four")]},
        {"role": "user", "content": [text("five")]},
    ]
    assert sent["model"] == "claude-test"
    assert "stream" not in sent


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "I speak first."}],
        [{"role": "system", "content": "Only a system prompt."}],
    ],
)
def test_conversation_starts_with_a_user_turn(messages: list[dict[str, Any]]) -> None:
    sent = encode({"messages": messages})
    assert sent["messages"][0] == {"role": "user", "content": [text(".")]}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"max_completion_tokens": 50, "max_tokens": 70}, 50),
        ({"max_tokens": 70}, 70),
        ({}, 1234),
    ],
)
def test_max_tokens_is_always_sent(extra: dict[str, Any], expected: int) -> None:
    assert encode({"messages": PROMPT, **extra}, default_max_tokens=1234)["max_tokens"] == expected


def test_sampling_stop_user_and_stream() -> None:
    body = {"messages": PROMPT, "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u-1", "seed": 7, "n": 1}
    sent = encode(body, stream=True)
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.9
    assert sent["stop_sequences"] == ["END"]
    assert sent["metadata"] == {"user_id": "u-1"}
    assert sent["stream"] is True
    assert "seed" not in sent and "n" not in sent and "stop" not in sent
    assert encode({"messages": PROMPT, "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in encode({"messages": PROMPT, "stop": None})


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather at a place.",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "now"}},
]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "now"}}, None, {"type": "tool", "name": "now"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
def test_tools_and_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"messages": PROMPT, "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    sent = encode(body)
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather at a place.",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert sent.get("tool_choice") == expected


def test_no_tools_means_no_tool_choice() -> None:
    sent = encode({"messages": PROMPT, "tools": [], "tool_choice": "auto"})
    assert "tools" not in sent and "tool_choice" not in sent


def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]
    sent = encode(
        {
            "messages": [
                {"role": "user", "content": "Weather and time?"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": [text("noon")]},
                {"role": "user", "content": "Thanks."},
            ]
        }
    )
    assert sent["messages"] == [
        {"role": "user", "content": [text("Weather and time?")]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": [text("sunny")]},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [text("noon")]},
                text("Thanks."),
            ],
        },
    ]


def test_tool_arguments_that_are_not_a_json_object_cannot_be_translated() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]
    with pytest.raises(UntranslatableRequest, match="call_1"):
        encode({"messages": [*PROMPT, {"role": "assistant", "tool_calls": calls}]})


def test_arguments_given_as_an_object_and_lone_surrogates() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]
    sent = encode({"messages": [*PROMPT, {"role": "assistant", "tool_calls": calls}]})
    assert sent["messages"][1]["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}}]
    with pytest.raises(UntranslatableRequest, match="Unicode"):
        encode({"messages": [{"role": "user", "content": json.loads('"\\ud800"')}]})


def test_images_cache_control_and_unsupported_parts() -> None:
    cache = {"type": "ephemeral"}
    sent = encode(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Long rules.", "cache_control": cache}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?", "cache_control": cache},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                        {"type": "image_url", "image_url": {"url": "ftp://example.com/x.png"}},
                    ],
                },
            ]
        }
    )
    assert sent["system"] == [{"type": "text", "text": "Long rules.", "cache_control": cache}]
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?", "cache_control": cache},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=5)
_MESSAGE = st.tuples(st.sampled_from(["system", "developer", "user", "assistant", "tool"]), _TEXT)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MESSAGE, max_size=12))
def test_any_conversation_alternates_from_user_and_keeps_every_text_in_order(pairs: list[tuple[str, str]]) -> None:
    messages = [{"role": role, "content": content, "tool_call_id": "t"} for role, content in pairs]
    sent = encode({"messages": messages})
    roles = [turn["role"] for turn in sent["messages"]]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
    system = [content for role, content in pairs if role in ("system", "developer") and content]
    assert sent.get("system", "") == "\n\n".join(system)
    turns = [
        (role, content) for role, content in pairs if role == "tool" or (role in ("user", "assistant") and content)
    ]
    flat = []
    for turn in sent["messages"]:
        for block in turn["content"]:
            parts = block.get("content", []) if block["type"] == "tool_result" else [block]
            flat.extend(part["text"] for part in parts)
    if not turns or turns[0][0] == "assistant":
        assert flat[0] == "."
        flat = flat[1:]
    assert flat == [content for _, content in turns if content]


# --- response --------------------------------------------------------------------------------------------


def message(**fields: Any) -> bytes:
    body = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [text("Hello"), text(" there.")],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 4},
        **fields,
    }
    return json.dumps(body).encode()


def test_decode_response_is_an_openai_chat_completion() -> None:
    completion = decode_response("claude", message(), created=1700000000)
    assert completion.body == {
        "id": "msg_01",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-sonnet-4-5",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "total_tokens": 14,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_tokens": 0},
        },
    }
    assert completion.usage is not None and completion.usage.total_tokens == 14


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str | None, finish: str) -> None:
    assert decode_response("claude", message(stop_reason=stop_reason)).body["choices"][0]["finish_reason"] == finish


def test_tool_use_blocks_become_tool_calls() -> None:
    content = [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}]
    reply = decode_response("claude", message(content=content, stop_reason="tool_use")).body["choices"][0]
    assert reply["finish_reason"] == "tool_calls"
    assert reply["message"]["content"] is None
    assert reply["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}
    ]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**6))
def test_usage_is_normalised_to_openai_prompt_rule(fresh: int, read: int, written: int, output: int) -> None:
    usage = {
        "input_tokens": fresh,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
        "output_tokens": output,
    }
    completion = decode_response("claude", message(usage=usage))
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == fresh + read + written
    assert completion.usage.cached_tokens == read
    assert completion.usage.completion_tokens == output
    assert completion.body["usage"] == {
        "prompt_tokens": fresh + read + written,
        "completion_tokens": output,
        "total_tokens": fresh + read + written + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": written},
    }


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"type":"error","error":{}}', b'{"type":"message"}'])
def test_bodies_that_are_not_messages_are_malformed(content: bytes) -> None:
    with pytest.raises(MalformedResponse):
        decode_response("claude", content)


# --- stream ----------------------------------------------------------------------------------------------

# Shaped like a real Messages stream: integer `index`, a ping, cumulative usage, multi-byte UTF-8.
RECORDED = """event: message_start
data: {"type":"message_start","message":{"id":"msg_01XFD","type":"message","role":"assistant","content":[],\
"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,\
"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", naïve wörld ✓"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

""".encode()

RECORDED_TOOL_USE = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7","type":"message","role":"assistant","content":[],\
"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Need the weather."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Let me check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1","name":\
"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":" \\"Paris\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def translate(pieces: list[bytes]) -> tuple[list[Chunk], bool]:
    sse = SSEDecoder()
    decoder = AnthropicStreamDecoder("claude", "claude-test", 1700000000)
    chunks: list[Chunk] = []
    for piece in pieces:
        for event in sse.feed(piece):
            chunks.extend(decoder.feed(event))
    return chunks, decoder.finished


def assemble(chunks: list[Chunk]) -> dict[str, Any]:
    """What an OpenAI client builds from the chunks."""
    content = ""
    tool_calls: dict[int, dict[str, str]] = {}
    finishes = []
    for chunk in chunks:
        for choice in chunk.data["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                slot = tool_calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.get("id") or ""
                slot["name"] += (call.get("function") or {}).get("name") or ""
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
            if choice["finish_reason"] is not None:
                finishes.append(choice["finish_reason"])
    return {
        "role": chunks[0].data["choices"][0]["delta"].get("role"),
        "content": content,
        "tool_calls": tool_calls,
        "finishes": finishes,
        "usages": [(chunk.usage, chunk.data.get("usage"), chunk.data["choices"]) for chunk in chunks if chunk.usage],
        "content_bytes": sum(chunk.content_bytes for chunk in chunks),
    }


def test_recorded_stream_translates_to_openai_chunks() -> None:
    chunks, finished = translate([RECORDED])
    assert finished
    got = assemble(chunks)
    assert got["role"] == "assistant"
    assert got["content"] == "Hello, naïve wörld ✓"
    assert got["content_bytes"] == len("Hello, naïve wörld ✓".encode())
    assert got["finishes"] == ["stop"]
    [(usage, body, choices)] = got["usages"]
    assert choices == []
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (2125, 15, 2000)
    assert body["prompt_tokens_details"] == {"cached_tokens": 2000, "cache_creation_tokens": 100}
    assert all(chunk.data["id"] == "msg_01XFD" for chunk in chunks)
    assert all(chunk.data["model"] == "claude-sonnet-4-5-20250929" for chunk in chunks)
    assert all(chunk.data["object"] == "chat.completion.chunk" for chunk in chunks)


def test_recorded_tool_use_stream_translates_to_tool_call_deltas() -> None:
    chunks, finished = translate([RECORDED_TOOL_USE])
    assert finished
    got = assemble(chunks)
    assert got["content"] == "Let me check."
    assert got["tool_calls"] == {0: {"id": "toolu_01T1", "name": "get_weather", "arguments": '{"location": "Paris"}'}}
    assert got["finishes"] == ["tool_calls"]
    [(usage, _, _)] = got["usages"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (472, 89)
    assert any(chunk.has_content and not chunk.content_bytes for chunk in chunks), "a tool call counts as content"


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(RECORDED_TOOL_USE)), max_size=12), st.booleans())
def test_any_split_of_the_byte_stream_yields_the_same_chunks(cuts: list[int], which: bool) -> None:
    recorded = RECORDED if which else RECORDED_TOOL_USE
    bounds = [0, *sorted(min(cut, len(recorded)) for cut in cuts), len(recorded)]
    pieces = [recorded[a:b] for a, b in itertools.pairwise(bounds)]
    whole, _ = translate([recorded])
    split, finished = translate(pieces)
    assert finished
    assert [chunk.data for chunk in split] == [chunk.data for chunk in whole]


def test_later_message_delta_usage_replaces_earlier_counts() -> None:
    extra = (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"input_tokens":30,"output_tokens":40}}\n\n'
    )
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    chunks, _ = translate([RECORDED.replace(stop, extra + stop)])
    [(usage, _, _)] = assemble(chunks)["usages"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (2130, 40)


@pytest.mark.parametrize(
    ("error_type", "expected", "status", "retryable"),
    [
        ("overloaded_error", UpstreamServerError, 529, True),
        ("api_error", UpstreamServerError, 500, True),
        ("rate_limit_error", UpstreamRateLimited, 429, True),
        ("invalid_request_error", UpstreamRejected, 400, False),
        ("brand_new_error", UpstreamServerError, 500, True),
    ],
)
def test_error_events_raise_the_matching_provider_error(
    error_type: str, expected: type[ProviderError], status: int, retryable: bool
) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    cut = RECORDED.index(b"event: content_block_stop")
    with pytest.raises(expected) as caught:
        translate([RECORDED[:cut], b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"])
    assert caught.value.status == status and caught.value.retryable is retryable
    assert isinstance(event_error("claude", error), expected)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = st.sampled_from(["message", "content_block", "delta", "usage", "index", "error", "type", "text"])
_EVENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["message_start", "content_block_start", "content_block_delta", "message_delta", "x"])},
    optional={"message": _JSON, "content_block": _JSON, "delta": _JSON, "usage": _JSON, "index": _JSON},
) | st.dictionaries(_FIELDS, _JSON, max_size=4)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_EVENT, max_size=6))
def test_events_of_any_shape_never_crash_the_decoder(events: list[dict[str, Any]]) -> None:
    decoder = AnthropicStreamDecoder("claude", "claude-test", 0)
    for data in [*events, {"type": "message_stop"}]:
        try:
            decoder.feed(SSEEvent(json.dumps(data)))
        except ProviderError:
            return
    assert decoder.finished


def test_a_stream_event_that_is_not_json_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        translate([b"event: message_start\ndata: {nope\n\n"])


# --- the adapter over HTTP -------------------------------------------------------------------------------


def upstream(fake: FakeAnthropic, **options: Any) -> AnthropicUpstream:
    timeouts = options.pop("timeouts", Timeouts(connect_s=5, read_s=10))
    return AnthropicUpstream("claude", fake.url, "sk-ant-fake", timeouts, 4, **options)


async def read_all(stream: Any, chunks: list[Chunk] | None = None) -> list[Chunk]:
    """Read a stream to its end; `chunks` keeps what arrived if it fails."""
    chunks = [] if chunks is None else chunks
    while batch := await stream.next_batch():
        chunks.extend(batch)
    return chunks


def call(stream: bool = False, **extra: Any) -> Call:
    return Call({"model": "claude", "messages": PROMPT, "stream": stream, **extra}, "claude-test", stream)


async def test_complete_over_http_sends_anthropic_headers_and_body() -> None:
    behaviour = Behaviour(input_tokens=5, cache_read_input_tokens=1000, cache_creation_input_tokens=20)
    async with fake_anthropic(behaviour) as fake:
        adapter = upstream(fake, default_max_tokens=321, headers={"anthropic-beta": "x"})
        messages = [{"role": "system", "content": "Be brief."}, *PROMPT]
        completion = await adapter.complete(
            Call({"messages": messages}, "claude-test", False, {"x-request-id": "req-1"})
        )
        await adapter.aclose()
    headers = fake.headers[-1]
    assert headers["x-api-key"] == "sk-ant-fake"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "x"
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "req-1"
    assert "authorization" not in headers
    assert fake.bodies[-1] == {
        "model": "claude-test",
        "max_tokens": 321,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [text("Say something about ledgers.")]}],
    }
    assert completion.body["choices"][0]["message"]["content"] == "Hello from the fake Anthropic upstream."
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.cached_tokens) == (1025, 1000)
    assert completion.usage.completion_tokens == 6


async def test_stream_over_http_assembles_text_and_usage() -> None:
    behaviour = Behaviour(input_tokens=5, cache_read_input_tokens=1000, cache_creation_input_tokens=20)
    async with fake_anthropic(behaviour) as fake:
        adapter = upstream(fake)
        stream = await adapter.open_stream(call(stream=True))
        chunks = await read_all(stream)
        assert await stream.next_batch() == []
        await stream.aclose()
        await adapter.aclose()
        assert fake.open_streams == 0
    assert fake.bodies[-1]["stream"] is True
    got = assemble(chunks)
    assert got["role"] == "assistant"
    assert got["content"] == "Hello from the fake Anthropic upstream."
    assert got["finishes"] == ["stop"]
    [(usage, body, _)] = got["usages"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (1025, 6, 1000)
    assert body["prompt_tokens_details"]["cache_creation_tokens"] == 20


async def test_tool_use_over_http_both_ways() -> None:
    behaviour = Behaviour(reply="Checking.", tool_use=("get_weather", {"location": "Paris"}))
    async with fake_anthropic(behaviour) as fake:
        adapter = upstream(fake)
        whole = await adapter.complete(call(tools=TOOLS))
        chunks = await read_all(await adapter.open_stream(call(stream=True, tools=TOOLS)))
        await adapter.aclose()
    reply = whole.body["choices"][0]
    assert reply["finish_reason"] == "tool_calls"
    [tool_call] = reply["message"]["tool_calls"]
    got = assemble(chunks)
    assert got["finishes"] == ["tool_calls"]
    assert got["tool_calls"] == {
        0: {"id": tool_call["id"], "name": "get_weather", "arguments": json.dumps({"location": "Paris"})}
    }
    assert json.loads(tool_call["function"]["arguments"]) == {"location": "Paris"}


async def test_untranslatable_request_is_rejected_without_calling_the_provider() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]
    async with fake_anthropic() as fake:
        adapter = upstream(fake)
        for stream in (False, True):
            bad = call(stream, messages=[*PROMPT, {"role": "assistant", "tool_calls": calls}])
            with pytest.raises(UpstreamRejected) as caught:
                await (adapter.open_stream(bad) if stream else adapter.complete(bad))
            assert caught.value.status == 400 and not caught.value.retryable
        await adapter.aclose()
    assert fake.bodies == []


FAULTS = [
    (Behaviour(status=500), UpstreamServerError, 500),
    (Behaviour(status=529), UpstreamServerError, 529),
    (Behaviour(status=429, retry_after="7"), UpstreamRateLimited, 429),
    (Behaviour(status=401), UpstreamAuthFailed, 401),
    (Behaviour(status=400, error_message="messages: text content blocks must be non-empty"), UpstreamRejected, 400),
    (Behaviour(fault="malformed_json"), MalformedResponse, None),
    (Behaviour(fault="reset_mid_body"), StreamBroken, None),
]


@pytest.mark.parametrize(("behaviour", "expected", "status"), FAULTS)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_faults_raise_the_right_provider_error(
    behaviour: Behaviour, expected: type[ProviderError], status: int | None, stream: bool
) -> None:
    async with fake_anthropic(behaviour) as fake:
        adapter = upstream(fake)
        with pytest.raises(expected) as caught:
            await (read_all(await adapter.open_stream(call(stream=True))) if stream else adapter.complete(call()))
        await adapter.aclose()
        if fake.open_streams:
            with trio.fail_after(5):
                await fake.wait_streams_closed()
    error = caught.value
    assert error.status == status
    assert error.retryable is (expected is not UpstreamRejected)
    if status == 429:
        assert error.retry_after == 7.0
    if expected is UpstreamRejected:
        assert "text content blocks must be non-empty" in error.message
    else:
        assert "secret" not in error.message


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("error_event", UpstreamServerError), ("no_message_stop", StreamBroken), ("reset_mid_body", StreamBroken)],
)
async def test_stream_failing_after_content_raises(fault: str, expected: type[ProviderError]) -> None:
    async with fake_anthropic(Behaviour(fault=fault)) as fake:  # type: ignore[arg-type]
        adapter = upstream(fake)
        stream = await adapter.open_stream(call(stream=True))
        received: list[Chunk] = []
        with pytest.raises(expected) as caught:
            await read_all(stream, received)
        await stream.aclose()
        await adapter.aclose()
    assert any(chunk.content_bytes for chunk in received)
    if fault == "error_event":
        assert caught.value.status == 529


async def test_slow_first_byte_times_out() -> None:
    async with fake_anthropic(Behaviour(first_byte_delay_s=30)) as fake:
        adapter = upstream(fake, timeouts=Timeouts(connect_s=5, read_s=0.2))
        with pytest.raises(UpstreamTimeout) as caught:
            await adapter.complete(call())
        assert caught.value.retryable
        await adapter.aclose()


async def test_unreachable_provider_is_connect_failed() -> None:
    async with fake_anthropic() as fake:
        url = fake.url
    adapter = AnthropicUpstream("claude", url, None, Timeouts(connect_s=2), 1)
    with pytest.raises(ConnectFailed):
        await adapter.complete(call())
    await adapter.aclose()


# --- through the gateway -------------------------------------------------------------------------------


def anthropic_provider(fake_url: str, **extra: Any) -> dict[str, Any]:
    provider = {"name": "claude", "kind": "anthropic", "base_url": fake_url, "api_key_env": "FAKE_KEY"}
    return {**provider, "models": ["claude-test"], **extra}


async def test_gateway_serves_anthropic_non_stream_and_stream() -> None:
    behaviour = Behaviour(cache_read_input_tokens=100)
    async with fake_anthropic(behaviour) as fake:
        config = make_config(providers=[anthropic_provider(fake.url, anthropic={"default_max_tokens": 99})])
        async with running_gateway(config) as gw:
            client = gw.client()
            whole = await in_thread(client.chat.completions.create, model="claude-test", messages=PROMPT)
            assert fake.bodies[-1]["max_tokens"] == 99
            assert fake.headers[-1]["x-api-key"] == "sk-fake-upstream"
            chunks = await in_thread(
                lambda: list(
                    client.chat.completions.create(
                        model="claude-test", messages=PROMPT, stream=True, stream_options={"include_usage": True}
                    )
                )
            )
            plain = await in_thread(
                lambda: list(client.chat.completions.create(model="claude-test", messages=PROMPT, stream=True))
            )
        assert fake.open_streams == 0
    assert whole.choices[0].message.content == "Hello from the fake Anthropic upstream."
    assert whole.usage is not None and whole.usage.prompt_tokens == 111
    assert whole.model_extra["x_gateway"]["provider"] == "claude"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 111 and chunks[-1].usage.completion_tokens == 6
    assert all(c.choices for c in plain), "the usage chunk is not forwarded unless asked for"


async def test_gateway_falls_back_when_anthropic_is_overloaded() -> None:
    async with fake_anthropic(Behaviour(status=529)) as overloaded, fake_anthropic() as healthy:
        providers = [
            anthropic_provider(overloaded.url, name="busy", max_retries=0),
            anthropic_provider(healthy.url, name="spare"),
        ]
        async with running_gateway(make_config(providers=providers)) as gw:
            completion = await in_thread(gw.client().chat.completions.create, model="claude-test", messages=PROMPT)
    x = completion.model_extra["x_gateway"]
    assert x["provider"] == "spare" and x["attempts"] == 2
