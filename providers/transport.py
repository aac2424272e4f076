"""`TrioTransport`: httpx's transport interface over our own HTTP/1.1 client (trio streams + h11).

httpx's `Request`/`Response` stay the interface (so `httpx.AsyncClient(transport=TrioTransport())`
works unchanged); what changes is the pool under it (`providers.h11pool`: a LIFO idle list per
origin, one liveness check per take instead of httpcore's scan of every pooled connection).

Behaviour kept from httpx's default transport (httpcore), so callers cannot tell them apart:
- Timeouts come from `request.extensions["timeout"]`: `pool` bounds the wait for a slot, `connect`
  the TCP + TLS setup, `write` each send, `read` each receive (httpx.PoolTimeout / ConnectTimeout /
  WriteTimeout / ReadTimeout).
- Errors are httpx's: ConnectError, ReadError, WriteError, RemoteProtocolError ("Server disconnected
  without sending a response." when the peer closes before a response), LocalProtocolError.
- A failed write is not raised at once: the response is still read (a server may answer early, e.g.
  413, and close), as httpcore does.
- https: `httpx.create_ssl_context()` (or the context given), SNI, ALPN `http/1.1`.

Retry rule (the only one): a request is re-sent, once, on a fresh connection only if it certainly did
not reach the server: its connection came from the idle list and the very first send of the request
failed with the peer gone. That first send is at most `SINGLE_SEND_BYTES`, written to an idle socket
whose send buffer is empty, so the kernel took none of it. A request that was written and then met a
closed connection before any response byte is an error, never retried (POSTs are not idempotent).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import h11
import httpx
import trio

from providers.h11pool import MAX_HEAD_BYTES, Connection, Origin, Pool, seconds

READ_BYTES = 64 * 1024
# The largest first send (head + a small whole body) that an empty kernel send buffer takes whole or not
# at all; see the retry rule.
SINGLE_SEND_BYTES = 16 * 1024


class NotSent(Exception):
    """The request's first send on a pooled connection failed: nothing of it reached the server."""


@contextmanager
def local_errors() -> Iterator[None]:
    try:
        yield
    except h11.LocalProtocolError as error:
        raise httpx.LocalProtocolError(str(error)) from error


async def send(stream: trio.abc.Stream, data: bytes, limit_s: float) -> None:
    # A bare CancelScope, not `trio.fail_after` (two generator context managers per call, on every read
    # and write of every request and stream chunk).
    try:
        if limit_s == math.inf:
            await stream.send_all(data)
            return
        with trio.CancelScope(deadline=trio.current_time() + limit_s):
            await stream.send_all(data)
            return
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise httpx.WriteError(f"the connection broke while sending the request: {error}") from error
    raise httpx.WriteTimeout(f"sending the request took longer than {limit_s} s")


async def receive_some(stream: trio.abc.Stream, limit_s: float) -> bytes | bytearray:
    try:
        if limit_s == math.inf:
            return await stream.receive_some(READ_BYTES)
        with trio.CancelScope(deadline=trio.current_time() + limit_s):
            return await stream.receive_some(READ_BYTES)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise httpx.ReadError(f"the connection broke while reading the response: {error}") from error
    raise httpx.ReadTimeout(f"no response bytes arrived within {limit_s} s")


def buffered_event(state: h11.Connection, in_head: bool = False) -> h11.Event | type[h11.NEED_DATA | h11.PAUSED]:
    """The next h11 event from what has been read already (no I/O), h11's errors as httpx's."""
    try:
        return state.next_event()
    except h11.RemoteProtocolError as error:
        if error.error_status_hint == 431:  # h11's buffer limit: MAX_HEAD_BYTES without a complete event
            part = "response head (status line and headers)" if in_head else "chunk header"
            message = f"the upstream's {part} exceeds {MAX_HEAD_BYTES} bytes"
            raise httpx.RemoteProtocolError(message) from error
        raise httpx.RemoteProtocolError(str(error)) from error


async def next_event(connection: Connection, limit_s: float, in_head: bool = False) -> h11.Event:
    """The next h11 event of the response, reading as needed (each read bounded by `limit_s`)."""
    state = connection.h11
    while True:
        event = buffered_event(state, in_head)
        if event is h11.NEED_DATA:
            data = await receive_some(connection.stream, limit_s)
            if not data and state.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            state.receive_data(data)  # type: ignore[arg-type]  # h11 takes any bytes-like (SSLStream gives bytearray)
        elif event is h11.PAUSED:  # pragma: no cover - only after EndOfMessage, which ends our reading
            raise httpx.RemoteProtocolError("h11 paused mid-response")
        else:
            assert isinstance(event, h11.Event)
            return event


