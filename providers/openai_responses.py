"""OpenAI's Responses wire format, for a pass-through: a `response` object and its stream events read
for the gateway (usage, content size), the provider's own bytes kept for the client.

`POST {base_url}/responses` is sent the client's Responses body (`Call.native`) with only `model`
mapped (what else the gateway changes — `store`, `previous_response_id`, `input` — it changed before:
`runtime.chat.responses`). The answer is the provider's own (`Completion.native`); its chat reading
(`Completion.body`: the text, the function calls, a finish reason) is what the gateway counts and
estimates from. Usage: `response.usage` — `input_tokens` (cache reads included, as chat's
`prompt_tokens`), `output_tokens`, `input_tokens_details.cached_tokens`.

Streams: every event is kept as it came (`Chunk.native`), on a chunk whose chat reading says what
it delivers (`response.output_text.delta` → content, a `function_call` item and its argument deltas
→ tool calls). `response.completed` and `response.incomplete` end the stream with the usage;
`response.failed` and `error` events are provider errors (before any content: the next provider).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from events.usage import Usage
from providers.errors import MalformedResponse, UpstreamServerError, json_answer
from providers.sse import SSEEvent
from providers.upstream import Call, Chunk, Completion

TERMINAL = ("response.completed", "response.incomplete")


def encode_request(call: Call) -> bytes:
    """The client's Responses body (as the gateway prepared it) with only `model` mapped."""
    assert call.native is not None
    body = {**call.native, "model": call.upstream_model}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def read_usage(usage: Any) -> Usage | None:
    """A Responses `usage` object under the chat rule (the prompt includes cache reads); counts that
    are not non-negative integers make it `provider_invalid`."""
    if not isinstance(usage, Mapping) or ("input_tokens" not in usage and "output_tokens" not in usage):
        return None
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, Mapping) else 0
    counts = (usage.get("input_tokens", 0), usage.get("output_tokens", 0), 0 if cached is None else cached)
    if any(type(count) is not int or count < 0 for count in counts):
        return Usage(0, 0, 0, "provider_invalid", dict(usage))
    return Usage(counts[0], counts[1], counts[2], reported=dict(usage))


def _chat_usage(usage: Usage | None) -> dict[str, object] | None:
    return None if usage is None or usage.source == "provider_invalid" else usage.as_openai()


def chat_reading(response: Mapping[str, Any]) -> dict[str, Any]:
    """A `response` object read as a `chat.completion` (what the gateway counts; not sent to anyone)."""
    text = []
    calls = []
    for item in response.get("output") or ():
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    text.append(part["text"])
        elif item.get("type") == "function_call":
            function = {"name": item.get("name"), "arguments": item.get("arguments") or ""}
            calls.append({"id": item.get("call_id"), "type": "function", "function": function})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    incomplete = response.get("status") == "incomplete"
    finish = "length" if incomplete else "tool_calls" if calls else "stop"
    body: dict[str, Any] = {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": response.get("created_at"),
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if (usage := _chat_usage(read_usage(response.get("usage")))) is not None:
        body["usage"] = usage
    return body


def decode_response(provider: str, content: bytes) -> Completion:
    response = json_answer(provider, content, lambda r: isinstance(r.get("output"), list), "a Responses response")
    if response.get("status") == "failed":
        raise UpstreamServerError(provider, f"provider {provider!r} answered with a failed response")
    return Completion(chat_reading(response), read_usage(response.get("usage")), response)


class ResponsesStreamDecoder:
    """Pure and stateful: Responses stream events in, chunks carrying them out. `finished` after
    `response.completed` (or `response.incomplete`)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.finished = False

    def _chat(self, delta: dict[str, Any], usage: Usage | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        if not delta:
            data["choices"] = []
            data["usage"] = _chat_usage(usage)
        return data

    def feed(self, event: SSEEvent) -> list[Chunk]:
        try:
            data = json.loads(event.data)
        except ValueError:
            raise MalformedResponse(
                self.provider, f"provider {self.provider!r} sent a stream event that is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise MalformedResponse(
                self.provider, f"provider {self.provider!r} sent a stream event that is not an object"
            )
        kind = data.get("type", event.event)
        name = event.event if event.event not in ("", "message") else kind  # data-only SSE: named by its type
        raw = f"event: {name}\ndata: {event.data}\n\n"
        if kind in ("error", "response.failed"):
            raise UpstreamServerError(self.provider, f"provider {self.provider!r} reported an error mid-stream")
        if kind in TERMINAL:
            self.finished = True
            response = data.get("response")
            usage = read_usage(response.get("usage") if isinstance(response, Mapping) else None)
            return [Chunk(self._chat({}, usage), None, usage, native=raw)]
        if kind == "response.output_text.delta" and isinstance(delta := data.get("delta"), str) and delta:
            return [Chunk(self._chat({"content": delta}), None, None, len(delta.encode()), native=raw)]
        item = data.get("item")
        if kind == "response.output_item.added" and isinstance(item, Mapping) and item.get("type") == "function_call":
            call = {"index": data.get("output_index", 0), "id": item.get("call_id"), "type": "function"}
            call["function"] = {"name": item.get("name"), "arguments": ""}
            return [Chunk(self._chat({"tool_calls": [call]}), native=raw)]
        if kind == "response.function_call_arguments.delta" and isinstance(delta := data.get("delta"), str):
            call = {"index": data.get("output_index", 0), "function": {"arguments": delta}}
            return [Chunk(self._chat({"tool_calls": [call]}), native=raw)]
        return [Chunk({}, native=raw)]  # created, in_progress, parts, done events, and any added later
