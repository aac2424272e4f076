"""Relay an upstream chunk stream to the client as OpenAI SSE.

`StreamRelay` is the response body Quart iterates. Everything already waiting upstream goes out
in one write; `aclose()` (called by Quart, and again by the request's lifetime guard) closes the
upstream at once and releases the provider lease, shielded and under a deadline, exactly once.
"""

from __future__ import annotations

import json
from typing import Any

from events.usage import Usage
from policies.validation import ChatRequest
from providers.errors import ProviderError
from providers.upstream import Chunk, ChunkStream
from runtime.exchange import Exchange
from runtime.provider_actor import CANCELLED, SUCCESS, Lease, Outcome
from runtime.router import close_quietly

DONE = b"data: [DONE]\n\n"


def sse_error(message: str, type_: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"event: error\ndata: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class StreamRelay:
    def __init__(
        self, stream: ChunkStream, opening: list[Chunk], lease: Lease, chat: ChatRequest, exchange: Exchange
    ) -> None:
        self._stream = stream
        self._pending: list[Chunk] | None = opening
        self._lease = lease
        self._chat = chat
        self._exchange = exchange
        self._outcome: Outcome | None = None
        self._finished = False
        self.usage: Usage | None = None
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
                with self._exchange.waiting_upstream():
                    batch = await self._stream.next_batch()
            except ProviderError as error:
                self._outcome = Outcome.failed(error)
                await self._finish()
                return sse_error(
                    f"The upstream stream failed after it had started ({error.kind}); the answer is incomplete.",
                    "api_error",
                    "upstream_error",
                )
        if not batch:
            self._outcome = SUCCESS
            await self._finish()
            return DONE
        return self._encode(batch)

    def _encode(self, batch: list[Chunk]) -> bytes:
        out = []
        for chunk in batch:
            self.content_bytes += chunk.content_bytes
            text = chunk.raw
            if chunk.usage is not None:
                self.usage = chunk.usage
                if not self._chat.include_usage:
                    if not chunk.data.get("choices"):
                        continue
                else:
                    data: dict[str, Any] = dict(chunk.data)
                    data["x_gateway"] = self._exchange.x_gateway()
                    text = json.dumps(data, separators=(",", ":"))
            if text is None:
                text = json.dumps(chunk.data, separators=(",", ":"))
            out.append(f"data: {text}\n\n")
        return "".join(out).encode()

    async def _finish(self) -> None:
        self._finished = True
        await close_quietly(self._stream)
        await self._lease.release(self._outcome or CANCELLED)

    async def aclose(self) -> None:
        if not self._finished:
            await self._finish()
