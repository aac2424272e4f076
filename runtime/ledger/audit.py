"""The audit log's search: events of the log after a position, filtered by tenant, request id or ledger id."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from events.request import Request
from events.store import LedgerStore
from events.tenant import Tenant, tenant_id


@attrs.frozen
class FoundEvent:
    """An event of the log; `owner` is (tenant, client request id) for a `Request`'s events, else None."""

    position: int
    event: Any
    owner: tuple[str, str] | None = None


def find_events(
    store: LedgerStore,
    after: int,
    limit: int,
    tenant: str | None,
    request_id: str | None,
    scan_limit: int,
    ledger_id: uuid.UUID | None = None,
) -> tuple[list[FoundEvent], int]:
    """Scan the log after `after` (at most `scan_limit` events) for events matching the filters.

    `request_id` is a client's correlation id: several tenants (or one, twice) may have sent the same,
    so each request event found carries its owner (tenant, request id) and its aggregate id, the
    request's unique ledger id; `ledger_id` and `tenant` narrow to one request or one tenant."""
    owners: dict[uuid.UUID, tuple[str, str]] = {}
    wanted_tenant = tenant_id(tenant) if tenant is not None else None

    def owner(event: Any) -> tuple[str, str] | None:
        if isinstance(event, Request.Admitted | Request.Rejected):
            owners[event.originator_id] = (event.tenant, event.request_id)
        if isinstance(event, Request.Event):
            if event.originator_id not in owners:
                found = store.get(event.originator_id, Request)
                owners[event.originator_id] = (found.tenant, found.request_id) if found else ("", "")
            return owners[event.originator_id]
        return None

    found: list[FoundEvent] = []
    position = after
    for record in store.read_all(after):
        position = record.position
        event = record.event
        if ledger_id is None or event.originator_id == ledger_id:
            owning = owner(event) if isinstance(event, Request.Event) else None
            if isinstance(event, Tenant.Event):
                owning_tenant = tenant if event.originator_id == wanted_tenant else None
            else:
                owning_tenant = owning[0] if owning else None
            if (tenant is None or owning_tenant == tenant) and (
                request_id is None or (owning is not None and owning[1] == request_id)
            ):
                found.append(FoundEvent(record.position, event, owning))
        if len(found) >= limit or position - after >= scan_limit:
            break
    return found, position
