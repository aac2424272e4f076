"""What the request path needs to know from the ledger, in memory: tenants and their keys, prices.

Loaded from the projections at start (plus the log tail they fold), then kept current by folding
every commit in the trio thread, so a tenant created or a price set is in force for the very next
request. It only follows commits: the aggregates writers append to live behind their own door
(`runtime.ledger.aggregates`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs

from events.projections import FoldState, Projections, fold
from events.store import Recorded
from policies.cost import PriceBook, PriceEntry, price_from_fields
from policies.tenant import TenantPolicy
from runtime.auth import bearer, hash_key
from runtime.errors import Unauthenticated


@attrs.frozen
class TenantView:
    """A tenant as the request path sees it."""

    id: str
    name: str
    enabled: bool
    policy: dict[str, Any]
    source: str
    created_at: str
    updated_at: str

    @functools.cached_property
    def tenant_policy(self) -> TenantPolicy:
        """`policy` as a `TenantPolicy`, converted once per view (a change to the tenant makes a new view)."""
        return TenantPolicy.from_record(self.policy)


def _price_entry(row: dict[str, Any]) -> PriceEntry:
    price = None
    if not row["removed"]:
        fields: dict[str, Any] = {
            name: None if row[name] is None else Decimal(row[name])
            for name in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
        }
        for name, value in json.loads(row["rates"] or "{}").items():
            fields[name] = value if isinstance(value, int) else Decimal(value)
        price = price_from_fields(fields)
    return PriceEntry(row["key"], datetime.fromisoformat(row["effective_from"]), price, row["source"])


class Books:
    def __init__(self, projections: Projections) -> None:
        self._state = FoldState(
            open_requests=dict(projections.state.open_requests),
            tenants=dict(projections.state.tenants),
            keys=dict(projections.state.keys),
        )
        rows = projections.db["prices"].rows_where(order_by="position")  # the later of two at one time wins
        self.prices = PriceBook(_price_entry(dict(row)) for row in rows)
        self._views: dict[str, TenantView] = {}

    def apply(self, recorded: Sequence[Recorded]) -> None:
        changes = fold(recorded, self._state)
        for row in changes.prices:
            self.prices.add(_price_entry(row))
        for tenant_id in changes.tenants:
            self._views.pop(tenant_id, None)

    # --- tenants --------------------------------------------------------------------------------
    def tenant(self, tenant_id: str) -> TenantView | None:
        view = self._views.get(tenant_id)
        if view is None:
            row = self._state.tenants.get(tenant_id)
            if row is None:
                return None
            view = TenantView(
                row["id"],
                row["name"],
                bool(row["enabled"]),
                json.loads(row["policy"]),
                row["source"],
                row["created_at"],
                row["updated_at"],
            )
            self._views[tenant_id] = view
        return view

    def tenants(self) -> list[TenantView]:
        views = (self.tenant(tenant_id) for tenant_id in self._state.tenants)
        return sorted((v for v in views if v is not None), key=lambda v: v.name)

    def authenticate(self, header: str | None, now: datetime | None = None) -> TenantView:
        """Bearer key → tenant. Lookup is by the key's SHA-256, so timing reveals nothing about
        stored keys. Keys replaced by a rotation work until their grace period ends."""
        key = bearer(header)
        if key is None:
            raise Unauthenticated("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        row = self._state.keys.get(hash_key(key))
        if (
            row is not None
            and row["valid_until"] is not None
            and (datetime.fromisoformat(row["valid_until"]) <= (now or datetime.now(UTC)))
        ):
            row = None
        tenant = self.tenant(row["tenant_id"]) if row is not None else None
        if tenant is None:
            raise Unauthenticated("Incorrect API key provided.")
        return tenant

    def key_owner(self, key_sha256: str) -> str | None:
        row = self._state.keys.get(key_sha256)
        return row["tenant_id"] if row is not None else None

    def open_request(self, ledger_id: str) -> dict[str, Any] | None:
        return self._state.open_requests.get(ledger_id)

    def open_requests(self) -> list[dict[str, Any]]:
        return list(self._state.open_requests.values())
