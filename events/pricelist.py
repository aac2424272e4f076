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

V2_FIELDS = (
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
    "per_request_usd",
    "long_context_above_prompt_tokens",
    "long_context_input_per_mtok",
    "long_context_output_per_mtok",
    "long_context_cached_input_per_mtok",
    "long_context_cache_write_per_mtok",
    "long_context_cache_write_1h_per_mtok",
    "catalogue",
)
PRICE_LIST_ID = uuid.UUID("0d2f3c4e-2b6a-4f0e-9a7b-51c2e8f4a001")


class PriceList(Aggregate):
    class Opened(Aggregate.Created):
        pass

    class PriceSet(Aggregate.Event):
        """A price from `effective_from` on. The rates are `policies.cost.Price` as flat fields
        (`policies.cost.price_fields`): the long-context tier's prefixed `long_context_`.
        `source` says who set it ("config", "api", or the catalogue an import read: "genai-prices");
        `catalogue` is that catalogue's version for an imported price (e.g. "0.2.3"), None otherwise.

        v2 added the cache-write rates, the per-request fee, the long-context tier and `catalogue`;
        an older event loads with them None (a price without them)."""

        class_version = 2

        key: str
        input_per_mtok: Decimal
        output_per_mtok: Decimal
        cached_input_per_mtok: Decimal | None
        effective_from: datetime
        source: str
        cache_write_per_mtok: Decimal | None = None
        cache_write_1h_per_mtok: Decimal | None = None
        per_request_usd: Decimal | None = None
        long_context_above_prompt_tokens: int | None = None
        long_context_input_per_mtok: Decimal | None = None
        long_context_output_per_mtok: Decimal | None = None
        long_context_cached_input_per_mtok: Decimal | None = None
        long_context_cache_write_per_mtok: Decimal | None = None
        long_context_cache_write_1h_per_mtok: Decimal | None = None
        catalogue: str | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            for name in V2_FIELDS:
                state[name] = None

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
        self, key: str, effective_from: datetime, source: str, catalogue: str | None = None, **rates: Any
    ) -> None:
        """`rates`: `policies.cost.price_fields` of the price."""
        self.trigger_event(
            self.PriceSet, key=key, effective_from=effective_from, source=source, catalogue=catalogue, **rates
        )

    def remove_price(self, key: str, effective_from: datetime, source: str) -> None:
        self.trigger_event(self.PriceRemoved, key=key, effective_from=effective_from, source=source)