async def send_request(connection: Connection, request: httpx.Request, timeouts: Mapping[str, float | None]) -> None:
    """Write the request (content-length or chunked framing, from its headers, by h11).

    Raises `NotSent` per the retry rule; any other failed send is swallowed so the caller still reads
    the response (httpcore's behaviour); a write timeout is raised.
    """
    state = connection.h11
    write_s = seconds(timeouts, "write")
    with local_errors():
        first = state.send(h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw))
        assert first is not None
        try:
            content: bytes | None = request.content
        except httpx.RequestNotRead:
            content = None
        whole = content is not None and len(first) + len(content) <= SINGLE_SEND_BYTES
        if whole:
            first += (state.send(h11.Data(data=content)) if content else b"") + (state.send(h11.EndOfMessage()) or b"")
    try:
        await send(connection.stream, first, write_s)
    except httpx.WriteError as error:
        if connection.reused:
            raise NotSent from error
        return
    if whole:
        return
    try:
        with local_errors():
            async for piece in request.stream:  # type: ignore[union-attr]
                if piece:
                    await send(connection.stream, state.send(h11.Data(data=piece)) or b"", write_s)
            await send(connection.stream, state.send(h11.EndOfMessage()) or b"", write_s)
    except httpx.WriteError:
        return


class ResponseBody(httpx.AsyncByteStream):
    """A response body as the raw bytes arrive (content-length, chunked or read-until-close framing).

    The connection goes back to the pool as soon as the body's end is read, if h11 says it can be
    reused; an error, a cancellation or an `aclose` before the end closes it. Releasing is synchronous
    and happens exactly once. Not an async generator, so an abandoned body leaves nothing to finalize.
    """

    def __init__(self, pool: Pool, connection: Connection, read_s: float) -> None:
        self._pool = pool
        self._connection = connection
        self._read_s = read_s
        self._released = False
        self._error: httpx.RemoteProtocolError | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._released:
            raise StopAsyncIteration
        if self._error is not None:
            self._release(complete=False)
            raise self._error
        try:
            while True:
                event = await next_event(self._connection, self._read_s)
                if isinstance(event, h11.Data):
                    if event.data:
                        return self._coalesced(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in a response body")
        except BaseException:
            self._release(complete=False)
            raise
        self._release(complete=True)
        raise StopAsyncIteration

    def _coalesced(self, first: bytes | bytearray | memoryview) -> bytes:
        """`first` and every further body piece already read with it (one read can hold several chunks
        of a chunked body): one piece per read, so a relay writes once per read, not once per chunk.
        The body's end, when read too, releases the connection now; an error among the buffered bytes
        is kept for the next call, after this data."""
        state = self._connection.h11
        pieces = [first]
        try:
            while True:
                event = buffered_event(state)
                if isinstance(event, h11.Data):
                    pieces.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._release(complete=True)
                    break
                elif event is h11.NEED_DATA:
                    break
                else:
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in a response body")
        except httpx.RemoteProtocolError as error:
            self._error = error
        return b"".join(pieces) if len(pieces) > 1 else bytes(first)

    def _release(self, complete: bool) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._connection, complete)

    async def aclose(self) -> None:
        self._release(complete=False)


class TrioTransport(httpx.AsyncBaseTransport):
    """One per provider: a `Pool` per origin, each with at most `max_connections` connections, idle
    ones reused for up to `keepalive_expiry_s` (httpx's defaults: 100 and 5 s).

    `ssl_context` defaults to `httpx.create_ssl_context()` (certifi roots, hostname checks), made on the
    first https request.
    """

    def __init__(
        self, max_connections: int = 100, keepalive_expiry_s: float = 5.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._ssl_context = ssl_context
        self._pools: dict[tuple[bytes, bytes, int | None], Pool] = {}

    def pool(self, url: httpx.URL) -> Pool:
        """The pool for `url`'s origin, made on first use."""
        key = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(key)
        if pool is None:
            if url.raw_scheme not in (b"http", b"https"):
                raise httpx.UnsupportedProtocol(f"{url.scheme!r} URLs are not supported (http and https only)")
            https = url.raw_scheme == b"https"
            origin = Origin(url.raw_scheme, url.raw_host.decode("ascii"), url.port or (443 if https else 80))
            pool = Pool(origin, self._tls() if https else None, self._max_connections, self._keepalive_expiry_s)
            self._pools[key] = pool
        return pool

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self.pool(request.url)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        read_s = seconds(timeouts, "read")
        connection = await pool.acquire(timeouts)
        try:
            try:
                await send_request(connection, request, timeouts)
            except NotSent:
                connection = await pool.replace(connection, timeouts)
                await send_request(connection, request, timeouts)
            while True:
                event = await next_event(connection, read_s, in_head=True)
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} before the response")
        except BaseException:
            pool.release(connection, complete=False)
            raise
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=ResponseBody(pool, connection, read_s),
            extensions={"http_version": b"HTTP/" + event.http_version, "reason_phrase": event.reason},
        )

    async def aclose(self) -> None:
        """Close every connection, idle or in use (as httpx's default transport does)."""
        for pool in self._pools.values():
            pool.close()
