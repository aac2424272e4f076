"""A built-in, deterministic, offline LLM: the provider of demos, tests and the bench.

It answers in OpenAI's format without a network. The reply is a fixed vocabulary walked from an
offset derived from the prompt (same prompt, same reply), one word per token; usage follows
`providers.tokens`. Latency, pacing and faults are configurable per provider:

    latency_ms          time before the answer (or the first stream chunk)
    per_token_ms        extra time per generated token
    reply_tokens        length of the reply (capped by the request's max_tokens → finish "length")
    chunk_tokens        tokens per stream chunk
    chunk_interval_ms   pause between stream chunks
    error_rate          probability that a call fails (0..1, drawn from a generator seeded by `seed`)
    error_status        the HTTP status that failure imitates (500, 429, 503, 400, ...)
    fail_at             "start" (before anything is sent) or "mid_stream" (after the first content)
    hang                never answer (until the caller gives up)

It also embeds (`embed`): each input's vector is a unit vector drawn from the SHAKE-256 hash of the
input (the text's UTF-8 bytes, or the token ids' JSON), `DEFAULT_DIMENSIONS` long or the request's
`dimensions`, as floats or as base64 of little-endian float32 (`encoding_format`, as OpenAI's);
usage counts `providers.tokens.estimate_input_tokens` as prompt tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import secrets
import struct
import time
from typing import Any, Literal

import attrs
import trio

from events.usage import Usage
from providers.errors import StreamBroken, error_for_status
from providers.tokens import (
    embedding_inputs,
    estimate_input_tokens,
    estimate_prompt_tokens,
    message_text,
    requested_max_tokens,
)
from providers.upstream import Call, Chunk, Completion

VOCABULARY = [
    "the",
    "gateway",
    "relays",
    "every",
    "token",
    "and",
    "the",
    "ledger",
    "records",
    "what",
    "each",
    "one",
    "cost",
    "so",
    "budgets",
    "hold",
    "under",
    "load",
    "while",
    "streams",
    "end",
    "cleanly",
    "and",
    "prices",
    "can",
    "be",
    "corrected",
    "later",
    "without",
    "rewriting",
    "history",
    "because",
    "usage",
    "is",
    "a",
    "fact",
    "and",
    "cost",
    "is",
    "derived",
    "from",
    "it",
    "by",
    "a",
    "pure",
    "function",
    "of",
    "time",
]


def completion_id() -> str:
    """A fresh `chatcmpl-sim-…` id, unique across restarts (random, not a counter from 1)."""
    return f"chatcmpl-sim-{secrets.token_hex(12)}"


DEFAULT_DIMENSIONS = 1536


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """The simulator's vector for one input: deterministic, of length 1 (see the module docstring)."""
    seed = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else json.dumps(item).encode()
    words = struct.unpack(f"<{dimensions}I", hashlib.shake_256(seed).digest(4 * dimensions))
    values = [word / 2**31 - 1.0 for word in words]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


def encode_vector(vector: list[float], encoding_format: object) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or base64 of little-endian float32 when asked."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@attrs.frozen
class SimulatorSettings:
    latency_ms: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    per_token_ms: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    reply_tokens: int = attrs.field(default=16, validator=attrs.validators.ge(0))
    chunk_tokens: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    chunk_interval_ms: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    error_rate: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    error_status: int = attrs.field(default=500, validator=[attrs.validators.ge(400), attrs.validators.le(599)])
    fail_at: Literal["start", "mid_stream"] = "start"
    hang: bool = False
    seed: int = 0


def reply_words(messages: list[Any], count: int) -> list[str]:
    prompt = "\n".join(message_text(m) for m in messages if isinstance(m, dict))
    offset = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    return [VOCABULARY[(offset + i) % len(VOCABULARY)] for i in range(count)]


