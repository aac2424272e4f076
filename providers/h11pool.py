"""A keep-alive pool of HTTP/1.1 connections to one origin, on trio streams and h11.

Invariants:
- At most `max_connections` connections exist (idle or in use). A request first takes a *slot* from a
  FIFO `trio.Semaphore` (waiting for one is the pool timeout), then the most recently used idle
  connection, or a new one when none is idle. A connection is made only when the idle list is empty, so
  the number of connections never exceeds the number of slots taken.
- Idle connections are a LIFO stack: taking one is a `pop()`, and only that one is checked (one
  `poll()` of its socket). A socket readable while idle means the peer closed it (EOF, a TLS
  close_notify, a reset) or sent bytes nobody asked for: either way it is closed and the next is tried.
  Nothing scans the whole pool per request.
- A connection idle longer than `keepalive_expiry_s` (httpx's default: 5 s) is never reused, so a
  server's own idle timeout rarely races a request. The stack is ordered by idle time, so an expired
  one on top means all below it are expired too; each release also closes the oldest if it expired.
- An idle connection's h11 state is IDLE/IDLE (`start_next_cycle` was called when it was released).
- Each slot taken by `acquire` is given back exactly once, by `release`; a released connection is either
  back on the idle list or closed.
- Every open connection is either idle or in use (`_busy`), so `close()` closes them all, like httpcore's
  pool: a response body its reader never finished or closed does not outlive its transport.
"""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import Mapping

import attrs
import h11
import httpx
import trio

# Like httpcore's: the largest response head (status line + headers) h11 buffers before giving up.
MAX_HEAD_BYTES = 100 * 1024


def seconds(timeouts: Mapping[str, float | None], kind: str) -> float:
    """One of httpx's per-request timeouts (`request.extensions["timeout"]`); None means no limit."""
    value = timeouts.get(kind)
    return math.inf if value is None else value


@attrs.define(eq=False)
class Origin:
    scheme: bytes  # b"http" or b"https"
    host: str
    port: int


@attrs.define(eq=False)
class Connection:
    """One open connection: its stream (a `SocketStream`, or an `SSLStream` over one) and its h11 state.

    `reused` is True once it has served a request (only then can it be stale when taken);
    `idle_since` is the trio time it was last released.
    """

    stream: trio.abc.Stream
    socket: trio.socket.SocketType
    h11: h11.Connection
    reused: bool = False
    idle_since: float = 0.0

    def close(self) -> None:
        """Close the socket at once (no TLS close_notify: the peer is told by the TCP close)."""
        self.socket.close()

    def quiet(self) -> bool:
        """An idle connection is usable only if nothing at all is waiting to be read on it."""
        return not self.socket.is_readable()


async def connect(origin: Origin, ssl_context: ssl.SSLContext | None, limit_s: float) -> Connection:
    """Open a connection (TCP, then TLS with SNI and certificate checks for https) within `limit_s` s.

    Raises httpx.ConnectTimeout or httpx.ConnectError (refused, unreachable, a bad certificate).
    """
    stream: trio.SocketStream | None = None
    try:
        with trio.fail_after(limit_s):
            stream = await trio.open_tcp_stream(origin.host, origin.port)
            transport: trio.abc.Stream = stream
            if ssl_context is not None:
                tls = trio.SSLStream(stream, ssl_context, server_hostname=origin.host, https_compatible=True)
                await tls.do_handshake()
                transport = tls
    except trio.TooSlowError:
        if stream is not None:
            stream.socket.close()
        raise httpx.ConnectTimeout(f"connecting to {origin.host}:{origin.port} took longer than {limit_s} s") from None
    except (OSError, trio.BrokenResourceError) as error:
        if stream is not None:
            stream.socket.close()
        cause = error.__cause__ if isinstance(error, trio.BrokenResourceError) and error.__cause__ else error
        raise httpx.ConnectError(f"could not connect to {origin.host}:{origin.port}: {cause}") from error
    except BaseException:
        if stream is not None:
            stream.socket.close()
        raise
    return Connection(transport, stream.socket, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES))


class Pool:
    """The connections to one origin; see the module docstring for its invariants."""

    def __init__(
        self, origin: Origin, ssl_context: ssl.SSLContext | None, max_connections: int, keepalive_expiry_s: float
    ) -> None:
        self.origin = origin
        self._ssl_context = ssl_context
        self._slots = trio.Semaphore(max_connections)
        self._keepalive_s = keepalive_expiry_s
        self._idle: deque[Connection] = deque()  # oldest left, newest right
        self._busy: set[Connection] = set()  # taken by `acquire`/`replace`, not yet released
        self._closed = False
        self.connections_made = 0

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def idle_connections(self) -> tuple[Connection, ...]:
        """The idle connections, oldest first (a snapshot, for inspection)."""
        return tuple(self._idle)

    async def acquire(self, timeouts: Mapping[str, float | None]) -> Connection:
        """A slot and a connection to use under it: the newest quiet idle one, else a new one.

        Raises httpx.PoolTimeout when no slot frees within the pool timeout; connect errors as `connect`.
        """
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            pool_s = seconds(timeouts, "pool")
            with trio.move_on_after(pool_s) as waited:
                await self._slots.acquire()
            if waited.cancelled_caught:
                raise httpx.PoolTimeout(f"no connection to {self.origin.host} was free within {pool_s} s") from None
        try:
            now = trio.current_time()
            while self._idle:
                connection = self._idle.pop()
                if now - connection.idle_since > self._keepalive_s:
                    connection.close()
                    self.close_idle()  # all older still
                elif connection.quiet():
                    self._busy.add(connection)
                    return connection
                else:
                    connection.close()
            return await self.fresh(timeouts)
        except BaseException:
            self._slots.release()
            raise

    async def fresh(self, timeouts: Mapping[str, float | None]) -> Connection:
        """A new connection under a slot the caller already holds (its first, or a stale one's)."""
        connection = await connect(self.origin, self._ssl_context, seconds(timeouts, "connect"))
        self.connections_made += 1
        self._busy.add(connection)
        return connection

    async def replace(self, stale: Connection, timeouts: Mapping[str, float | None]) -> Connection:
        """Close `stale` (taken by `acquire`) and open a fresh connection under its slot."""
        self._busy.discard(stale)
        stale.close()
        return await self.fresh(timeouts)

    def release(self, connection: Connection, complete: bool) -> None:
        """Give the slot back. The connection goes on the idle list only when the caller read the
        response to its end (`complete`), h11 has both sides DONE (no `Connection: close`, the whole
        request sent) and no byte beyond the response arrived; otherwise it is closed.
        """
        state = connection.h11
        self._busy.discard(connection)
        try:
            if (
                complete
                and not self._closed
                and state.our_state is h11.DONE
                and state.their_state is h11.DONE
                and not state.trailing_data[0]
            ):
                state.start_next_cycle()
                connection.reused = True
                connection.idle_since = now = trio.current_time()
                if self._idle and now - self._idle[0].idle_since > self._keepalive_s:
                    self._idle.popleft().close()
                self._idle.append(connection)
            else:
                connection.close()
        finally:
            self._slots.release()

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        """Close every connection, idle or in use (a reader of one in use then gets a ReadError); their
        slots come back when they are released."""
        self._closed = True
        self.close_idle()
        while self._busy:
            self._busy.pop().close()
