"""Asking an actor: a message with a one-shot reply channel, and the answer that comes back on it.

The actor answers with `send_nowait` on the reply channel and closes it; if the caller has gone
(the channel is closed), the actor undoes what it granted. The other half of that race is here: a
caller cancelled after the answer landed in the channel's buffer, but before it was received, hands
that answer back (`hand_back`: release a lease, settle a reservation) before the cancellation goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

Message = TypeVar("Message")
Answer = TypeVar("Answer")


async def ask(
    mailbox: trio.MemorySendChannel[Message],
    message: Callable[[trio.MemorySendChannel[Answer]], Message],
    hand_back: Callable[[Answer], Awaitable[None]],
) -> Answer:
    """Send `message(reply)` to `mailbox` and wait for the one answer on `reply`.

    Raises `trio.BrokenResourceError` or `trio.ClosedResourceError` when the mailbox is closed (the
    message was not delivered), and `trio.EndOfChannel` when the actor closed the reply without
    answering (it stopped or was given up)."""
    reply_send, reply_receive = trio.open_memory_channel[Answer](1)
    with reply_receive:
        await mailbox.send(message(reply_send))
        try:
            return await reply_receive.receive()
        except trio.EndOfChannel:
            raise
        except BaseException:
            try:
                early = reply_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
            else:
                await hand_back(early)
            raise
