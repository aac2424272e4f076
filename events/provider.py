"""`Provider`: the life of one upstream provider as the gateway saw it (circuit breaker transitions)."""

from __future__ import annotations

import uuid
from typing import Any

from events.store import Aggregate

NAMESPACE = uuid.UUID("a8e0c0de-55b1-4a0e-8c43-0c5b7f0e7d22")


def provider_id(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"provider:{name}")


class Provider(Aggregate):
    class Registered(Aggregate.Created):
        name: str

    class BreakerTransitioned(Aggregate.Event):
        from_state: str
        to_state: str
        reason: str

        def apply(self, aggregate: Any) -> None:
            aggregate.breaker = self.to_state

    def __init__(self, name: str) -> None:
        self.name = name
        self.breaker = "closed"

    @classmethod
    def register(cls, name: str) -> Provider:
        return cls._create(cls.Registered, id=provider_id(name), name=name)

    def transition(self, from_state: str, to_state: str, reason: str) -> None:
        self.trigger_event(self.BreakerTransitioned, from_state=from_state, to_state=to_state, reason=reason)
