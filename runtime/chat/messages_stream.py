"""Messages streams: OpenAI chunks (from any provider) relayed as Anthropic's event sequence.

    message_start (input tokens known then: an estimate until the provider reports them)
    content_block_start / content_block_delta (text_delta, input_json_delta) / content_block_stop
    message_delta (stop_reason, the final usage, input included, and `x_gateway`)   message_stop
    error (a stream failing after it started; no message_stop follows)

`MessagesStreamRelay` is the chat `StreamRelay` with this encoding: the same settlement on every
path (end, failure, disconnect), the closing events sent once the settlement is durable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from events.usage import Usage
from providers.errors import ProviderError, UpstreamTimeout
from providers.upstream import Chunk
from runtime.chat.messages import anthropic_usage, message_id, stop_reason
from runtime.chat.record import estimate_usage
from runtime.chat.relay import StreamRelay


def sse(event: str, data: Mapping[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, separators=(',', ':'), ensure_ascii=False)}\n\n"


def error_event(type_: str, message: str) -> bytes:
    return sse("error", {"error": {"type": type_, "message": message}}).encode()


class MessagesStreamEncoder:
    """Pure and stateful: OpenAI chunks in, Anthropic stream events out (text and tool_use blocks).

    `message_start` carries the input tokens known then (an estimate until the provider reports);
    `finish(usage)` writes the last block's stop, `message_delta` with the stop reason and the
    final usage (input included, as Anthropic's recent API does), and `message_stop`."""

    def __init__(self, model: str, estimated_input_tokens: int) -> None:
        self._model = model
        self._input = estimated_input_tokens
        self._started = False
        self._block: int | None = None  # the open content block's index
        self._block_kind: str | None = None
        self._tools: dict[int, int] = {}  # OpenAI tool call index → block index
        self._next = 0
        self._finish: Any = None

    def _start(self, chunk_id: Any) -> list[str]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(chunk_id),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input, "output_tokens": 0},
        }
        return [sse("message_start", {"message": message})]

    def _close_block(self) -> list[str]:
        if self._block is None:
            return []
        index, self._block, self._block_kind = self._block, None, None
        return [sse("content_block_stop", {"index": index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[str]:
        out = self._close_block()
        self._block, self._block_kind = self._next, kind
        self._next += 1
        out.append(sse("content_block_start", {"index": self._block, "content_block": block}))
        return out

    def feed(self, data: Mapping[str, Any]) -> str:
        out = self._start(data.get("id"))
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._block_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out.append(
                    sse("content_block_delta", {"index": self._block, "delta": {"type": "text_delta", "text": text}})
                )
            for call in delta.get("tool_calls") or ():
                position = call.get("index", 0)
                function = call.get("function") or {}
                if position not in self._tools:
                    out += self._open(
                        "tool", {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
                    )
                    self._tools[position] = self._next - 1
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    delta_event = {"type": "input_json_delta", "partial_json": arguments}
                    out.append(sse("content_block_delta", {"index": self._tools[position], "delta": delta_event}))
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return "".join(out)

    def finish(self, usage: Mapping[str, Any] | None, x_gateway: Mapping[str, Any]) -> str:
        out = self._start(None) + self._close_block()
        delta = {"stop_reason": stop_reason(self._finish), "stop_sequence": None}
        closing = {"delta": delta, "usage": anthropic_usage(usage), "x_gateway": x_gateway}
        out.append(sse("message_delta", closing))
        out.append(sse("message_stop", {}))
        return "".join(out)


HELD = ("event: message_delta\n", "event: message_stop\n")


def _billed(event: str, corrected: Usage | None) -> str:
    """A held `message_delta` with the usage billed when it is not what the provider reported."""
    if corrected is None or not event.startswith(HELD[0]):
        return event
    data = json.loads(event.split("data: ", 1)[1])
    return sse("message_delta", {**data, "usage": anthropic_usage(corrected.as_openai())})


class MessagesStreamRelay(StreamRelay):
    """An Anthropic provider's own events are relayed as they came (`Chunk.native`), its closing
    `message_delta` and `message_stop` held back until the settlement is durable; any other
    provider's chunks are encoded by `MessagesStreamEncoder`."""

    _encoder: MessagesStreamEncoder | None = None
    _native = False  # the provider's own events are relayed
    _held: list[str] | None = None  # a native stream's closing events

    def _messages(self) -> MessagesStreamEncoder:
        if self._encoder is None:
            estimate = estimate_usage(self._record.chat, 0).prompt_tokens
            self._encoder = MessagesStreamEncoder(self._record.chat.model, estimate)
        return self._encoder

    def _encode(self, batch: list[Chunk]) -> bytes:
        out = []
        for chunk in batch:
            self._read(chunk)
            if chunk.usage is not None:
                self._usage_object = chunk.data.get("usage")
            if chunk.native is not None:
                self._native = True
                if chunk.native.startswith(HELD):
                    self._held = [*(self._held or []), chunk.native]
                else:
                    out.append(chunk.native)
            elif not self._native:  # a native stream's chunks without an event are its OpenAI reading
                out.append(self._messages().feed(chunk.data))
        return "".join(out).encode()

    def _closing(self) -> bytes:
        corrected = self._record.corrected_usage
        if self._native:  # the provider's own closing events (usage as billed if not as reported)
            return "".join(_billed(event, corrected) for event in self._held or ()).encode()
        usage = self._usage_object if self._usage_object is not None else self._usage_so_far().as_openai()
        x_gateway = self._exchange.x_gateway(self._attempt.deployment, self._attempt.number, self._record.cost_str())
        return self._messages().finish(corrected.as_openai() if corrected else usage, x_gateway).encode()

    def _failure(self, error: ProviderError) -> bytes:
        kind = "overloaded_error" if isinstance(error, UpstreamTimeout) else "api_error"
        message = f"The upstream stream failed after it had started ({error.message}); the answer is incomplete."
        return error_event(kind, message)
