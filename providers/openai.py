"""Any OpenAI-compatible server: OpenAI, Azure-style base URLs, vLLM, Ollama, Groq, ...

The pure half encodes the request and decodes responses and stream events; `OpenAIUpstream` is the
thin httpx caller, one long-lived `httpx.AsyncClient` per provider.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import httpx

from events.usage import Usage
from providers.errors import (
    ConnectFailed,
    MalformedResponse,
    ProviderError,
    StreamBroken,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_status,
    parse_retry_after,
)
from providers.sse import SSEDecoder, SSEEvent
from providers.upstream import Call, Chunk, Completion, Timeouts, chunk_from_openai

MAX_ERROR_BODY = 64 * 1024


def encode_request(call: Call) -> bytes:
    """The client's JSON with only `model` replaced; streams always ask for usage."""
    body = dict(call.body)
    body["model"] = call.upstream_model
    if call.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_response(provider: str, content: bytes) -> Completion:
    try:
        body = json.loads(content)
    except ValueError:
        raise MalformedResponse(provider, f"provider {provider!r} sent a body that is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise MalformedResponse(provider, f"provider {provider!r} sent JSON that is not a chat completion")
    return Completion(body, Usage.from_openai(body.get("usage")))


def decode_stream_event(provider: str, event: SSEEvent) -> Chunk | None:
    """One SSE event as a chunk; None for the closing `[DONE]`."""
    if event.data == "[DONE]":
        return None
    try:
        data = json.loads(event.data)
    except ValueError:
        raise MalformedResponse(provider, f"provider {provider!r} sent a stream event that is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedResponse(provider, f"provider {provider!r} sent a stream event that is not an object")
    if "error" in data:
        raise UpstreamServerError(provider, f"provider {provider!r} reported an error mid-stream")
    return chunk_from_openai(data, event.data)


def error_detail(content: bytes) -> str:
    """The `error.message` of an OpenAI-shaped error body, else empty."""
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""


@contextmanager
def translate_errors(provider: str) -> Iterator[None]:
    """Map httpx's exceptions onto the provider error tree (httpcore's `map_exceptions` habit)."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise UpstreamTimeout(provider, f"provider {provider!r} timed out ({type(error).__name__})") from error
    except httpx.ConnectError as error:
        refused = _refused(error)
        what = "connection refused" if refused else "could not connect"
        raise ConnectFailed(provider, f"provider {provider!r}: {what}", refused=refused) from error
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:
        raise StreamBroken(provider, f"provider {provider!r} closed the connection mid-response") from error
    except httpx.HTTPError as error:
        raise UpstreamUnavailable(provider, f"provider {provider!r} failed ({type(error).__name__})") from error


def _refused(error: BaseException) -> bool:
    """Whether a connect error was caused by the peer refusing the connection (ECONNREFUSED),
    looking through causes and exception groups (trio's happy eyeballs gathers one per address)."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending and len(seen) < 64:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


def stream_timeout(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(
        connect=timeouts.connect_s, read=timeouts.for_stream(), write=timeouts.write_s, pool=timeouts.pool_s
    )


def build_client(
    timeouts: Timeouts,
    max_connections: int,
    headers: dict[str, str],
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """httpx's own pool unless a `transport` (e.g. `providers.transport.TrioTransport`) is given."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(
            connect=timeouts.connect_s, read=timeouts.read_s, write=timeouts.write_s, pool=timeouts.pool_s
        ),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers=headers,
        follow_redirects=False,
    )


async def status_error(provider: str, response: httpx.Response, secrets: Iterable[str] = ()) -> ProviderError:
    """Read a bounded amount of a failed response and turn it into a `ProviderError` (any upstream
    text in it redacted of `secrets`)."""
    content = b""
    if response.is_stream_consumed:
        content = response.content[:MAX_ERROR_BODY]
    else:
        try:
            async for piece in response.aiter_raw():
                content += piece
                if len(content) >= MAX_ERROR_BODY:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
    return error_for_status(
        provider,
        response.status_code,
        error_detail(content) if 400 <= response.status_code < 500 else "",
        parse_retry_after(response.headers.get("retry-after")),
        secrets,
    )


def secrets_of(api_key: str | None, headers: dict[str, str] | None) -> tuple[str, ...]:
    """What must never leave the gateway in upstream text: the key and every configured header value."""
    return tuple(value for value in (api_key, *(headers or {}).values()) if value)


class OpenAIUpstream:
    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeouts: Timeouts,
        max_connections: int,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._url = base_url.rstrip("/") + "/chat/completions"
        default_headers = {"content-type": "application/json", **(headers or {})}
        if api_key:
            default_headers["authorization"] = f"Bearer {api_key}"
        self.secrets = secrets_of(api_key, headers)
        self._client = build_client(timeouts, max_connections, default_headers, transport)
        self._stream_timeout = stream_timeout(timeouts)

    async def complete(self, call: Call) -> Completion:
        with translate_errors(self.name):
            response = await self._client.post(self._url, content=encode_request(call), headers=dict(call.headers))
        if response.status_code != 200:
            raise await status_error(self.name, response, self.secrets)
        return decode_response(self.name, response.content)

    async def open_stream(self, call: Call) -> SSEChunkStream:
        request = self._client.build_request(
            "POST", self._url, content=encode_request(call), headers=dict(call.headers), timeout=self._stream_timeout
        )
        with translate_errors(self.name):
            response = await self._client.send(request, stream=True)
        if response.status_code != 200:
            raise await status_error(self.name, response, self.secrets)
        return SSEChunkStream(self.name, response, OpenAIStreamDecoder(self.name), "[DONE]")

    async def aclose(self) -> None:
        await self._client.aclose()


class StreamTranslator(Protocol):
    """A wire format's stream events → OpenAI chunks; `finished` once its closing event was seen."""

    finished: bool

    def feed(self, event: SSEEvent) -> list[Chunk]: ...


class OpenAIStreamDecoder:
    """OpenAI's own stream: one chunk per event, closed by `[DONE]`."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.finished = False

    def feed(self, event: SSEEvent) -> list[Chunk]:
        chunk = decode_stream_event(self.provider, event)
        if chunk is None:
            self.finished = True
            return []
        return [chunk]


class SSEChunkStream:
    """`ChunkStream` over an SSE response body, for any wire format (`translator`).

    Everything that has arrived is returned as one batch; a body that ends before the format's
    closing event (`end`) is a `StreamBroken`; after it, the body is read to its end so the
    connection goes back to the pool.
    """

    def __init__(self, provider: str, response: httpx.Response, translator: StreamTranslator, end: str) -> None:
        self._provider = provider
        self._response = response
        self._raw: AsyncIterator[bytes] = response.aiter_raw()
        self._sse = SSEDecoder()
        self._translator = translator
        self._end = end
        self._done = False

    async def next_batch(self) -> list[Chunk]:
        chunks: list[Chunk] = []
        while not chunks and not self._done:
            try:
                with translate_errors(self._provider):
                    data = await self._raw.__anext__()
                for event in self._sse.feed(data):
                    chunks.extend(self._translator.feed(event))
                    if self._translator.finished:
                        self._done = True
                        await self._drain()
                        break
            except StopAsyncIteration:
                self._done = True
                raise StreamBroken(
                    self._provider, f"provider {self._provider!r} ended the stream before {self._end}"
                ) from None
            except ProviderError:
                self._done = True
                raise
        return chunks

    async def _drain(self) -> None:
        """Read to the end of the body after the closing event, so the connection goes back to the pool."""
        try:
            with translate_errors(self._provider):
                async for _ in self._raw:
                    pass
        except ProviderError:
            pass

    async def aclose(self) -> None:
        self._done = True
        aclose = getattr(self._raw, "aclose", None)
        if aclose is not None:
            await aclose()
        await self._response.aclose()
