"""The HTTP plumbing every HTTP adapter shares: one `Endpoint` per provider (POST a JSON body to one URL,
answered whole or as an SSE stream), straight over one long-lived transport (ours, `TrioTransport`).

Transport-level only; a wire format (`providers.openai`, `providers.anthropic`) brings its URL, headers,
encoder and decoders. Here:
- the requests: httpx's `Request`/`Response`, handed to the transport directly rather than through an
  `httpx.AsyncClient` (whose own layer — URL merging, auth and redirect flows, cookies, event hooks —
  cost as much CPU per call as the transport itself and did nothing a provider call needs); the headers
  an `AsyncClient` would add are added here (`CLIENT_HEADERS`), timeouts from `[providers.timeouts]`,
  `max_connections` = the provider's concurrency, `TrioTransport` unless a test gives another transport;
- httpx's exceptions → the provider error tree (`translate_errors`), a non-200 status → its error
  (`status_error`, upstream text redacted of the provider's `secrets`);
- `SSEChunkStream`: a streamed body → SSE events → a wire format's `StreamTranslator` → chunks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import httpx

from providers.errors import (
    ConnectFailed,
    ProviderError,
    StreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_status,
    parse_retry_after,
)
from providers.sse import SSEDecoder, SSEEvent
from providers.transport import TrioTransport
from providers.upstream import Chunk, Timeouts

MAX_ERROR_BODY = 64 * 1024


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


CLIENT_HEADERS = (
    ("accept", "*/*"),
    ("accept-encoding", "gzip, deflate"),  # what httpx's Response always decodes
    ("connection", "keep-alive"),
    ("user-agent", f"python-httpx/{httpx.__version__}"),
)
"""What `httpx.AsyncClient` sends on every request unless told otherwise; a call's headers override them."""


def timeout_extension(timeouts: Timeouts, stream: bool = False) -> dict[str, float | None]:
    """The `timeout` request extension a transport reads (what `httpx.AsyncClient` would set)."""
    read_s = timeouts.for_stream() if stream else timeouts.read_s
    return httpx.Timeout(
        connect=timeouts.connect_s, read=read_s, write=timeouts.write_s, pool=timeouts.pool_s
    ).as_dict()


def error_detail(content: bytes) -> str:
    """The `error.message` of an error body (where OpenAI and Anthropic both put it), else empty."""
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""


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


class StreamTranslator(Protocol):
    """A wire format's stream events → OpenAI chunks; `finished` once its closing event was seen."""

    finished: bool

    def feed(self, event: SSEEvent) -> list[Chunk]: ...


class Endpoint:
    """One provider's URL: a JSON body POSTed, the answer's body returned whole or as an SSE stream.

    `headers` are sent on every call (content type, credentials, configured headers); `secrets` are
    what the provider's error text is redacted of.
    """

    def __init__(
        self,
        provider: str,
        url: str,
        headers: dict[str, str],
        secrets: tuple[str, ...],
        timeouts: Timeouts,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self.secrets = secrets
        self._url = url
        self._urls: dict[str, httpx.URL] = {}  # by path, parsed once
        self._headers = httpx.Headers(CLIENT_HEADERS)
        self._headers.update(headers)
        self._transport = transport or TrioTransport(max_connections)
        self._timeout = timeout_extension(timeouts)
        self._stream_timeout = timeout_extension(timeouts, stream=True)

    def _request(
        self, content: bytes, headers: Mapping[str, str], path: str, timeout: dict[str, float | None]
    ) -> httpx.Request:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._url + path)
        merged = self._headers.copy()
        merged.update(headers)
        return httpx.Request("POST", url, headers=merged, content=content, extensions={"timeout": timeout})

    async def post(self, content: bytes, headers: Mapping[str, str], path: str = "") -> bytes:
        """The body of a 200 answer (from the URL with `path` appended); any other status or failure
        is a `ProviderError`."""
        request = self._request(content, headers, path, self._timeout)
        with translate_errors(self.provider):
            response = await self._transport.handle_async_request(request)
            response.request = request
            if response.status_code == 200:
                try:
                    return await response.aread()
                except BaseException:
                    await response.aclose()
                    raise
        raise await status_error(self.provider, response, self.secrets)

    async def open_sse(
        self, content: bytes, headers: Mapping[str, str], translator: StreamTranslator, end: str, path: str = ""
    ) -> SSEChunkStream:
        """A stream (from the URL with `path` appended), once the provider answered 200 and its
        headers (the stream timeout applies)."""
        request = self._request(content, headers, path, self._stream_timeout)
        with translate_errors(self.provider):
            response = await self._transport.handle_async_request(request)
        response.request = request
        if response.status_code != 200:
            raise await status_error(self.provider, response, self.secrets)
        return SSEChunkStream(self.provider, response, translator, end)

    async def aclose(self) -> None:
        await self._transport.aclose()


class SSEChunkStream:
    """`ChunkStream` over an SSE response body, for any wire format (`translator`).

    Everything that has arrived is returned as one batch; a body that ends before the format's
    closing event (`end`) is a `StreamBroken`; after it, the body is read to its end so the
    connection goes back to the pool. A failure closes the response at once (its connection is
    unusable mid-body), so the reader's `aclose` is then a no-op.
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
                await self.aclose()
                raise StreamBroken(
                    self._provider, f"provider {self._provider!r} ended the stream before {self._end}"
                ) from None
            except ProviderError:
                await self.aclose()  # a failed stream holds no connection, whether or not its reader closes it
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
