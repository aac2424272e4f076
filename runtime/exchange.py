"""One client request as the runtime sees it: ids, trace, timings, and what served it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from policies.routing import Deployment
from runtime.tracing import Trace


@attrs.define
class Exchange:
    request_id: str
    trace: Trace
    started: float = attrs.field(factory=time.perf_counter)
    upstream_s: float = 0.0
    attempts: int = 0
    attempt_started: float = 0.0  # trio time the current attempt began (for a stream's total deadline)
    deployment: Deployment | None = None

    @contextmanager
    def waiting_upstream(self) -> Iterator[None]:
        """Time spent waiting on a provider does not count as gateway overhead."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.upstream_s += time.perf_counter() - began

    def upstream_headers(self) -> dict[str, str]:
        return {"traceparent": self.trace.traceparent, "x-request-id": self.request_id}

    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def overhead_ms(self) -> float:
        return round(max(time.perf_counter() - self.started - self.upstream_s, 0.0) * 1000, 3)

    def x_gateway(self, cost_usd: str | None = None) -> dict[str, Any]:
        deployment = self.deployment
        return {
            "provider": deployment.provider if deployment else None,
            "served_model": deployment.model if deployment else None,
            "request_id": self.request_id,
            "trace_id": self.trace.trace_id,
            "latency_ms": self.latency_ms(),
            "overhead_ms": self.overhead_ms(),
            "cost_usd": cost_usd,
            "cache_hit": False,
            "attempts": self.attempts,
        }
