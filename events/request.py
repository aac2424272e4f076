"""One `Request` aggregate per client request: the ledger's record of what happened and what it cost.

    Admitted → AttemptFailed* → Completed | Failed | Cancelled → CostRestated*   (dispatched to a provider)
    Admitted → ServedFromCache                                                    (answered by the cache)
    Rejected                                                                      (refused before dispatch)

Usage is a fact; cost is derived from it by `policies.cost` with the price in force when the request
was received, and recorded with a reference to that price. Money is `Decimal` (quantized to 1e-9
USD, stored as strings). Durations are whole microseconds. Class names are stored as topics: never
rename or move them; change a field with a `class_version` and an upcaster.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from events.store import Aggregate


class Request(Aggregate):
    class Admitted(Aggregate.Created):
        """v2 added `instance`: the id of the gateway process that admitted the request (crash
        recovery settles only the open requests of instances that are gone); a stored v1 event
        loads with it None (written by a single-process gateway). v3 added `operation`: which API
        the client called ("chat", "messages", "responses", "embeddings"); older events load as
        "chat" (the only one there was)."""

        class_version = 3

        request_id: str
        tenant: str
        model: str
        stream: bool
        reserved_usd: Decimal
        received_at: datetime
        instance: str | None = None
        operation: str = "chat"

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["instance"] = None

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["operation"] = "chat"

    class Rejected(Aggregate.Created):
        """v2 added `operation`, as `Admitted`; a stored v1 event loads as "chat"."""

        class_version = 2

        request_id: str
        tenant: str
        model: str | None
        stream: bool
        reason: str
        status: int
        received_at: datetime
        operation: str = "chat"

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["operation"] = "chat"

    class AttemptFailed(Aggregate.Event):
        provider: str
        served_model: str
        error_kind: str
        status: int | None
        retryable: bool

        def apply(self, aggregate: Any) -> None:
            aggregate.attempts += 1

    class UsageReported(Aggregate.Event):
        """A stream's provider reported its usage (the counts as they will be billed, `usage_source`
        saying how: "provider", or "provider_capped"/"provider_invalid" when corrected) before the
        stream ended: written once per stream, when the usage chunk is read, so a request the
        gateway dies under after it is recovered with this usage and its cost, not as unknown."""

        provider: str
        served_model: str
        prompt_tokens: int
        completion_tokens: int
        cached_tokens: int
        cache_write_tokens: int
        cache_write_1h_tokens: int
        usage_source: str

        def apply(self, aggregate: Any) -> None:
            aggregate.usage_reported = self

    class Settled(Aggregate.Event):
        """The shape every terminal event shares; never stored itself.

        The counts are the ones billed (`usage_source` says how they were obtained). `reported_usage`
        is the provider's own usage object when what was billed differs from it (sources
        `provider_invalid`, `provider_capped`): kept as it came, JSON-safe and bounded
        (`policies.usage.reported_record`), for audit only — costs are computed from the counts.

        A request crash recovery settles (outcome `interrupted`) has `usage_source` "unknown" and
        `cost_usd` None: its usage is unknown, neither $0 nor unpriced (ledgers written before
        recorded such a request with cost 0 and source "estimated"; reports count both as unknown).

        `cache_write_tokens` (within `prompt_tokens`) were written to the provider's prompt cache,
        `cache_write_1h_tokens` of them with a 1-hour lifetime; each is billed at its own rate.

        v2 added `reported_usage`; a stored v1 event loads with it None. v3 added the cache-write
        counts; an older event loads with them 0 (it was priced without them)."""

        class_version = 3

        provider: str | None
        served_model: str | None
        prompt_tokens: int
        completion_tokens: int
        cached_tokens: int
        usage_source: str
        cost_usd: Decimal | None
        price_ref: str | None
        latency_us: int
        overhead_us: int
        outcome: str
        reported_usage: dict[str, Any] | None = None
        cache_write_tokens: int = 0
        cache_write_1h_tokens: int = 0

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["reported_usage"] = None

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["cache_write_tokens"] = 0
            state["cache_write_1h_tokens"] = 0

        def apply(self, aggregate: Any) -> None:
            aggregate.outcome = self.outcome

    class CostRestated(Aggregate.Event):
        """A re-pricing changed this request's cost from `old_cost_usd` (None: unpriced) to
        `new_cost_usd`. It repeats what the projections need (tenant, model, received_at, operation
        from `Admitted`; provider, served model from the terminal event) so a fold never loads the
        request. Appended as a bare event after the terminal one; nothing stored before it changes.

        v2 added `operation` (the spend projection groups by it); a stored v1 event loads as "chat"
        (a restatement written before it of a request of another API is counted under "chat")."""

        class_version = 2

        request_id: str
        tenant: str
        model: str
        received_at: datetime
        provider: str
        served_model: str
        old_cost_usd: Decimal | None
        new_cost_usd: Decimal
        price_ref: str
        fingerprint: str
        repricing_id: str
        operation: str = "chat"

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["operation"] = "chat"

        def apply(self, aggregate: Any) -> None:
            aggregate.restatements += 1

    class SavingRestated(Aggregate.Event):
        """A re-pricing changed a cache hit's `saved_usd` from `old_saved_usd` (None: unpriced) to
        `new_saved_usd`; its cost stays $0 (a hit is never billed). Repeats what the projections need,
        like `CostRestated`, and counts as a restatement. v2 added `operation`, as `CostRestated`
        (only chat completions are cached, so a v1 event's "chat" is always right)."""

        class_version = 2

        request_id: str
        tenant: str
        model: str
        received_at: datetime
        provider: str
        served_model: str
        old_saved_usd: Decimal | None
        new_saved_usd: Decimal
        price_ref: str
        fingerprint: str
        repricing_id: str
        operation: str = "chat"

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["operation"] = "chat"

        def apply(self, aggregate: Any) -> None:
            aggregate.restatements += 1

    class Completed(Settled):
        pass

    class Failed(Settled):
        pass

    class Cancelled(Settled):
        pass

    class ServedFromCache(Settled):
        """The response cache answered (outcome `cache_hit`): the counts are the original answer's
        usage, `cost_usd` is 0 (a hit bills nothing), `provider`/`served_model` the deployment that
        produced the answer, and `saved_usd` what it would have cost there at the price in force
        (`price_ref`; None: unpriced). Re-pricing restates `saved_usd`, never `cost_usd`."""

        saved_usd: Decimal | None = None

    def __init__(
        self, request_id: str, tenant: str, model: str | None, stream: bool, operation: str = "chat", **_: Any
    ) -> None:
        self.request_id = request_id
        self.operation = operation
        self.tenant = tenant
        self.model = model
        self.stream = stream
        self.attempts = 0
        self.outcome: str | None = None
        self.restatements = 0
        self.usage_reported: Request.UsageReported | None = None

    @classmethod
    def admit(
        cls,
        request_id: str,
        tenant: str,
        model: str,
        stream: bool,
        reserved_usd: Decimal,
        received_at: datetime,
        id: uuid.UUID | None = None,
        instance: str | None = None,
        operation: str = "chat",
    ) -> Request:
        """`request_id` is the client's correlation id (any tenant may send any); `id`, the
        aggregate's own, is unique: the request's ledger id (a fresh uuid4 unless given);
        `instance`, the admitting process's instance id."""
        return cls._create(
            cls.Admitted,
            id=id or uuid.uuid4(),
            request_id=request_id,
            tenant=tenant,
            model=model,
            stream=stream,
            reserved_usd=reserved_usd,
            received_at=received_at,
            instance=instance,
            operation=operation,
        )

    @classmethod
    def reject(
        cls,
        request_id: str,
        tenant: str,
        model: str | None,
        stream: bool,
        reason: str,
        status: int,
        received_at: datetime,
        id: uuid.UUID | None = None,
        operation: str = "chat",
    ) -> Request:
        return cls._create(
            cls.Rejected,
            id=id or uuid.uuid4(),
            request_id=request_id,
            tenant=tenant,
            model=model,
            stream=stream,
            reason=reason,
            status=status,
            received_at=received_at,
            operation=operation,
        )

    def attempt_failed(
        self, provider: str, served_model: str, error_kind: str, status: int | None, retryable: bool
    ) -> None:
        self.trigger_event(
            self.AttemptFailed,
            provider=provider,
            served_model=served_model,
            error_kind=error_kind,
            status=status,
            retryable=retryable,
        )

    def report_usage(self, provider: str, served_model: str, usage_source: str, **counts: int) -> None:
        """Append `UsageReported`: the counts of `events.usage.Usage` (prompt, completion, cached, cache writes)."""
        self.trigger_event(
            self.UsageReported, provider=provider, served_model=served_model, usage_source=usage_source, **counts
        )

    def settle(self, kind: type[Settled], **fields: Any) -> None:
        """Append the terminal event `kind` (Completed, Failed or Cancelled) with `fields`."""
        self.trigger_event(kind, **fields)


def restate(
    aggregate_id: uuid.UUID,
    version: int,
    timestamp: datetime,
    kind: type[Request.CostRestated | Request.SavingRestated] = Request.CostRestated,
    **fields: Any,
) -> Request.CostRestated | Request.SavingRestated:
    """A bare `CostRestated` (or a cache hit's `SavingRestated`) for request `aggregate_id` at
    `version` (its terminal event's version plus the restatements it already has, plus one),
    without loading the aggregate."""
    return kind(originator_id=aggregate_id, originator_version=version, timestamp=timestamp, **fields)


TERMINAL = (Request.Completed, Request.Failed, Request.Cancelled, Request.ServedFromCache, Request.Rejected)
