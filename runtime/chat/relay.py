"""Relay an upstream chunk stream to the client as OpenAI SSE, and settle it exactly once.

`StreamRelay` is the response body Quart iterates. Everything already waiting upstream goes out in
one write. The usage chunk is held back until the stream ends and its `Completed` event is durable,
then sent (with `x_gateway` and the cost) together with `[DONE]`. A stream that fails mid-answer
ends with an SSE `error` event and no `[DONE]`, recorded as `truncated`. `aclose()` — called by
Quart, and again by the request's lifetime guard — closes the upstream at once, releases the lease
and records `Cancelled` with the usage delivered so far, shielded and under a deadline.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from events.request import Request
from events.usage import Usage
from policies.routing import Deployment
from policies.usage import reported_so_far
from providers.errors import ProviderError, UpstreamTimeout
from providers.upstream import Chunk, ChunkStream
from runtime.actors.provider import CANCELLED, SUCCESS, Outcome
from runtime.chat.cached import assemble
from runtime.chat.exchange import Exchange
from runtime.chat.record import RequestRecord, estimate_usage
from runtime.chat.router import Attempt, attempt_failed, close_quietly

DONE = b"data: [DONE]\n\n"


def sse_error(message: str, type_: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"event: error\ndata: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class StreamRelay:
    def __init__(
        self,
        attempt: Attempt,
        stream: ChunkStream,
        opening: list[Chunk],
        record: RequestRecord,
        exchange: Exchange,
        fill: Callable[[dict[str, Any], Deployment], Awaitable[None]] | None = None,
    ) -> None:
        """`fill`, when given, stores the answer a complete, successful stream amounts to (the cache)."""
        self._attempt = attempt
        self._fill = fill
        self._chunks: list[dict[str, Any]] | None = [] if fill is not None else None
        self._timeouts = timeouts = attempt.timeouts
        self._deadline = attempt.started + timeouts.total_s if timeouts.total_s else math.inf
        self._stream = stream
        self._pending: list[Chunk] | None = opening
        self._record = record
        self._exchange = exchange
        self._finished = False
        self._first_sent = False
        self._usage_chunk: Chunk | None = None
        self._usage_object: dict[str, Any] | None = None  # the upstream's own usage, when on a content chunk
        self._last: Chunk | None = opening[-1] if opening else None  # its ids, read only if needed
        self.usage: Usage | None = None
        self.reported: Usage | None = None  # what the provider reported before its final usage
        self.content_bytes = 0

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        batch = self._pending
        self._pending = None
        if batch is None:
            try:
                batch = await self._next_batch()
            except ProviderError as error:
                attempt = self._attempt
                attempt_failed(self._record, self._exchange, attempt.deployment, attempt.number, error)
                await self._finish(Outcome.failed(error), Request.Failed, "truncated")
                return self._failure(error)
        if not batch:
            await self._finish(SUCCESS, Request.Completed, "ok")
            if self._fill is not None and self._chunks is not None:
                completion = assemble(self._chunks)
                if completion is not None:
                    await self._fill(completion, self._attempt.deployment)
            return self._closing()
        if not self._first_sent:  # time to first token, as the client gets it
            self._first_sent = True
            deployment = self._attempt.deployment
            self._record.metrics.first_token(
                deployment.provider, self._record.chat.model, self._exchange.latency_ms() / 1000
            )
        return self._encode(batch)

    async def _next_batch(self) -> list[Chunk]:
        """The next batch, within the idle limit and the call's total deadline."""
        idle = trio.current_time() + self._timeouts.idle_s
        provider = self._attempt.deployment.provider
        with self._exchange.waiting_upstream(), trio.move_on_at(min(idle, self._deadline)):
            return await self._stream.next_batch()
        if idle <= self._deadline:
            raise UpstreamTimeout(provider, f"provider {provider!r} sent nothing for {self._timeouts.idle_s:g}s")
        raise UpstreamTimeout(provider, f"provider {provider!r} did not finish within {self._timeouts.total_s:g}s")

    def _failure(self, error: ProviderError) -> bytes:
        """The event that ends a stream failing mid-answer."""
        return sse_error(
            f"The upstream stream failed after it had started ({error.message}); the answer is incomplete.",
            "api_error",
            "upstream_timeout" if isinstance(error, UpstreamTimeout) else "upstream_error",
        )

    def _usage_so_far(self) -> Usage:
        """The final usage when the provider reported it, else what it reported so far (and the estimate)."""
        return self.usage or reported_so_far(self.reported, estimate_usage(self._record.chat, self.content_bytes))

    def _read(self, chunk: Chunk) -> None:
        """What every relay keeps of a chunk: its size, the usage reported so far and the final usage
        (in the log before the stream ends, once: a crash after it keeps it)."""
        self.content_bytes += chunk.content_bytes
        if chunk.reported is not None:
            self.reported = chunk.reported
        if chunk.usage is not None:
            if self.usage is None:
                self._record.usage_reported(chunk.usage, self.content_bytes, self._attempt.deployment)
            self.usage = chunk.usage

    def _encode(self, batch: list[Chunk]) -> bytes:
        out = []
        self._last = batch[-1]
        if self._chunks is not None:
            self._chunks.extend(chunk.data for chunk in batch)
        for chunk in batch:
            self._read(chunk)
            text = chunk.raw
            if chunk.usage is not None:
                if not chunk.data.get("choices"):
                    self._usage_chunk = chunk  # sent with [DONE], once settled
                    continue
                # Usage rides on a content chunk here: strip it; the closing usage chunk carries it,
                # as the upstream wrote it (details and fields the gateway does not know included).
                self._usage_object = chunk.data["usage"]
                text = json.dumps({**chunk.data, "usage": None}, separators=(",", ":"))
            if text is None:
                text = json.dumps(chunk.data, separators=(",", ":"))
            out.append(f"data: {text}\n\n")
        return "".join(out).encode()

    def _closing(self) -> bytes:
        if not self._record.chat.include_usage:
            return DONE
        if self._usage_chunk is not None:
            data: dict[str, Any] = dict(self._usage_chunk.data)
        else:
            last = self._last.data if self._last is not None else {}
            usage = self._usage_object
            data = {
                "id": last.get("id"),
                "object": "chat.completion.chunk",
                "created": last.get("created"),
                "model": last.get("model"),
                "choices": [],
                "usage": dict(usage) if usage is not None else self._usage_so_far().as_openai(),
            }
        for key, value in self._own_identity().items():  # an upstream that sent none (an empty stream)
            if data.get(key) is None:
                data[key] = value
        if (corrected := self._record.corrected_usage) is not None:
            data["usage"] = corrected.as_openai()
        data["x_gateway"] = self._exchange.x_gateway(
            self._attempt.deployment, self._attempt.number, self._record.cost_str()
        )
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n" + DONE

    def _own_identity(self) -> dict[str, Any]:
        """The gateway's own `id`, `created` and `model` for a closing chunk the upstream gave none of."""
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "created": int(self._record.received_at.timestamp()),
            "model": self._attempt.deployment.model,
        }

    async def _finish(self, outcome: Outcome, kind: type[Request.Settled], result: str) -> None:
        self._finished = True
        await close_quietly(self._stream)
        await self._attempt.lease.release(outcome)
        await self._record.settle(
            kind, result, self._usage_so_far(), self.content_bytes, served=self._attempt.deployment
        )

    async def aclose(self, reason: str | None = None) -> None:
        """Close now (called by Quart, then by the request's lifetime guard with the reason)."""
        if not self._finished:
            await self._finish(CANCELLED, Request.Cancelled, reason or self._record.interruption())
