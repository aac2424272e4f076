"""A loopback HTTP/1.1 server on trio + h11 whose every answer is a test's function.

The transport's contract tests steer the wire precisely with it (close an idle connection, cut a body,
send an oversized head, drip a body piece by piece) and read back what arrived: connections accepted,
requests with their bodies, connections ended. State changes wake `changed`, so tests wait on a
condition (`wait_until`) instead of sleeping.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import h11
import trio


@attrs.define(eq=False)
class Exchange:
    """One request as the server read it, and ways to answer it."""

    stream: trio.abc.Stream
    socket: trio.socket.SocketType
    h11: h11.Connection
    request: h11.Request
    body: bytes
    hung_up: bool = False

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.request.headers if key == name), None)

    async def respond(
        self, body: bytes = b"ok", status: int = 200, headers: Sequence[tuple[str, str]] = (), chunked: bool = False
    ) -> None:
        framing = ("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))
        data = self.h11.send(h11.Response(status_code=status, headers=[*headers, framing])) or b""
        if body:
            data += self.h11.send(h11.Data(data=body)) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def send(self, event: h11.Event) -> None:
        await self.stream.send_all(self.h11.send(event) or b"")

    def hang_up(self, reset: bool = False) -> None:
        """Close the connection now; `reset` sends a TCP RST instead of a FIN."""
        if reset:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.socket.close()
        self.hung_up = True


Handler = Callable[[Exchange], Awaitable[None]]


async def answer_ok(exchange: Exchange) -> None:
    await exchange.respond(b"ok:" + exchange.body)


@attrs.define(eq=False)
class Server:
    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    ended: int = 0
    open_now: int = 0
    most_open: int = 0
    exchanges: list[Exchange] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (bounded by the caller's deadline) until `condition()` holds."""
        while not condition():
            await self.changed.wait()

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self._notify()
        transport: trio.abc.Stream = stream
        try:
            if self.ssl_context is not None:
                transport = trio.SSLStream(stream, self.ssl_context, server_side=True)
                await transport.do_handshake()
            state = h11.Connection(h11.SERVER)
            while True:
                exchange = await self._read_request(transport, stream.socket, state)
                if exchange is None:
                    return
                self.exchanges.append(exchange)
                self._notify()
                await self.handler(exchange)
                if exchange.hung_up or state.our_state is not h11.DONE or state.their_state is not h11.DONE:
                    return
                state.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            stream.socket.close()
            self.open_now -= 1
            self.ended += 1
            self._notify()

    async def _read_request(
        self, stream: trio.abc.Stream, sock: trio.socket.SocketType, state: h11.Connection
    ) -> Exchange | None:
        request: h11.Request | None = None
        body = b""
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                state.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return Exchange(stream, sock, state, request, body)
            elif isinstance(event, h11.ConnectionClosed):
                return None


@asynccontextmanager
async def serving(handler: Handler = answer_ok, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(handler, ssl_context)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), server.serve_connection, 0)
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()
