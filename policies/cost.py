"""Prices and cost: pure functions of usage and the price in force when a request was received.

    cost = (prompt − cached) × input + cached × cached_input + completion × output     (per 1e6 tokens)

Prompt tokens follow OpenAI's rule and include cached ones (the Anthropic adapter normalises to
it), so cached tokens are charged once, at the cached rate; `cached_input` defaults to `input`.
The result is quantized to 1e-9 USD. A model without a price in force is *unpriced* (cost None),
never $0.

Lookup is by the provider and the model that served the request. A dated snapshot id
(`gpt-4o-2024-08-06`, `claude-3-5-haiku-20241022`) falls back to its base entry (`gpt-4o`,
`claude-3-5-haiku`) when it has no entry of its own.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

import attrs

from events.money import MTOK, usd
from events.usage import Usage

_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@attrs.frozen
class Price:
    """USD per million tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None


@attrs.frozen
class PriceEntry:
    """A price for `key` ("PROVIDER/MODEL") from `effective_from` on; `price` None means removed."""

    key: str
    effective_from: datetime
    price: Price | None

    @property
    def ref(self) -> str:
        return f"{self.key}@{self.effective_from.isoformat()}"


def price_key(provider: str, model: str) -> str:
    return f"{provider}/{model}"


def cost_of(usage: Usage, price: Price) -> Decimal:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    total = (
        (usage.prompt_tokens - cached) * price.input_per_mtok
        + cached * cached_rate
        + usage.completion_tokens * price.output_per_mtok
    )
    return usd(total / MTOK)


@attrs.frozen
class Priced:
    """The outcome of pricing one request: cost and the entry used, or unpriced (both None)."""

    cost_usd: Decimal | None
    price_ref: str | None

    @property
    def unpriced(self) -> bool:
        return self.cost_usd is None


UNPRICED = Priced(None, None)


class PriceBook:
    """Every price entry by key, in effective order. Append-only, like the ledger behind it."""

    def __init__(self, entries: Iterable[PriceEntry] = ()) -> None:
        self._times: dict[str, list[datetime]] = {}
        self._entries: dict[str, list[PriceEntry]] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: PriceEntry) -> None:
        times = self._times.setdefault(entry.key, [])
        entries = self._entries.setdefault(entry.key, [])
        index = bisect.bisect_right(times, entry.effective_from)
        times.insert(index, entry.effective_from)
        entries.insert(index, entry)

    def entry_at(self, key: str, at: datetime) -> PriceEntry | None:
        times = self._times.get(key)
        if not times:
            return None
        index = bisect.bisect_right(times, at)
        return self._entries[key][index - 1] if index else None

    def lookup(self, provider: str, model: str, at: datetime) -> PriceEntry | None:
        """The entry in force at `at`, falling back from a dated snapshot to its base model."""
        entry = self.entry_at(price_key(provider, model), at)
        if entry is None and price_key(provider, model) not in self._times:
            match = _DATED.match(model)
            if match:
                entry = self.entry_at(price_key(provider, match["base"]), at)
        return entry if entry is not None and entry.price is not None else None

    def price(self, provider: str, model: str, usage: Usage, at: datetime) -> Priced:
        entry = self.lookup(provider, model, at)
        if entry is None or entry.price is None:
            return UNPRICED
        return Priced(cost_of(usage, entry.price), entry.ref)

    def current(self, at: datetime) -> dict[str, PriceEntry]:
        """The entry in force for every key at `at` (removed keys omitted)."""
        found = {}
        for key in self._entries:
            entry = self.entry_at(key, at)
            if entry is not None and entry.price is not None:
                found[key] = entry
        return found

    def entries(self) -> list[PriceEntry]:
        return [entry for entries in self._entries.values() for entry in entries]
