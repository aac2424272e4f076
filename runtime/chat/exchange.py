"""One client request as the runtime sees it: ids, trace, timings. What served it is the router's `Attempt`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, Tracer, set_span_in_context

from policies.ratelimit import Quota
from policies.routing import Deployment
from runtime.chat.trace import Trace


@attrs.define
class Account:
    """A chat request's story as recorded, for the access log and the request counter (no content)."""

    tenant: str | None
    model: str | None
    stream: bool
    outcome: str
    provider: str | None = None
    failures: tuple[tuple[str, str], ...] = ()  # (provider, failure kind) per failed attempt
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: str | None = None


@attrs.define
class Exchange:
    """`request_id` is the client's correlation id (its `X-Request-ID`, shared by anyone who sends
    the same); `ledger_id` is the gateway's own, unique: the id of the request's `Request` aggregate,
    returned as `x_gateway.ledger_id` and the `x-tollgate-ledger-id` header once it is recorded."""

    request_id: str
    trace: Trace
    ledger_id: uuid.UUID = attrs.field(factory=uuid.uuid4)
    recorded: bool = False  # the ledger holds (or is about to hold) a Request under `ledger_id`
    started: float = attrs.field(factory=time.perf_counter)
    upstream_s: float = 0.0
    quotas: Mapping[str, Quota] = attrs.field(factory=dict)  # the tenant's quota levels at admission, for every answer
    span: Span = INVALID_SPAN  # the request's server span (tracing on), parent of `child` spans
    tracer: Tracer = attrs.field(factory=NoOpTracer)
    serving: Span | None = None  # the attempt that answered: ended at settlement, with usage and cost
    account: Account | None = None  # what the ledger was told of it, once settled or rejected (metrics, access log)
    forwarded: dict[str, str] = attrs.field(factory=dict)  # client headers every upstream call carries (anthropic-beta)

    def child(self, name: str, attributes: dict[str, Any]) -> Span:
        """A span under the request's server span (a no-op span when tracing is off); end it."""
        return self.tracer.start_span(name, context=set_span_in_context(self.span), attributes=attributes)

    @contextmanager
    def spanned(self, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
        span = self.child(name, attributes)
        try:
            yield span
        finally:
            span.end()

    @contextmanager
    def waiting_upstream(self) -> Iterator[None]:
        """Time spent waiting on a provider does not count as gateway overhead."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.upstream_s += time.perf_counter() - began

    def upstream_headers(self) -> dict[str, str]:
        return {**self.forwarded, "traceparent": self.trace.traceparent, "x-request-id": self.request_id}

    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def overhead_ms(self) -> float:
        return round(max(time.perf_counter() - self.started - self.upstream_s, 0.0) * 1000, 3)

    def x_gateway(
        self, served: Deployment, attempts: int, cost_usd: str | None = None, cache_hit: bool = False
    ) -> dict[str, Any]:
        """The gateway's account of an answer: who served it (after `attempts` attempts; for a cache
        hit, who produced the cached answer, after 0), timings, cost."""
        return {
            "provider": served.provider,
            "served_model": served.model,
            "request_id": self.request_id,
            "ledger_id": str(self.ledger_id),
            "trace_id": self.trace.trace_id,
            "latency_ms": self.latency_ms(),
            "overhead_ms": self.overhead_ms(),
            "cost_usd": cost_usd,
            "cache_hit": cache_hit,
            "attempts": attempts,
        }
