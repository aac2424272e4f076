"""A fake Anthropic Messages API, over real HTTP, speaking the real wire format.

`POST /v1/messages` checks what the real API insists on (x-api-key and anthropic-version headers;
model, max_tokens and messages; roles alternating from `user`) and answers with a 400
`invalid_request_error` otherwise, so a bad translation fails loudly. Streams send the real event
sequence with `event:` lines and a ping. The reply is one token per word, and `max_tokens` is
honoured (stop_reason `max_tokens`). Tests steer it with `Behaviour` (per server, or queued per
request), read back the bodies and headers it received, and wait on `streams_closed`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio

from tests.fake_openai import serving

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
COUNTED_TOKENS = 4321
Fault = Literal[None, "malformed_json", "reset_mid_body", "no_message_stop", "error_event"]


@attrs.frozen
class Behaviour:
    status: int = 200
    reply: str = "Hello from the fake Anthropic upstream."
    input_tokens: int = 11
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int | None = None  # set: usage has `cache_creation` (5-minute and 1-hour parts)
    output_tokens: int | None = None  # None: one per word sent
    stop_reason: str = "end_turn"
    tool_use: tuple[str, dict[str, Any]] | None = None  # (name, input): a tool_use block after the text
    chunks: int = 4
    chunk_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    stall_after_first_s: float = 0.0  # a stream that sends its first piece, then waits this long
    retry_after: str | None = None
    error_type: str | None = None  # None: the type Anthropic pairs with `status`
    error_message: str = "upstream secret internals"
    fault: Fault = None
    echo_headers: bool = False  # an error message that quotes every header received (as careless servers do)


def event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def error_body(error_type: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def problem(headers: dict[str, str], body: Any) -> str | None:
    """What the real API would reject this request for, if anything."""
    if "anthropic-version" not in headers:
        return "anthropic-version: header is required"
    if not isinstance(body, dict):
        return "body: expected an object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    turns = 0
    for index, message in enumerate(messages):
        if message.get("role") == "system" and index:  # a mid-conversation system turn (Claude Code's beta)
            continue
        turns += 1
        if message.get("role") != ("user" if turns % 2 == 1 else "assistant"):
            return f"messages.{index}.role: roles must alternate between user and assistant, starting with user"
        content = message.get("content")
        if not content or (
            isinstance(content, list) and any(not isinstance(b, dict) or "type" not in b for b in content)
        ):
            return f"messages.{index}.content: expected a non-empty string or list of content blocks"
    return None


@attrs.define
class FakeAnthropic:
    url: str = ""
    behaviour: Behaviour = Behaviour()
    queue: deque[Behaviour] = attrs.field(factory=deque)
    bodies: list[dict[str, Any]] = attrs.field(factory=list)
    headers: list[dict[str, str]] = attrs.field(factory=list)
    open_streams: int = 0
    streams_closed: trio.Event = attrs.field(factory=trio.Event)

    def next_behaviour(self) -> Behaviour:
        return self.queue.popleft() if self.queue else self.behaviour

    async def wait_streams_closed(self) -> None:
        if self.open_streams:
            await self.streams_closed.wait()

    @staticmethod
    def plan(b: Behaviour, max_tokens: int) -> tuple[list[str], str, dict[str, Any]]:
        """The words to send, the stop reason and the usage."""
        words = b.reply.split(" ")
        stop_reason = b.stop_reason if b.tool_use is None else "tool_use"
        if max_tokens < len(words):
            words, stop_reason = words[:max_tokens], "max_tokens"
        usage: dict[str, Any] = {
            "input_tokens": b.input_tokens,
            "cache_creation_input_tokens": b.cache_creation_input_tokens,
            "cache_read_input_tokens": b.cache_read_input_tokens,
            "output_tokens": len(words) if b.output_tokens is None else b.output_tokens,
        }
        if b.cache_creation_1h_input_tokens is not None:
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": b.cache_creation_input_tokens - b.cache_creation_1h_input_tokens,
                "ephemeral_1h_input_tokens": b.cache_creation_1h_input_tokens,
            }
        return words, stop_reason, usage

    def message(self, model: str, b: Behaviour, max_tokens: int) -> dict[str, Any]:
        words, stop_reason, usage = self.plan(b, max_tokens)
        content: list[dict[str, Any]] = [{"type": "text", "text": " ".join(words)}]
        if b.tool_use is not None and stop_reason == "tool_use":
            content.append({"type": "tool_use", "id": "toolu_fake", "name": b.tool_use[0], "input": b.tool_use[1]})
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    async def stream(self, model: str, b: Behaviour, max_tokens: int) -> AsyncIterator[bytes]:
        self.open_streams += 1
        try:
            words, stop_reason, usage = self.plan(b, max_tokens)
            per = max(1, -(-len(words) // b.chunks))
            pieces = [" ".join(words[i : i + per]) for i in range(0, len(words), per)]
            start = {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1},
            }
            yield event("message_start", {"message": start})
            if b.fault == "malformed_json":
                yield b"event: content_block_delta\ndata: {not json\n\n"
                return
            yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield event("ping", {})
            for position, piece in enumerate(pieces):
                if b.chunk_delay_s:
                    await trio.sleep(b.chunk_delay_s)
                if position == 1 and b.stall_after_first_s:
                    await trio.sleep(b.stall_after_first_s)
                if position == 1 and b.fault == "reset_mid_body":
                    raise ConnectionResetError("fake Anthropic dies mid-stream")
                if position == 1 and b.fault == "error_event":
                    yield event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                    return
                text = piece if position == 0 else " " + piece
                yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
            yield event("content_block_stop", {"index": 0})
            if b.tool_use is not None and stop_reason == "tool_use":
                block = {"type": "tool_use", "id": "toolu_fake", "name": b.tool_use[0], "input": {}}
                yield event("content_block_start", {"index": 1, "content_block": block})
                arguments = json.dumps(b.tool_use[1])
                middle = len(arguments) // 2
                for partial in ("", arguments[:middle], arguments[middle:]):
                    delta = {"type": "input_json_delta", "partial_json": partial}
                    yield event("content_block_delta", {"index": 1, "delta": delta})
                yield event("content_block_stop", {"index": 1})
            delta = {"stop_reason": stop_reason, "stop_sequence": None}
            yield event("message_delta", {"delta": delta, "usage": {"output_tokens": usage["output_tokens"]}})
            if b.fault != "no_message_stop":
                yield event("message_stop", {})
        finally:
            self.open_streams -= 1
            if self.open_streams == 0:
                self.streams_closed.set()
                self.streams_closed = trio.Event()

    @staticmethod
    async def cut(body: str) -> AsyncIterator[bytes]:
        yield body[: len(body) // 2].encode()
        raise ConnectionResetError("fake Anthropic dies mid-body")

    def app(self) -> QuartTrio:
        app = QuartTrio("fake-anthropic")
        app.config["RESPONSE_TIMEOUT"] = None

        @app.post("/v1/messages")
        async def messages() -> Response:
            body = await request.get_json(force=True)
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.bodies.append(body)
            self.headers.append(headers)
            b = self.next_behaviour()
            if b.first_byte_delay_s:
                await trio.sleep(b.first_byte_delay_s)
            if "x-api-key" not in headers:
                return Response(error_body("authentication_error", "x-api-key header is required"), 401)
            invalid = problem(headers, body)
            if invalid:
                return Response(error_body("invalid_request_error", invalid), 400, content_type="application/json")
            if b.status != 200:
                error_type = b.error_type or ERROR_TYPES.get(b.status, "api_error")
                extra = {"retry-after": b.retry_after} if b.retry_after else {}
                message = b.error_message
                if b.echo_headers:
                    message += " (headers: " + "; ".join(f"{k}: {v}" for k, v in headers.items()) + ")"
                return Response(error_body(error_type, message), b.status, extra, content_type="application/json")
            if b.fault == "malformed_json" and not body.get("stream"):
                return Response("{not json", 200, content_type="application/json")
            if body.get("stream"):
                return Response(
                    self.stream(body["model"], b, body["max_tokens"]), 200, content_type="text/event-stream"
                )
            answer = json.dumps(self.message(body["model"], b, body["max_tokens"]))
            if b.fault == "reset_mid_body":
                return Response(self.cut(answer), 200, content_type="application/json")
            return Response(answer, 200, content_type="application/json")

        @app.post("/v1/messages/count_tokens")
        async def count_tokens() -> Response:
            """A count that no estimate would give: the test can tell it was asked."""
            body = await request.get_json(force=True)
            self.bodies.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            if "max_tokens" in body or not isinstance(body.get("messages"), list):
                return Response(error_body("invalid_request_error", "max_tokens: Extra inputs are not permitted"), 400)
            return Response(json.dumps({"input_tokens": COUNTED_TOKENS}), 200, content_type="application/json")

        return app


@asynccontextmanager
async def fake_anthropic(behaviour: Behaviour = Behaviour()) -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(behaviour=behaviour)
    async with serving(fake.app()) as url:
        fake.url = url
        yield fake
