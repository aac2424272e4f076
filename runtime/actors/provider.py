"""One actor per provider: it owns the provider's circuit breaker and concurrency slots.

Callers talk to it through `ProviderHandle.lease()` and `Lease.release(outcome)`; both are messages
on the actor's bounded mailbox, and the answer travels back on a one-shot channel in the message.
A lease is granted when the breaker admits (`policies.breaker`, pure) and a slot is free; callers
beyond `max_concurrency` wait in FIFO order. Only retryable provider failures count against the
breaker; client errors and cancellations are "ignored" outcomes. Every breaker transition is passed
to `on_transition` (the gateway journals it as a `Provider` event). The handle outlives incarnations
of the actor, so a supervisor can restart a crashed actor under it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Literal

import attrs
import trio

from policies import breaker
from providers.errors import ProviderError
from providers.upstream import Upstream
from runtime.actors.mailbox import ask
from runtime.config import ProviderConfig
from runtime.errors import ActorUnavailable, ProviderRefused

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

    @property
    def for_breaker(self) -> breaker.Outcome:
        if self.result == "success":
            return "success"
        if self.result == "failure" and self.retryable:
            return "failure"
        return "ignored"  # a client error or a cancellation says nothing about the provider


SUCCESS = Outcome("success")
CANCELLED = Outcome("cancelled")


@attrs.frozen
class Grant:
    epoch: int
    ticket: breaker.Ticket


@attrs.frozen
class Refusal:
    retry_at: float | None


@attrs.frozen
class Acquire:
    reply: trio.MemorySendChannel[Grant | Refusal]


@attrs.frozen
class Release:
    grant: Grant
    outcome: Outcome


@attrs.frozen
class ProviderStatistics:
    name: str
    kind: str
    state: Literal["up", "down"]
    breaker: str
    window_requests: int
    window_failures: int
    consecutive_failures: int
    half_open_in_s: float | None
    probes_in_flight: int
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
    breaker: breaker.BreakerState = breaker.BreakerState()
    in_flight: int = 0
    waiting: deque[trio.MemorySendChannel[Grant | Refusal]] = attrs.field(factory=deque)
    requests: int = 0
    successes: int = 0
    failures: int = 0
    cancellations: int = 0
    last_error: str | None = None


class ProviderHandle:
    def __init__(
        self,
        config: ProviderConfig,
        upstream: Upstream,
        on_transition: Callable[[breaker.Transition], None] | None = None,
    ) -> None:
        self.config = config  # its retries, timeouts and output limit: callers read them here, not by name
        self.name = config.name
        self.kind = config.kind
        self.upstream = upstream
        self.max_concurrency = config.max_concurrency
        self.breaker_config = config.breaker
        self.on_transition = on_transition or (lambda transition: None)
        self._send, self._receive = trio.open_memory_channel[Acquire | Release](MAILBOX_SIZE)
        self._state = _State(epoch=0)
        self._restarts = -1
        self._down = False

    # --- the caller's side -------------------------------------------------------------------
    async def lease(self) -> Lease:
        """Wait for a slot. Raises `ProviderRefused` while the breaker refuses, and
        `ActorUnavailable` if the actor is gone."""
        try:
            answer = await ask(self._send, Acquire, self._hand_back)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorUnavailable(f"provider {self.name!r} is down") from None
        except trio.EndOfChannel:
            raise ActorUnavailable(f"provider {self.name!r} is unavailable (its actor stopped)") from None
        if isinstance(answer, Refusal):
            raise ProviderRefused(
                f"provider {self.name!r} is not taking requests (circuit open)", retry_at=answer.retry_at
            )
        return Lease(self, answer)

    async def _hand_back(self, answer: Grant | Refusal) -> None:
        """A grant that arrived as its caller was cancelled."""
        if isinstance(answer, Grant):
            await Lease(self, answer).release(CANCELLED)

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
        now = trio.current_time()
        snap = breaker.snapshot(self.breaker_config, state.breaker, now)
        return ProviderStatistics(
            name=self.name,
            kind=self.kind,
            state="down" if self._down else "up",
            breaker=snap.state,
            window_requests=snap.requests,
            window_failures=snap.failures,
            consecutive_failures=snap.consecutive_failures,
            half_open_in_s=None if snap.half_open_at is None else round(max(snap.half_open_at - now, 0.0), 3),
            probes_in_flight=snap.probes_in_flight,
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
        """One incarnation of the actor: fresh slots (the breaker and counters carry over)."""
        self._restarts += 1
        previous = self._state
        state = self._state = attrs.evolve(previous, epoch=self._restarts, in_flight=0, waiting=deque())
        task_status.started(self)
        try:
            async for message in self._receive:
                if isinstance(message, Acquire):
                    if state.in_flight < self.max_concurrency:
                        self._answer(state, message.reply)
                    else:
                        state.waiting.append(message.reply)
                else:
                    self._on_release(state, message)
        finally:
            for waiter in state.waiting:
                waiter.close()
            state.waiting.clear()

    def _transition(self, transition: breaker.Transition | None) -> None:
        if transition is not None:
            log.warning(
                "provider %s: breaker %s → %s (%s)",
                self.name,
                transition.from_state,
                transition.to_state,
                transition.reason,
            )
            try:
                self.on_transition(transition)
            except Exception:  # recording must never break the actor
                log.exception("provider %s: could not record a breaker transition", self.name)

    def _answer(self, state: _State, reply: trio.MemorySendChannel[Grant | Refusal]) -> None:
        """Ask the breaker, then grant or refuse. A caller that gave up frees what it was given."""
        state.breaker, verdict, transition = breaker.admit(self.breaker_config, state.breaker, trio.current_time())
        self._transition(transition)
        answer: Grant | Refusal = Grant(state.epoch, verdict.ticket) if verdict.ticket else Refusal(verdict.retry_at)
        try:
            reply.send_nowait(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if isinstance(answer, Grant):
                self._record(state, answer.ticket, CANCELLED)
            return
        finally:
            reply.close()
        if isinstance(answer, Grant):
            state.in_flight += 1
            state.requests += 1

    def _record(self, state: _State, ticket: breaker.Ticket, outcome: Outcome) -> None:
        state.breaker, transition = breaker.record(
            self.breaker_config, state.breaker, trio.current_time(), ticket, outcome.for_breaker
        )
        self._transition(transition)

    def _on_release(self, state: _State, release: Release) -> None:
        outcome = release.outcome
        self._record(state, release.grant.ticket, outcome)
        if outcome.result == "success":
            state.successes += 1
        elif outcome.result == "failure":
            state.failures += 1
            state.last_error = outcome.message
        else:
            state.cancellations += 1
        if release.grant.epoch == state.epoch:
            state.in_flight -= 1
        while state.waiting and state.in_flight < self.max_concurrency:
            self._answer(state, state.waiting.popleft())

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
    """A slot at one provider; release it exactly once with the attempt's outcome."""

    handle: ProviderHandle
    grant: Grant
    released: bool = False

    async def release(self, outcome: Outcome) -> None:
        if not self.released:
            self.released = True
            await self.handle._release(self.grant, outcome)
