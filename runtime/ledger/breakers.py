"""`BreakerLog`: circuit breaker transitions become `Provider` events, in order, through the aggregates door.

A provider actor reports a transition synchronously (`record`), from inside its own step; this log
queues it and one task commits each through `Aggregates.change`, so the `Provider` aggregate changes
only after its commit is confirmed. A transition the ledger refused is logged and dropped: the next one
starts from what the store holds (no version gap for the next start to trip over). Transitions are not
money: when the queue is full, one is dropped with a warning rather than blocking a provider actor.
"""

from __future__ import annotations

import logging

import trio

from events.provider import Provider, provider_id
from policies.breaker import Transition
from runtime.ledger.aggregates import Aggregates

log = logging.getLogger("tollgate.breakers")
QUEUE_SIZE = 1024


class BreakerLog:
    def __init__(self, aggregates: Aggregates) -> None:
        self._aggregates = aggregates
        self._send, self._receive = trio.open_memory_channel[tuple[str, Transition]](QUEUE_SIZE)
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()

    def record(self, provider: str, transition: Transition) -> None:
        try:
            self._send.send_nowait((provider, transition))
        except trio.WouldBlock:
            log.warning("provider %s: breaker transition %s not recorded (queue full)", provider, transition)
            return
        self._pending += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    async def wait_idle(self) -> None:
        """Until every transition recorded so far is committed (or refused)."""
        await self._idle.wait()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for provider, transition in self._receive:
            try:
                await self._commit(provider, transition)
            except Exception:
                log.warning("provider %s: could not record a breaker transition", provider, exc_info=True)
            finally:
                self._pending -= 1
                if not self._pending:
                    self._idle.set()

    async def _commit(self, provider: str, transition: Transition) -> None:
        def transitioned(aggregate: Provider | None) -> Provider:
            aggregate = aggregate or Provider.register(provider)
            aggregate.transition(transition.from_state, transition.to_state, transition.reason)
            return aggregate

        await self._aggregates.change(provider_id(provider), Provider, transitioned)


__all__ = ["BreakerLog"]
