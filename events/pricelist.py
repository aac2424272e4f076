"""`PriceList`: every price Tollgate has ever been told, with the time from which it applies.

One aggregate holds the whole list (`PRICE_LIST_ID`). Prices are USD per million tokens as
`Decimal`; `effective_from` may lie in the past — it says which requests the price is for, it never
changes a cost already recorded (re-pricing appends restatements instead).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from events.store import Aggregate

PRICE_LIST_ID = uuid.UUID("0d2f3c4e-2b6a-4f0e-9a7b-51c2e8f4a001")


class PriceList(Aggregate):
    class Opened(Aggregate.Created):
        pass

    class PriceSet(Aggregate.Event):
        key: str
        input_per_mtok: Decimal
        output_per_mtok: Decimal
        cached_input_per_mtok: Decimal | None
        effective_from: datetime
        source: str

    class PriceRemoved(Aggregate.Event):
        key: str
        effective_from: datetime
        source: str

    def __init__(self, **_: Any) -> None:
        pass

    @classmethod
    def open(cls) -> PriceList:
        return cls._create(cls.Opened, id=PRICE_LIST_ID)

    def set_price(
        self,
        key: str,
        input_per_mtok: Decimal,
        output_per_mtok: Decimal,
        cached_input_per_mtok: Decimal | None,
        effective_from: datetime,
        source: str,
    ) -> None:
        self.trigger_event(
            self.PriceSet,
            key=key,
            input_per_mtok=input_per_mtok,
            output_per_mtok=output_per_mtok,
            cached_input_per_mtok=cached_input_per_mtok,
            effective_from=effective_from,
            source=source,
        )

    def remove_price(self, key: str, effective_from: datetime, source: str) -> None:
        self.trigger_event(self.PriceRemoved, key=key, effective_from=effective_from, source=source)
