"""One actor per provider: it owns the provider's concurrency slots (and, later, its breaker).

Callers talk to it through `ProviderHandle.lease()` and `Lease.release(outcome)`; both are messages
on the actor's bounded mailbox, and a grant travels back on a one-shot channel in the message.
The handle outlives incarnations of the actor, so a supervisor can restart a crashed actor under it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Literal

import attrs
import trio

from providers.errors import ProviderError
from providers.upstream import Upstream
from runtime.errors import ActorUnavailable

log = logging.getLogger("tollgate.provider")
MAILBOX_SIZE = 1024
RELEASE_DEADLINE_S = 5.0


@attrs.frozen
class Outcome:
    """How an attempt ended, as the provider's actor needs to know it."""

    result: Literal["success", "failure", "cancelled"]
    error_kind: str | None = None
    retryable: bool = False
    message: str | None = None

    @classmethod
    def failed(cls, error: ProviderError) -> Outcome:
        return cls("failure", error.kind, error.retryable, error.message)


SUCCESS = Outcome("success")
CANCELLED = Outcome("cancelled")


@attrs.frozen
class Grant:
    epoch: int


@attrs.frozen
class Acquire:
    reply: trio.MemorySendChannel[Grant]


@attrs.frozen
class Release:
    grant: Grant
    outcome: Outcome


@attrs.frozen
class ProviderStatistics:
    name: str
    kind: str
    state: Literal["up", "down"]
    in_flight: int
    max_concurrency: int
    waiting: int
    requests: int
    successes: int
    failures: int
    cancellations: int
    last_error: str | None
    restarts: int


@attrs.define
class _State:
    epoch: int
    in_flight: int = 0
    waiting: deque[trio.MemorySendChannel[Grant]] = attrs.field(factory=deque)
    requests: int = 0
    successes: int = 0
    failures: int = 0
    cancellations: int = 0
    last_error: str | None = None


class ProviderHandle:
    def __init__(self, name: str, kind: str, upstream: Upstream, max_concurrency: int) -> None:
        self.name = name
        self.kind = kind
        self.upstream = upstream
        self.max_concurrency = max_concurrency
        self._send, self._receive = trio.open_memory_channel[Acquire | Release](MAILBOX_SIZE)
        self._state = _State(epoch=0)
        self._restarts = -1
        self._down = False

    # --- the caller's side -------------------------------------------------------------------
    async def lease(self) -> Lease:
        """Wait for a concurrency slot. Raises `ActorUnavailable` if the actor is gone."""
        reply_send, reply_receive = trio.open_memory_channel[Grant](1)
        try:
            await self._send.send(Acquire(reply_send))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorUnavailable(f"provider {self.name!r} is down") from None
        with reply_receive:
            try:
                grant = await reply_receive.receive()
            except trio.EndOfChannel:
                raise ActorUnavailable(f"provider {self.name!r} is unavailable (its actor stopped)") from None
            except BaseException:
                # Cancelled while the grant may already be in the buffer: hand it back.
                try:
                    early = reply_receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    pass
                else:
                    await Lease(self, early).release(CANCELLED)
                raise
        return Lease(self, grant)

    async def _release(self, grant: Grant, outcome: Outcome) -> None:
        # BrokenResourceError: the actor was given up, so there is nothing left to account to.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(RELEASE_DEADLINE_S),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self._send.send(Release(grant, outcome))

    def statistics(self) -> ProviderStatistics:
        state = self._state
        return ProviderStatistics(
            name=self.name,
            kind=self.kind,
            state="down" if self._down else "up",
            in_flight=state.in_flight,
            max_concurrency=self.max_concurrency,
            waiting=len(state.waiting),
            requests=state.requests,
            successes=state.successes,
            failures=state.failures,
            cancellations=state.cancellations,
            last_error=state.last_error,
            restarts=max(self._restarts, 0),
        )

    # --- the actor's side ---------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[ProviderHandle] = trio.TASK_STATUS_IGNORED) -> None:
        """One incarnation of the actor: fresh state, same mailbox."""
        self._restarts += 1
        state = self._state = _State(epoch=self._restarts, requests=self._state.requests)
        task_status.started(self)
        try:
            async for message in self._receive:
                if isinstance(message, Acquire):
                    self._on_acquire(state, message.reply)
                else:
                    self._on_release(state, message)
        finally:
            for waiter in state.waiting:
                waiter.close()
            state.waiting.clear()

    def _on_acquire(self, state: _State, reply: trio.MemorySendChannel[Grant]) -> None:
        if state.in_flight < self.max_concurrency:
            self._grant(state, reply)
        else:
            state.waiting.append(reply)

    def _grant(self, state: _State, reply: trio.MemorySendChannel[Grant]) -> bool:
        try:
            reply.send_nowait(Grant(state.epoch))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # the caller gave up waiting
        finally:
            reply.close()
        state.in_flight += 1
        state.requests += 1
        return True

    def _on_release(self, state: _State, release: Release) -> None:
        if release.grant.epoch != state.epoch:
            return  # granted by an earlier incarnation; its slot died with it
        state.in_flight -= 1
        outcome = release.outcome
        if outcome.result == "success":
            state.successes += 1
        elif outcome.result == "failure":
            state.failures += 1
            state.last_error = outcome.message
        else:
            state.cancellations += 1
        while state.waiting and state.in_flight < self.max_concurrency:
            if self._grant(state, state.waiting.popleft()):
                break

    def give_up(self, error: BaseException) -> None:
        """Called by the supervisor when restarts are exhausted: fail every waiting caller fast."""
        self._down = True
        self._state.last_error = f"actor crashed: {type(error).__name__}"
        while True:
            try:
                message = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(message, Acquire):
                message.reply.close()
        self._receive.close()


@attrs.define
class Lease:
    """A concurrency slot at one provider; release it exactly once with the attempt's outcome."""

    handle: ProviderHandle
    grant: Grant
    released: bool = False

    async def release(self, outcome: Outcome) -> None:
        if not self.released:
            self.released = True
            await self.handle._release(self.grant, outcome)
