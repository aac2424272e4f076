"""What every provider adapter offers the gateway: one call, answered whole or as a chunk stream.

The gateway speaks OpenAI's chat-completions format to clients, so adapters return OpenAI-shaped
bodies and chunks whatever their wire format is. An adapter that can also embed is an `Embedder`
(its `capabilities` include `EMBEDDINGS`): the OpenAI-kind adapter and the simulator are; the
Anthropic one is not (Anthropic has no embeddings API).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from events.usage import Usage


@attrs.frozen
class Call:
    """One attempt at one provider.

    `body` is the client's original JSON object (never mutated: adapters copy what they change),
    so fields the gateway does not read (tools, response_format, n, seed, ...) reach the provider.
    """

    body: Mapping[str, Any]
    upstream_model: str
    stream: bool
    headers: Mapping[str, str] = attrs.field(factory=dict)
    # The client's body in its own API's wire format, when it spoke another API than chat: an
    # adapter for that format sends it as is (model mapped), not `body`. `native_api` names it:
    # "messages" (Anthropic Messages) or "responses" (OpenAI Responses).
    native: Mapping[str, Any] | None = None
    native_api: str | None = None


@attrs.frozen
class Completion:
    """A whole (non-stream) answer: the OpenAI `chat.completion` object and its usage."""

    body: dict[str, Any]
    usage: Usage | None
    native: dict[str, Any] | None = None  # the provider's own answer, for a call that was `native`


@attrs.frozen
class Chunk:
    """One OpenAI `chat.completion.chunk`.

    `raw` is its JSON text when it can be forwarded unchanged; `usage` is set on the chunk that
    carries it; `content_bytes` is the UTF-8 size of the text it delivers (for estimates when a
    stream is cut before the provider reports usage). `reported` is the usage the provider has
    reported so far, on a chunk of a stream that reports it before its end (Anthropic's
    `message_start` input, a `message_delta`'s output): not final, what a stream cut before its
    final usage is settled with (`policies.usage.reported_so_far`).

    A chunk passed through unparsed (`Chunk.unparsed`) has only `raw`: `data` parses it on first use.
    """

    _data: dict[str, Any] | None = attrs.field(alias="data")
    raw: str | None = None
    usage: Usage | None = None
    content_bytes: int = 0
    native: str | None = None  # the provider's own SSE event, as it came, in a stream of a `native` call
    reported: Usage | None = None

    @classmethod
    def unparsed(cls, raw: str, content_bytes: int) -> Chunk:
        """A chunk without usage, forwarded as `raw`; its `data` is parsed only if someone reads it."""
        return cls(None, raw, None, content_bytes)

    @property
    def data(self) -> dict[str, Any]:
        data = self._data
        if data is None:
            assert self.raw is not None  # a chunk is built with its data, or unparsed from its text
            try:
                parsed = json.loads(self.raw)
            except ValueError:  # forwarded as the upstream wrote it; it has no fields the gateway can read
                parsed = None
            data = parsed if isinstance(parsed, dict) else {}
            object.__setattr__(self, "_data", data)  # a cache of what `raw` says, not a change
        return data

    @property
    def has_content(self) -> bool:
        """Whether this chunk delivers anything a client would show (text or a tool call)."""
        if self.content_bytes:
            return True
        for choice in self.data.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call") or delta.get("refusal"):
                return True
        return False


class ChunkStream(Protocol):
    async def next_batch(self) -> list[Chunk]:
        """The chunks that arrived since the last call (at least one); [] once the stream is
        complete. Raises `ProviderError` when the stream fails."""
        ...

    async def aclose(self) -> None:
        """Release the connection at once. Safe to call twice."""
        ...


class Upstream(Protocol):
    name: str

    async def complete(self, call: Call) -> Completion: ...

    async def open_stream(self, call: Call) -> ChunkStream:
        """Start a stream; returns once the provider has accepted it (status 200 and headers)."""
        ...

    async def aclose(self) -> None: ...


CHAT = "chat"
EMBEDDINGS = "embeddings"


@runtime_checkable
class Embedder(Protocol):
    """An adapter that answers OpenAI's embeddings: `call.body` is the client's embeddings body."""

    name: str

    async def embed(self, call: Call) -> Completion:
        """The OpenAI `list` of embeddings (`body`) and its usage (prompt tokens only)."""
        ...


def capabilities(upstream: object) -> frozenset[str]:
    """What an adapter can be asked for: every one does chat; an `Embedder` also embeds."""
    return frozenset({CHAT, EMBEDDINGS}) if isinstance(upstream, Embedder) else frozenset({CHAT})


def chunk_from_openai(data: dict[str, Any], raw: str | None = None) -> Chunk:
    """Build a `Chunk` from an OpenAI chunk object, reading usage and content size."""
    size = 0
    for choice in data.get("choices") or ():
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if content:
                size += len(content.encode())
    return Chunk(data, raw, Usage.from_openai(data.get("usage")), size)


@attrs.frozen
class Timeouts:
    """Upstream deadlines in seconds.

    connect_s      to open a connection
    read_s         a non-stream answer: the wait for the whole response
    first_token_s  a stream: from the call to its first content (before it, a stream can still fall back)
    idle_s         a stream: the longest pause between two pieces
    total_s        when set, the whole call, stream or not
    write_s, pool_s  sending the request; waiting for a pooled connection

    None of them is silent: each ends the attempt with an error the client sees and the ledger records.
    """

    connect_s: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    read_s: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    first_token_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    idle_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    total_s: float | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.gt(0)))
    write_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    pool_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))

    def for_stream(self) -> float:
        """httpx's own read timeout for streams: a backstop behind the gateway's stream timers."""
        return max(self.first_token_s, self.idle_s) + 5.0
