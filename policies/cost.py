"""Prices and cost: pure functions of usage and the price in force when a request was received.

    cost = ( (prompt − cached − written) × input + cached × cached_input
           + (written − written_1h) × cache_write + written_1h × cache_write_1h
           + completion × output ) / 1e6
           + per_request_usd

Prompt tokens follow OpenAI's rule and include cached reads and cache writes (the Anthropic adapter
normalises to it), so each prompt token is charged once, at its own rate. Defaults: `cached_input`
= `input`, `cache_write` = `input`, `cache_write_1h` = `cache_write`, `per_request_usd` = 0.

A long-context tier (`long_context`, with `above_prompt_tokens`) replaces the token rates of the
*whole* request when its prompt has more than `above_prompt_tokens` tokens, as providers bill it;
a rate the tier leaves out keeps the base price's rate. The per-request fee is not tiered.

The result is quantized to 1e-9 USD. A model without a price in force is *unpriced* (cost None),
never $0.

Lookup is by the provider and the model that served the request. A dated snapshot id
(`gpt-4o-2024-08-06`, `claude-3-5-haiku-20241022`) falls back to its base entry (`gpt-4o`,
`claude-3-5-haiku`) when it has no entry of its own.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from events.money import MTOK, ZERO, usd, usd_str
from events.usage import Usage

_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@attrs.frozen
class Rates:
    """USD per million tokens of each kind; None: the default the module docstring gives."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None

    @property
    def cached_rate(self) -> Decimal:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def write_rate(self) -> Decimal:
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok

    @property
    def write_1h_rate(self) -> Decimal:
        return self.write_rate if self.cache_write_1h_per_mtok is None else self.cache_write_1h_per_mtok

    @property
    def max_input_rate(self) -> Decimal:
        """The most one prompt token can cost, however the provider bills it (read, written, plain)."""
        return max(self.input_per_mtok, self.cached_rate, self.write_rate, self.write_1h_rate)


@attrs.frozen
class LongContext:
    """Rates for the whole request when its prompt has more than `above_prompt_tokens` tokens."""

    above_prompt_tokens: int
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None


@attrs.frozen
class Price:
    """USD per million tokens (and an optional fee per request), with an optional long-context tier."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    per_request_usd: Decimal | None = None
    long_context: LongContext | None = None

    def __attrs_post_init__(self) -> None:
        rates = [self.input_per_mtok, self.output_per_mtok, self.per_request_usd, *self._optional(self)]
        tier = self.long_context
        if tier is not None:
            rates += [tier.input_per_mtok, tier.output_per_mtok, *self._optional(tier)]
            if type(tier.above_prompt_tokens) is not int or tier.above_prompt_tokens < 0:
                raise ValueError("long_context.above_prompt_tokens must be a non-negative integer")
        if any(rate is not None and (not rate.is_finite() or rate < 0) for rate in rates):
            raise ValueError("prices must be finite and non-negative")

    @staticmethod
    def _optional(rates: Price | LongContext) -> list[Decimal | None]:
        return [rates.cached_input_per_mtok, rates.cache_write_per_mtok, rates.cache_write_1h_per_mtok]

    @property
    def base(self) -> Rates:
        return Rates(
            self.input_per_mtok,
            self.output_per_mtok,
            self.cached_input_per_mtok,
            self.cache_write_per_mtok,
            self.cache_write_1h_per_mtok,
        )

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rates a request with `prompt_tokens` prompt tokens is billed at (its tier's, if above it)."""
        tier = self.long_context
        if tier is None or prompt_tokens <= tier.above_prompt_tokens:
            return self.base
        return Rates(
            tier.input_per_mtok,
            tier.output_per_mtok,
            _first(tier.cached_input_per_mtok, self.cached_input_per_mtok),
            _first(tier.cache_write_per_mtok, self.cache_write_per_mtok),
            _first(tier.cache_write_1h_per_mtok, self.cache_write_1h_per_mtok),
        )

    @property
    def all_rates(self) -> list[Rates]:
        """Every set of rates a request could be billed at (the base, and the tier's)."""
        return [self.base] if self.long_context is None else [self.base, self.rates_for(ABOVE_EVERY_TIER)]

    @property
    def fee(self) -> Decimal:
        return ZERO if self.per_request_usd is None else self.per_request_usd


ABOVE_EVERY_TIER = 2**63


def _first(value: Decimal | None, fallback: Decimal | None) -> Decimal | None:
    return fallback if value is None else value


PRICE_EVENT_FIELDS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
    "per_request_usd",
    "long_context_above_prompt_tokens",
    "long_context_input_per_mtok",
    "long_context_output_per_mtok",
    "long_context_cached_input_per_mtok",
    "long_context_cache_write_per_mtok",
    "long_context_cache_write_1h_per_mtok",
)
"""A price as flat fields (`PriceList.PriceSet`, the store's scans): the tier's prefixed `long_context_`."""


def price_fields(price: Price) -> dict[str, Any]:
    """`price` as the flat fields of a `PriceList.PriceSet` event (`PRICE_EVENT_FIELDS`)."""
    fields: dict[str, Any] = {name: getattr(price, name) for name in PRICE_EVENT_FIELDS[:6]}
    tier = price.long_context
    for name in PRICE_EVENT_FIELDS[6:]:
        fields[name] = None if tier is None else getattr(tier, name.removeprefix("long_context_"))
    return fields


def field_text(value: Decimal | int | None) -> str | int | None:
    """A price field for JSON: a rate as its decimal string, a token count as it is."""
    return usd_str(value) if isinstance(value, Decimal) else value


def price_from_fields(fields: Mapping[str, Any]) -> Price:
    """The inverse of `price_fields` (absent fields: None, as in a price event before they existed)."""
    tier = None
    if fields.get("long_context_above_prompt_tokens") is not None:
        tier = LongContext(
            fields["long_context_above_prompt_tokens"],
            fields["long_context_input_per_mtok"],
            fields["long_context_output_per_mtok"],
            fields.get("long_context_cached_input_per_mtok"),
            fields.get("long_context_cache_write_per_mtok"),
            fields.get("long_context_cache_write_1h_per_mtok"),
        )
    return Price(
        fields["input_per_mtok"],
        fields["output_per_mtok"],
        fields.get("cached_input_per_mtok"),
        fields.get("cache_write_per_mtok"),
        fields.get("cache_write_1h_per_mtok"),
        fields.get("per_request_usd"),
        tier,
    )


@attrs.frozen
class PriceEntry:
    """A price for `key` ("PROVIDER/MODEL") from `effective_from` on; `price` None means removed.
    `source` says who set it ("config", "api", "genai-prices"; None where it does not matter)."""

    key: str
    effective_from: datetime
    price: Price | None
    source: str | None = attrs.field(default=None, eq=False)

    @property
    def ref(self) -> str:
        return f"{self.key}@{self.effective_from.isoformat()}"


def price_key(provider: str, model: str) -> str:
    return f"{provider}/{model}"


def cost_of(usage: Usage, price: Price) -> Decimal:
    rates = price.rates_for(usage.prompt_tokens)
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    written_1h = min(usage.cache_write_1h_tokens, written)
    total = (
        (usage.prompt_tokens - cached - written) * rates.input_per_mtok
        + cached * rates.cached_rate
        + (written - written_1h) * rates.write_rate
        + written_1h * rates.write_1h_rate
        + usage.completion_tokens * rates.output_per_mtok
    )
    return usd(total / MTOK + price.fee)


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
