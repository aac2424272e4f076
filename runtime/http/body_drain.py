"""Keep Hypercorn's connection bookkeeping whole around each request: `BodyDrain`, an ASGI wrapper.

Two things: answer only after the request body is in, or close the connection (below); and never
let a cancellation cut the response's last write (see `drained_send`), where Hypercorn recycles
a keep-alive connection and restarts its idle timer.

Why (Hypercorn 0.18 + Quart-Trio, read in their sources): Hypercorn hands body chunks to the app
through a memory channel of `max_app_queue_size` (10) slots, from the connection's reader task.
Quart-Trio consumes that channel in a task it cancels as soon as the response is sent. A handler
that answers before the body is read (a 401 checked before `get_data`, a 413 from the
Content-Length) leaves the rest of the body arriving with nobody reading the channel: the reader
blocks for ever on a full channel, so it never reads the next request on that keep-alive
connection (the client hangs), and the connection's tasks live until shutdown.

Which fix: `Connection: close` alone is not enough (the reader stays blocked: a leaked task per
connection, and closing a socket with unread data resets it, which can destroy the answer in
flight). Reading the body first in every handler is easy to forget. So this wrapper, around the
whole app:

- when the response starts and the body has not all arrived, it waits (at most `body_timeout_s`,
  and for at most `max_body_bytes` more bytes) while Quart keeps consuming (and, past
  `MAX_CONTENT_LENGTH`, discarding) the rest; the connection then stays reusable;
- if the body still has not ended, it adds `Connection: close`, so the client opens a new
  connection and Hypercorn closes this one after the answer;
- after the app returns, it goes on draining what is left (bounded by `LEFTOVER_S`) so Hypercorn's
  reader is never stuck on a full channel and the connection's tasks end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

LEFTOVER_S = 2.0


class BodyDrain:
    def __init__(self, app: Any, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ended = False  # the body's last chunk (or a disconnect) went by
        settled = trio.Event()  # set when ended, or when waiting for the end is given up
        answering = False
        discarded = 0

        async def tracked_receive() -> Any:
            nonlocal ended, discarded
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                ended = True
                settled.set()
            elif answering:
                discarded += len(message.get("body", b""))
                if discarded > self.max_body_bytes:
                    settled.set()
            return message

        async def drained_send(message: Any) -> None:
            nonlocal answering
            if message["type"] == "http.response.start" and not ended:
                answering = True
                with trio.move_on_after(self.body_timeout_s):
                    await settled.wait()
                if not ended:
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # The last write is where Hypercorn recycles the connection and restarts its
                # keep-alive timer; Quart-Trio cancels this task as soon as it has seen the
                # disconnect Hypercorn sends there, which cancels that restart half-way and
                # leaves the idle connection without a timer: never closed on drain (the grace
                # period is waited in full) nor after the keep-alive timeout. So it is shielded.
                # No deadline of its own: cutting it half-way is the very bug, and what it awaits
                # is bounded already (Hypercorn shields its socket writes; Quart is still
                # reading the disconnect it hands over).
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        await self.app(scope, tracked_receive, drained_send)
        if not ended:
            with trio.move_on_after(LEFTOVER_S):
                while (await tracked_receive())["type"] == "http.request" and not ended:
                    pass
