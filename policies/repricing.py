"""Re-pricing: what every recorded request would cost under another price set. Pure.

A `PriceSet` is one of
    a flat list of prices (a TOML `[pricing]` file, or the ledger's prices in force at a time T)
        applied to every request whatever its date, or
    the ledger's whole price history, each request priced at its own `received_at` (re-pricing
        with it reproduces every recorded cost, unless a price was set later with a past
        `effective_from`: that is how a wrong price is corrected).
Its fingerprint is the SHA-256 of its canonical JSON (prices as decimal strings, sorted keys).

A `Repricer` is fed a request's admission and then its terminal event (in log order) and prices it
with `policies.cost` exactly as the gateway did, by provider and served model at `received_at`.
It compares with the request's *current* cost (recorded, or its latest restatement), so restating
A→B then B→C equals A→C, and a repeated run finds nothing to change. A request the price set does
not price is left as it is. Memory: the requests admitted and not yet settled in the scan, the
requests already restated (`current`), and one row per tenant × model × provider.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs

from events.money import ZERO, usd_str
from events.usage import Usage
from policies.cost import PRICE_EVENT_FIELDS, Price, PriceBook, Priced, PriceEntry, cost_of, field_text, price_fields

FLAT_FROM = datetime(1, 1, 1, tzinfo=UTC)
NEWLY_PRICED_LISTED = 1000


def _price_record(price: Price) -> list[Any]:
    """The price as its fingerprint sees it: the three base rates, then (only when some is set, so a
    price without them keeps its fingerprint) the other fields as decimal strings."""
    fields = price_fields(price)
    record: list[Any] = [field_text(fields.pop(name)) for name in PRICE_EVENT_FIELDS[:3]]
    more = {name: field_text(value) for name, value in fields.items() if value is not None}
    return [*record, more] if more else record


def fingerprint(document: Any) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@attrs.frozen
class PriceSet:
    book: PriceBook
    fingerprint: str
    source: str
    refs: Mapping[str, str] = attrs.field(factory=dict)
    """Price reference by key, for flat sets (their book entries carry a placeholder date)."""

    def price(self, provider: str, served_model: str, usage: Usage, at: datetime) -> Priced:
        entry = self.book.lookup(provider, served_model, at)
        if entry is None or entry.price is None:
            return Priced(None, None)
        ref = self.refs.get(entry.key)
        return Priced(cost_of(usage, entry.price), entry.ref if ref is None else ref)


def flat_prices(prices: Mapping[str, Price], source: str = "file") -> PriceSet:
    """`prices` ("PROVIDER/MODEL" → Price) applied to every request, whenever it was received."""
    digest = fingerprint({"prices": {key: _price_record(price) for key, price in prices.items()}})
    book = PriceBook(PriceEntry(key, FLAT_FROM, price) for key, price in prices.items())
    return PriceSet(book, digest, source, {key: f"{key}@{source}:{digest[7:23]}" for key in prices})


def prices_as_of(book: PriceBook, at: datetime) -> PriceSet:
    """The ledger's prices in force at `at`, applied to every request."""
    current = book.current(at)
    records = {key: _price_record(entry.price) for key, entry in current.items() if entry.price is not None}
    digest = fingerprint({"as_of": at.isoformat(), "prices": records})
    flat = PriceBook(PriceEntry(key, FLAT_FROM, entry.price) for key, entry in current.items())
    return PriceSet(flat, digest, f"as_of:{at.isoformat()}", {key: entry.ref for key, entry in current.items()})


def ledger_history(book: PriceBook) -> PriceSet:
    """Every price entry the ledger holds, each request priced at its own time."""
    entries = sorted(book.entries(), key=lambda e: (e.key, e.effective_from))
    digest = fingerprint(
        {
            "history": [
                [e.key, e.effective_from.isoformat(), None if e.price is None else _price_record(e.price)]
                for e in entries
            ]
        }
    )
    return PriceSet(book, digest, "ledger")


@attrs.frozen
class Filters:
    """Which requests: received in [start, end), of a tenant, a model (requested or served), a provider."""

    start: datetime | None = None
    end: datetime | None = None
    tenant: str | None = None
    model: str | None = None
    provider: str | None = None

    def admits(self, tenant: str, received_at: datetime) -> bool:
        return (
            (self.tenant is None or tenant == self.tenant)
            and (self.start is None or received_at >= self.start)
            and (self.end is None or received_at < self.end)
        )

    def record(self) -> dict[str, str | None]:
        return {
            "from": None if self.start is None else self.start.isoformat(),
            "to": None if self.end is None else self.end.isoformat(),
            "tenant": self.tenant,
            "model": self.model,
            "provider": self.provider,
        }


@attrs.frozen
class Restatement:
    """One request whose cost changes: what a `CostRestated` event says."""

    aggregate_id: uuid.UUID
    version: int
    request_id: str
    tenant: str
    model: str
    received_at: datetime
    provider: str
    served_model: str
    old_cost_usd: Decimal | None
    new_cost_usd: Decimal
    price_ref: str
    saving: bool = False
    """A cache hit's `saved_usd` changes (a `SavingRestated`; the old and new amounts are savings):
    a hit is never billed, so its cost is never restated."""
    operation: str = "chat"
    """The API the request was made with (its `Admitted.operation`), repeated for the spend projection."""


