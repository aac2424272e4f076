"""Contract of the Responses ⇄ chat translations (`policies.responses`): round trips where invertible."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from policies.responses import (
    ResponseEvents,
    assistant_message,
    chat_request,
    items_to_messages,
    messages_to_items,
    output_items,
)

TEXT = st.text(max_size=20)
IDS = st.text(alphabet="abcdefghij0123456789_", min_size=1, max_size=8)
MESSAGE = st.builds(
    lambda role, content: {"type": "message", "role": role, "content": content},
    st.sampled_from(["user", "assistant", "system", "developer"]),
    TEXT,
)
IMAGE_MESSAGE = st.builds(
    lambda text, url: {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}, {"type": "input_image", "image_url": url}],
    },
    TEXT,
    st.sampled_from(["https://example.com/a.png", "data:image/png;base64,AAAA"]),
)
CALL = st.builds(
    lambda call_id, name, arguments: {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    },
    IDS,
    IDS,
    TEXT,
)
OUTPUT = st.builds(
    lambda call_id, output: {"type": "function_call_output", "call_id": call_id, "output": output}, IDS, TEXT
)
ITEMS = st.lists(st.one_of(MESSAGE, IMAGE_MESSAGE, CALL, OUTPUT), max_size=12)


@given(ITEMS)
def test_input_items_round_trip_through_chat_messages(items: list[dict[str, Any]]) -> None:
    assert messages_to_items(items_to_messages(items)) == items


@given(st.lists(CALL, min_size=1, max_size=4))
def test_consecutive_function_calls_share_one_assistant_turn(calls: list[dict[str, Any]]) -> None:
    messages = items_to_messages(calls)
    assert len(messages) == 1 and len(messages[0]["tool_calls"]) == len(calls)


@given(TEXT, st.lists(st.tuples(IDS, IDS, TEXT), max_size=3))
def test_output_items_and_the_assistant_message_are_inverse(text: str, calls: list[tuple[str, str, str]]) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls
        ]
    assert assistant_message(output_items(message)) == message


def test_a_request_becomes_a_chat_body_with_history_and_instructions() -> None:
    history = [{"role": "user", "content": "One."}, {"role": "assistant", "content": "Ok."}]
    body = {
        "model": "m",
        "input": "Two.",
        "instructions": "Be brief.",
        "max_output_tokens": 7,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
        "stream": True,
    }
    chat, turn = chat_request(body, history)
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, *history, *turn]
    assert turn == [{"role": "user", "content": "Two."}]
    assert chat["max_tokens"] == 7
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"]["json_schema"]["name"] == "s"
    assert chat["stream_options"] == {"include_usage": True}


def parse(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert kind == f"event: {event['type']}"
            events.append(event)
    return events


def test_streamed_tool_calls_become_function_call_items() -> None:
    events = ResponseEvents("resp_1", 0, {"model": "m"}, "m")
    out = events.start()
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}
    out += events.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    more = {"index": 0, "function": {"arguments": ": 1}"}}
    out += events.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [more]}, "finish_reason": "tool_calls"}]})
    closing, final = events.finish({"prompt_tokens": 3, "completion_tokens": 2}, {"provider": "p"})
    parsed = parse(out + closing)
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    assert [e["type"] for e in parsed][2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final["output"] == [
        {
            "id": final["output"][0]["id"],
            "type": "function_call",
            "call_id": "call_1",
            "name": "f",
            "arguments": '{"a": 1}',
            "status": "completed",
        }
    ]
    assert final["usage"]["input_tokens"] == 3 and final["usage"]["output_tokens"] == 2
    assert parsed[-1]["response"]["x_gateway"] == {"provider": "p"}
