"""`Repricing`: the record of one committed re-pricing (who, when, which prices, which requests).

Each committed run is its own aggregate (a fresh id): the `Request.CostRestated` events it caused
carry its id as `repricing_id`, and its `Committed` event carries the price set's fingerprint, the
filters and the totals. A run that changes no cost records nothing (re-running a commit is a no-op).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from events.store import Aggregate


class Repricing(Aggregate):
    class Committed(Aggregate.Created):
        by: str
        fingerprint: str
        price_source: str
        filters: dict[str, Any]
        through_position: int
        requests: int
        restated: int
        newly_priced: int
        old_usd: Decimal
        new_usd: Decimal
        delta_usd: Decimal

    def __init__(self, by: str, fingerprint: str, **_: Any) -> None:
        self.by = by
        self.fingerprint = fingerprint

    @classmethod
    def record(cls, repricing_id: uuid.UUID, **fields: Any) -> Repricing:
        return cls._create(cls.Committed, id=repricing_id, **fields)