@attrs.define
class _Row:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    old: Decimal = ZERO
    new: Decimal = ZERO
    restated: int = 0
    newly_priced: int = 0
    unpriced: int = 0


@attrs.frozen
class Admission:
    request_id: str
    tenant: str
    model: str
    received_at: datetime
    operation: str = "chat"


class Repricer:
    """Aggregate ids are the store's hex strings (see `events.store.Raw`)."""

    def __init__(
        self,
        prices: PriceSet,
        filters: Filters,
        current: Mapping[str, tuple[Decimal | None, int]] | None = None,
    ) -> None:
        self.prices = prices
        self.filters = filters
        self.current = current or {}
        self._open: dict[str, Admission] = {}
        self._rows: dict[tuple[str, str, str], _Row] = {}
        self.newly_priced_requests: list[str] = []
        self.savings_restated = 0

    def admitted(
        self,
        aggregate_id: str,
        request_id: str,
        tenant: str,
        model: str,
        received_at: datetime,
        operation: str = "chat",
    ) -> None:
        if self.filters.admits(tenant, received_at):
            self._open[aggregate_id] = Admission(request_id, tenant, model, received_at, operation)

    def _selected(self, aggregate_id: str, provider: str | None, served_model: str | None) -> Admission | None:
        """The admission of a settled request the filters select (and that was served), or None."""
        admission = self._open.pop(aggregate_id, None)
        if admission is None or provider is None or served_model is None:
            return None
        wanted = self.filters
        if wanted.provider is not None and provider != wanted.provider:
            return None
        if wanted.model is not None and wanted.model not in (admission.model, served_model):
            return None
        return admission

    def settled(
        self,
        aggregate_id: str,
        version: int,
        provider: str | None,
        served_model: str | None,
        usage: Usage,
        recorded_cost: Decimal | None,
    ) -> Restatement | None:
        """Price one settled request; the restatement its cost needs, if it changes."""
        admission = self._selected(aggregate_id, provider, served_model)
        if admission is None or provider is None or served_model is None:
            return None
        old, restated = self.current.get(aggregate_id, (recorded_cost, 0))
        priced = self.prices.price(provider, served_model, usage, admission.received_at)
        row = self._rows.setdefault((admission.tenant, admission.model, provider), _Row())
        row.requests += 1
        row.prompt_tokens += usage.prompt_tokens
        row.completion_tokens += usage.completion_tokens
        row.cached_tokens += usage.cached_tokens
        row.old += old or ZERO
        if priced.cost_usd is None or priced.price_ref is None:  # not in this price set: left as it is
            row.new += old or ZERO
            row.unpriced += old is None
            return None
        row.new += priced.cost_usd
        if priced.cost_usd == old:
            return None
        row.restated += 1
        if old is None:
            row.newly_priced += 1
            if len(self.newly_priced_requests) < NEWLY_PRICED_LISTED:
                self.newly_priced_requests.append(admission.request_id)
        return Restatement(
            uuid.UUID(aggregate_id),
            version + restated + 1,
            admission.request_id,
            admission.tenant,
            admission.model,
            admission.received_at,
            provider,
            served_model,
            old,
            priced.cost_usd,
            priced.price_ref,
            operation=admission.operation,
        )

    def served_from_cache(
        self,
        aggregate_id: str,
        version: int,
        provider: str | None,
        served_model: str | None,
        usage: Usage,
        recorded_saving: Decimal | None,
    ) -> Restatement | None:
        """Price one cache hit's saving (what the answer would have cost); the restatement it
        needs, if it changes. Its cost ($0) is not the price set's business, and not in the rows."""
        admission = self._selected(aggregate_id, provider, served_model)
        if admission is None or provider is None or served_model is None:
            return None
        old, restated = self.current.get(aggregate_id, (recorded_saving, 0))
        priced = self.prices.price(provider, served_model, usage, admission.received_at)
        if priced.cost_usd is None or priced.price_ref is None or priced.cost_usd == old:
            return None
        self.savings_restated += 1
        return Restatement(
            uuid.UUID(aggregate_id),
            version + restated + 1,
            admission.request_id,
            admission.tenant,
            admission.model,
            admission.received_at,
            provider,
            served_model,
            old,
            priced.cost_usd,
            priced.price_ref,
            saving=True,
            operation=admission.operation,
        )

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "tenant": tenant,
                "model": model,
                "provider": provider,
                "requests": row.requests,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "cached_tokens": row.cached_tokens,
                "old_usd": usd_str(row.old),
                "new_usd": usd_str(row.new),
                "delta_usd": usd_str(row.new - row.old),
                "restated": row.restated,
                "newly_priced": row.newly_priced,
                "unpriced": row.unpriced,
            }
            for (tenant, model, provider), row in sorted(self._rows.items())
        ]

    def totals(self) -> dict[str, Any]:
        rows = self._rows.values()
        old = sum((r.old for r in rows), ZERO)
        new = sum((r.new for r in rows), ZERO)
        return {
            "requests": sum(r.requests for r in rows),
            "old_usd": usd_str(old),
            "new_usd": usd_str(new),
            "delta_usd": usd_str(new - old),
            "newly_priced": sum(r.newly_priced for r in rows),
            "restated": sum(r.restated for r in rows),
            "unpriced": sum(r.unpriced for r in rows),
            "savings_restated": self.savings_restated,
        }
