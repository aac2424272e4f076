"""The byte scan that lets the OpenAI stream decoder pass chunks through unparsed.

Only a chunk carrying usage (or an error) is parsed; every other chunk is forwarded as the upstream
wrote it, its content size found by a scan. These properties check the scan against a real parse:
over streams of generated chunks, split at any byte, usage is found iff a chunk carries it, and the
content size, the text forwarded and the (lazily parsed) data are what parsing every chunk gives.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from events.usage import Usage
from providers.openai import decode_stream_event
from providers.sse import SSEDecoder, carries_usage, content_size

# Text a model could write, including what looks like the keys the scan looks for.
TRICKY = st.sampled_from(['"usage":null', '"usage": {"a": 1}', '"content":"x"', "\\", '"', "\\u00e9", "\n", "é€", "𝄞"])
TEXT = st.lists(st.one_of(st.text(max_size=8), TRICKY), max_size=6).map("".join)
USAGE = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10_000), "completion_tokens": st.integers(0, 10_000)}
).map(lambda u: {**u, "total_tokens": u["prompt_tokens"] + u["completion_tokens"]})


@st.composite
def chunk(draw: st.DrawFn) -> dict[str, Any]:
    choices = [
        {
            "index": index,
            "delta": draw(st.one_of(st.just({}), st.builds(lambda t: {"content": t}, TEXT))),
            "logprobs": None,
        }
        for index in range(draw(st.integers(0, 2)))
    ]
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": draw(TEXT),
        "choices": choices,
    }
    usage = draw(st.sampled_from(["absent", "null", "set"]))
    if usage == "null":
        body["usage"] = None
    elif usage == "set":
        body["usage"] = draw(USAGE)
    return body


def encode(body: dict[str, Any], style: int) -> str:
    separators = (",", ":") if style % 2 else (", ", ": ")
    return json.dumps(body, separators=separators, ensure_ascii=style >= 2)


def delivered(body: dict[str, Any]) -> int:
    return sum(len((c["delta"].get("content") or "").encode()) for c in body["choices"])


@given(st.lists(chunk(), max_size=6), st.integers(0, 3), st.data())
def test_usage_is_found_iff_a_chunk_carries_it_however_the_stream_is_split(
    bodies: list[dict[str, Any]], style: int, data: st.DataObject
) -> None:
    texts = [encode(body, style) for body in bodies]
    stream = "".join(f"data: {text}\n\n" for text in texts).encode() + b"data: [DONE]\n\n"
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    decoder = SSEDecoder()
    events = []
    for start, end in itertools.pairwise([0, *sorted(cuts), len(stream)]):
        events.extend(decoder.feed(stream[start:end]))
    assert [event.data for event in events] == [*texts, "[DONE]"]
    assert decode_stream_event("p", events[-1]) is None
    for body, text, event in zip(bodies, texts, events, strict=False):
        got = decode_stream_event("p", event)
        assert got is not None
        has_usage = body.get("usage") is not None
        assert carries_usage(text) == has_usage
        assert got.usage == (Usage.from_openai(body["usage"]) if has_usage else None)
        assert got.raw == text  # forwarded unchanged
        assert got.content_bytes == delivered(body)
        assert got.data == body  # parsed on demand, equal to what a parse gives


KEYS = st.one_of(st.sampled_from(["content", "usage"]), TEXT)
JSON = st.recursive(st.none() | st.integers() | TEXT, lambda inner: st.lists(inner) | st.dictionaries(KEYS, inner))


def reference_size(value: object) -> int:
    """What `content_size` must say: every string under a "content" key, at any depth."""
    if isinstance(value, dict):
        return sum(
            (len(v.encode()) if k == "content" and isinstance(v, str) else 0) + reference_size(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(reference_size(item) for item in value)
    return 0


def reference_usage(value: object) -> bool:
    """What `carries_usage` must say: a non-null "usage" member, at any depth."""
    if isinstance(value, dict):
        return any((k == "usage" and v is not None) or reference_usage(v) for k, v in value.items())
    if isinstance(value, list):
        return any(reference_usage(item) for item in value)
    return False


@given(JSON, st.integers(0, 3))
def test_the_scans_match_a_parse_for_any_json(value: object, style: int) -> None:
    text = encode({"v": value}, style)
    assert carries_usage(text) == reference_usage(value)
    assert content_size(text) == reference_size(value)


def test_text_that_only_mentions_the_keys_is_not_mistaken_for_them() -> None:
    text = json.dumps({"choices": [{"delta": {"content": 'say "usage": {} and "content": "x"'}}], "usage": None})
    assert not carries_usage(text)
    assert content_size(text) == len('say "usage": {} and "content": "x"')