class Simulator:
    def __init__(self, name: str, settings: SimulatorSettings) -> None:
        self.name = name
        self.settings = settings
        self._random = random.Random(settings.seed)

    def _plan(self, call: Call) -> tuple[list[str], str, Usage]:
        messages = call.body.get("messages") or []
        limit = requested_max_tokens(call.body)
        count = self.settings.reply_tokens
        finish = "stop"
        if limit is not None and limit < count:
            count, finish = limit, "length"
        words = reply_words(messages, count)
        return words, finish, Usage(estimate_prompt_tokens(messages), len(words))

    async def _maybe_fail(self, at: str) -> None:
        settings = self.settings
        if settings.hang:
            await trio.sleep_forever()
        if settings.fail_at == at and settings.error_rate and self._random.random() < settings.error_rate:
            if at == "mid_stream":
                raise StreamBroken(self.name, f"provider {self.name!r} broke the stream (simulated)")
            raise error_for_status(self.name, settings.error_status, "simulated failure", retry_after=1.0)

    async def complete(self, call: Call) -> Completion:
        await self._maybe_fail("start")
        words, finish, usage = self._plan(call)
        delay = self.settings.latency_ms + self.settings.per_token_ms * len(words)
        if delay:
            await trio.sleep(delay / 1000)
        body = {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.upstream_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage.as_openai(),
            "system_fingerprint": "tollgate-simulator",
        }
        return Completion(body, usage)

    async def embed(self, call: Call) -> Completion:
        await self._maybe_fail("start")
        if self.settings.latency_ms:
            await trio.sleep(self.settings.latency_ms / 1000)
        body = call.body
        dimensions = body.get("dimensions")
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            dimensions = DEFAULT_DIMENSIONS
        encoding = body.get("encoding_format")
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(embedding_vector(item, dimensions), encoding),
            }
            for index, item in enumerate(embedding_inputs(body.get("input")))
        ]
        usage = Usage(estimate_input_tokens(body.get("input")), 0)
        answer = {
            "object": "list",
            "data": data,
            "model": call.upstream_model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        }
        return Completion(answer, usage)

    async def open_stream(self, call: Call) -> SimulatedStream:
        await self._maybe_fail("start")
        words, finish, usage = self._plan(call)
        return SimulatedStream(self, call.upstream_model, words, finish, usage)

    async def aclose(self) -> None:
        return None


class SimulatedStream:
    def __init__(self, simulator: Simulator, model: str, words: list[str], finish: str, usage: Usage) -> None:
        self._simulator = simulator
        self._id = completion_id()
        self._created = int(time.time())
        self._model = model
        self._finish = finish
        self._usage = usage
        size = simulator.settings.chunk_tokens
        self._pieces = [words[i : i + size] for i in range(0, len(words), size)]
        self._position = 0
        self._stage: Literal["first", "content", "finish", "done"] = "first"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, usage: Usage | None = None) -> Chunk:
        data: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": "tollgate-simulator",
            "choices": [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": usage.as_openai() if usage else None,
        }
        content = delta.get("content") or ""
        return Chunk(data, json.dumps(data, separators=(",", ":")), usage, len(content.encode()))

    def _content(self) -> Chunk:
        piece = " ".join(self._pieces[self._position])
        if self._position:
            piece = " " + piece
        self._position += 1
        return self._chunk({"content": piece})

    async def next_batch(self) -> list[Chunk]:
        settings = self._simulator.settings
        if self._stage == "first":
            if settings.latency_ms:
                await trio.sleep(settings.latency_ms / 1000)
            self._stage = "content"
            batch = [self._chunk({"role": "assistant", "content": "", "refusal": None})]
            if self._pieces:
                batch.append(self._content())
            return batch
        if self._stage == "content":
            if self._position < len(self._pieces):
                await self._simulator._maybe_fail("mid_stream")
                pace = settings.chunk_interval_ms + settings.per_token_ms * len(self._pieces[self._position])
                if pace:
                    await trio.sleep(pace / 1000)
                return [self._content()]
            self._stage = "done"
            return [self._chunk({}, self._finish), self._chunk({}, usage=self._usage)]
        return []

    async def aclose(self) -> None:
        self._stage = "done"
