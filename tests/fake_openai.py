"""A fake OpenAI-compatible server, over real HTTP, speaking the real wire format: chat completions,
and the Responses API (`POST /v1/responses`, whole or as its named events ending with
`response.completed`, which carries the usage).

Tests steer it with `Behaviour` (per server, or queued per request) and read back what it received.
It counts its open streams, so tests can prove the gateway never leaves one behind.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from quart import Response, request
from quart_trio import QuartTrio


@attrs.frozen
class Behaviour:
    status: int = 200
    reply: str = "Hello from the fake upstream."
    prompt_tokens: int = 11
    completion_tokens: int = 7
    cached_tokens: int = 0
    chunks: int = 4
    chunk_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    first_content_delay_s: float = 0.0  # a stream: after the role chunk, before any content
    retry_after: str | None = None
    error_body: str = '{"error":{"message":"upstream secret internals","type":"server_error","code":null}}'
    fault: Literal[
        None,
        "malformed_json",
        "reset_mid_stream",
        "no_done",
        "usage_on_last_content",
        "empty_stream",
        "hang_after_usage",
    ] = None
    usage_extra: dict[str, Any] = attrs.field(factory=dict)  # more usage fields (details, LiteLLM's extras)
    send_usage: bool = True
    usage: Any = None  # when set, the `usage` object sent verbatim (hostile usage tests)
    echo_headers: bool = False  # an error body that quotes every header received (as careless servers do)


@attrs.define
class FakeOpenAI:
    url: str = ""
    behaviour: Behaviour = Behaviour()
    queue: deque[Behaviour] = attrs.field(factory=deque)
    bodies: list[dict[str, Any]] = attrs.field(factory=list)
    headers: list[dict[str, str]] = attrs.field(factory=list)
    paths: list[str] = attrs.field(factory=list)  # the path of each request, in order
    open_streams: int = 0
    streams_closed: trio.Event = attrs.field(factory=trio.Event)
    arrived: trio.Event = attrs.field(factory=trio.Event)
    open_requests: int = 0  # handlers running, including streams and slow first bytes
    idle: trio.Event = attrs.field(factory=trio.Event)

    def _request_ended(self) -> None:
        self.open_requests -= 1
        if self.open_requests == 0:
            self.idle.set()
            self.idle = trio.Event()

    async def wait_idle(self) -> None:
        """Wait until no request is open at the fake (every connection the gateway held is gone)."""
        while self.open_requests:
            await self.idle.wait()

    async def wait_for_requests(self, count: int) -> None:
        """Wait until `count` requests have arrived in all (an event, never a sleep)."""
        while len(self.bodies) < count:
            await self.arrived.wait()

    def next_behaviour(self) -> Behaviour:
        return self.queue.popleft() if self.queue else self.behaviour

    def completion(self, model: str, b: Behaviour) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": b.prompt_tokens,
            "completion_tokens": b.completion_tokens,
            "total_tokens": b.prompt_tokens + b.completion_tokens,
        }
        if b.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": b.cached_tokens}
        usage.update(b.usage_extra)
        if b.usage is not None:
            usage = b.usage
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": b.reply}, "finish_reason": "stop"}],
            "usage": usage,
        }

    def embeddings(self, body: dict[str, Any], b: Behaviour) -> dict[str, Any]:
        """OpenAI's embeddings answer: one vector per input (`dimensions` long, else 3), as floats or
        base64 float32; usage is `b.prompt_tokens` (or `b.usage` verbatim)."""
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else inputs
        size = body.get("dimensions") or 3
        data = []
        for index, _ in enumerate(items or ()):
            vector = [round((index + 1) * (k + 1) / 100, 2) for k in range(size)]
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        usage: Any = {"prompt_tokens": b.prompt_tokens, "total_tokens": b.prompt_tokens}
        if b.usage is not None:
            usage = b.usage
        answer: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model", "")}
        if b.send_usage:
            answer["usage"] = usage
        return answer

    def chunk(
        self, model: str, delta: dict[str, Any], finish: str | None = None, usage: Any = None, choices: bool = True
    ) -> bytes:
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
            "usage": usage,
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def stream(self, model: str, b: Behaviour, include_usage: bool) -> AsyncIterator[bytes]:
        self.open_streams += 1
        try:
            words = b.reply.split(" ")
            per = max(1, -(-len(words) // b.chunks))
            pieces = [" ".join(words[i : i + per]) for i in range(0, len(words), per)]
            usage = {
                "prompt_tokens": b.prompt_tokens,
                "completion_tokens": b.completion_tokens,
                "total_tokens": b.prompt_tokens + b.completion_tokens,
                **({"prompt_tokens_details": {"cached_tokens": b.cached_tokens}} if b.cached_tokens else {}),
                **b.usage_extra,
            }
            if b.usage is not None:
                usage = b.usage
            if b.fault == "empty_stream":
                yield b"data: [DONE]\n\n"
                return
            yield self.chunk(model, {"role": "assistant", "content": ""})
            if b.first_content_delay_s:
                await trio.sleep(b.first_content_delay_s)
            for index, piece in enumerate(pieces):
                if b.chunk_delay_s:
                    await trio.sleep(b.chunk_delay_s)
                if b.fault == "reset_mid_stream" and index == 1:
                    raise ConnectionResetError("fake upstream dies mid-stream")
                text = piece if index == 0 else " " + piece
                last = index == len(pieces) - 1
                if b.fault == "usage_on_last_content" and last:
                    yield self.chunk(model, {"content": text}, "stop", usage)
                else:
                    yield self.chunk(model, {"content": text})
            if b.fault != "usage_on_last_content":
                yield self.chunk(model, {}, "stop")
                if include_usage and b.send_usage:
                    yield self.chunk(model, {}, usage=usage, choices=False)
            if b.fault == "hang_after_usage":  # a stream the gateway will die under, its usage already sent
                await trio.sleep_forever()
            if b.fault != "no_done":
                yield b"data: [DONE]\n\n"
        finally:
            self.open_streams -= 1
            if self.open_streams == 0:
                self.streams_closed.set()
                self.streams_closed = trio.Event()
            self._request_ended()

    def response_usage(self, b: Behaviour) -> dict[str, Any]:
        if b.usage is not None:
            return dict(b.usage)
        return {
            "input_tokens": b.prompt_tokens,
            "input_tokens_details": {"cached_tokens": b.cached_tokens},
            "output_tokens": b.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": b.prompt_tokens + b.completion_tokens,
            **b.usage_extra,
        }

    def response(self, body: dict[str, Any], b: Behaviour, status: str = "completed") -> dict[str, Any]:
        """A Responses API `response` object (OpenAI's shape), its id numbered per request."""
        done = status == "completed"
        item = {
            "id": f"msg_fake{len(self.bodies)}",
            "type": "message",
            "role": "assistant",
            "status": "completed" if done else "in_progress",
            "content": [{"type": "output_text", "text": b.reply, "annotations": []}] if done else [],
        }
        return {
            "id": f"resp_fake{len(self.bodies)}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model", ""),
            "output": [item] if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True),
            "temperature": body.get("temperature"),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "top_p": None,
            "metadata": {},
            "usage": self.response_usage(b) if done else None,
        }

    async def response_stream(self, body: dict[str, Any], b: Behaviour) -> AsyncIterator[bytes]:
        """Responses' named events, each with its sequence number, ending with `response.completed`."""
        self.open_streams += 1
        sequence = 0

        def event(kind: str, **data: Any) -> bytes:
            nonlocal sequence
            out = f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': sequence, **data})}\n\n"
            sequence += 1
            return out.encode()

        try:
            opening = self.response(body, b, "in_progress")
            yield event("response.created", response=opening)
            yield event("response.in_progress", response=opening)
            final = self.response(body, b)
            item = final["output"][0]
            yield event("response.output_item.added", output_index=0, item={**item, "content": []})
            part = {"type": "output_text", "text": "", "annotations": []}
            common = {"item_id": item["id"], "output_index": 0, "content_index": 0}
            yield event("response.content_part.added", **common, part=part)
            if b.first_content_delay_s:
                await trio.sleep(b.first_content_delay_s)
            words = b.reply.split(" ")
            per = max(1, -(-len(words) // b.chunks))
            pieces = [" ".join(words[i : i + per]) for i in range(0, len(words), per)]
            for index, piece in enumerate(pieces):
                if b.chunk_delay_s:
                    await trio.sleep(b.chunk_delay_s)
                if b.fault == "reset_mid_stream" and index == 1:
                    raise ConnectionResetError("fake upstream dies mid-stream")
                text = piece if index == 0 else " " + piece
                yield event("response.output_text.delta", **common, delta=text, logprobs=[])
            yield event("response.output_text.done", **common, text=b.reply, logprobs=[])
            yield event("response.content_part.done", **common, part=item["content"][0])
            yield event("response.output_item.done", output_index=0, item=item)
            yield event("response.completed", response=final)
        finally:
            self.open_streams -= 1
            if self.open_streams == 0:
                self.streams_closed.set()
                self.streams_closed = trio.Event()
            self._request_ended()

    def app(self) -> QuartTrio:
        app = QuartTrio("fake-openai")
        app.config["RESPONSE_TIMEOUT"] = None

        @app.post("/v1/chat/completions")
        async def chat() -> Response:
            return await counted(answer)

        @app.post("/v1/responses")
        async def responses() -> Response:
            return await counted(lambda: answer(responses=True))

        async def counted(handler: Any) -> Response:
            self.open_requests += 1
            streaming = False
            try:
                response: Response = await handler()
                streaming = response.mimetype == "text/event-stream"
                return response
            finally:
                if not streaming:  # a stream ends its request when its body generator ends
                    self._request_ended()

        @app.post("/v1/embeddings")
        async def embeddings() -> Response:
            self.open_requests += 1
            try:
                return await answer(embeddings=True)
            finally:
                self._request_ended()

        async def answer(responses: bool = False, embeddings: bool = False) -> Response:
            body = await request.get_json(force=True)
            self.bodies.append(body)
            self.paths.append(request.path)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            self.arrived.set()
            self.arrived = trio.Event()
            b = self.next_behaviour()
            if b.first_byte_delay_s:
                await trio.sleep(b.first_byte_delay_s)
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            if b.status != 200:
                error_body = b.error_body
                if b.echo_headers:
                    received = "; ".join(f"{k}: {v}" for k, v in self.headers[-1].items())
                    message = f"Unrecognized request argument supplied: frobnicate (headers: {received})"
                    error_body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
                return Response(error_body, b.status, headers, content_type="application/json")
            if b.fault == "malformed_json":
                return Response("{not json", 200, content_type="application/json")
            model = body.get("model", "")
            if responses:
                if body.get("stream"):
                    return Response(self.response_stream(body, b), 200, content_type="text/event-stream")
                return Response(json.dumps(self.response(body, b)), 200, content_type="application/json")
            if embeddings:
                return Response(json.dumps(self.embeddings(body, b)), 200, content_type="application/json")
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return Response(self.stream(model, b, include_usage), 200, content_type="text/event-stream")
            return Response(json.dumps(self.completion(model, b)), 200, content_type="application/json")

        return app


@asynccontextmanager
async def serving(app: QuartTrio) -> AsyncIterator[str]:
    """Serve a fake's app on a loopback port until the block ends; yields its base URL (…/v1)."""
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn.trio.serve, app, config)
        yield binds[0] + "/v1"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def fake_openai(behaviour: Behaviour = Behaviour()) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(behaviour=behaviour)
    async with serving(fake.app()) as url:
        fake.url = url
        yield fake
