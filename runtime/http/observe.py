"""What an operator's monitoring reads: `GET /metrics`, the live gauges behind it, the access log.

The gauges are read from `Gateway.statistics()` when scraped (nothing is kept twice). The access log is
one line per request on the `tollgate.access` logger, JSON or text (`[logging] format`), with the
request's account as the ledger has it — never a key or message content.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    Tracer,
    set_span_in_context,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from runtime.chat.exchange import Exchange
from runtime.chat.trace import Trace
from runtime.config import LoggingConfig
from runtime.errors import Unauthenticated
from runtime.gateway import Gateway

access_log = logging.getLogger("tollgate.access")
BREAKER_STATES = ("closed", "open", "half_open")


def live_metrics(gateway: Gateway) -> Iterator[Metric]:
    """Gauges of the gateway's state now: budgets, breakers, the Journal, the Projector, in flight."""
    metrics = gateway.metrics
    stats = gateway.statistics()
    spent = GaugeMetricFamily(
        "tollgate_budget_spent_usd", "Spend in the tenant's current budget period", labels=["tenant"]
    )
    reserved = GaugeMetricFamily(
        "tollgate_budget_reserved_usd", "Money reserved by requests in flight", labels=["tenant"]
    )
    limit = GaugeMetricFamily("tollgate_budget_limit_usd", "The tenant's budget per period", labels=["tenant"])
    sums: dict[str, list[Decimal]] = {}
    for tenant in stats.tenants:
        label = metrics.label_tenant(tenant.tenant)
        pair = sums.setdefault(label, [Decimal(0), Decimal(0)])
        pair[0] += Decimal(tenant.spent_usd)
        pair[1] += Decimal(tenant.reserved_usd)
    for label, (spent_usd, reserved_usd) in sums.items():
        spent.add_metric([label], float(spent_usd))
        reserved.add_metric([label], float(reserved_usd))
    for view in gateway.books.tenants():
        budget = view.tenant_policy.budget_usd
        if budget is not None and view.name in metrics.tenants:
            limit.add_metric([view.name], float(budget))
    yield from (spent, reserved, limit)
    breaker = GaugeMetricFamily(
        "tollgate_breaker_state", "1 for the provider's circuit breaker state", labels=["provider", "state"]
    )
    provider_in_flight = GaugeMetricFamily(
        "tollgate_provider_in_flight", "Attempts in flight per provider", labels=["provider"]
    )
    for provider in stats.providers:
        for state in BREAKER_STATES:
            breaker.add_metric([provider.name, state], 1.0 if provider.breaker == state else 0.0)
        provider_in_flight.add_metric([provider.name], provider.in_flight)
    yield from (breaker, provider_in_flight)
    journal = stats.journal
    yield GaugeMetricFamily("tollgate_journal_queue_depth", "Events queued for the Journal", value=journal.queued)
    yield GaugeMetricFamily("tollgate_journal_capacity", "The Journal queue's capacity", value=journal.capacity)
    yield GaugeMetricFamily("tollgate_journal_commits", "Commits since start", value=journal.commits)
    yield GaugeMetricFamily(
        "tollgate_journal_largest_batch", "Largest commit batch, in events", value=journal.largest_batch
    )
    yield GaugeMetricFamily(
        "tollgate_projector_lag_positions",
        "Ledger positions committed but not yet projected",
        value=max(journal.position - stats.projected_position, 0),
    )
    yield GaugeMetricFamily("tollgate_http_in_flight", "HTTP requests in flight", value=stats.http_in_flight)


def server_span(exchange: Exchange, tracer: Tracer, method: str, path: str) -> None:
    """Open the request's server span, continuing the client's trace (its `traceparent`), and make
    the exchange's trace that span: what goes upstream and back names it."""
    trace = exchange.trace
    context = Context()
    if trace.parent_id is not None:
        parent = SpanContext(int(trace.trace_id, 16), int(trace.parent_id, 16), True, TraceFlags(int(trace.flags, 16)))
        context = set_span_in_context(NonRecordingSpan(parent))
    span = tracer.start_span(
        f"{method} {path}",
        context=context,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path, "tollgate.request_id": exchange.request_id},
    )
    ours = span.get_span_context()
    if ours.is_valid:
        exchange.trace = Trace(f"{ours.trace_id:032x}", f"{ours.span_id:016x}", trace.flags, trace.parent_id)
    exchange.span = span
    exchange.tracer = tracer


def _end_span(exchange: Exchange, status: int, disconnected: str | None) -> None:
    span = exchange.span
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    account = exchange.account
    if account is not None:
        span.set_attribute("tollgate.tenant", account.tenant or "")
        span.set_attribute("tollgate.outcome", account.outcome)
        if account.cost_usd is not None:
            span.set_attribute("tollgate.cost_usd", account.cost_usd)
    if disconnected is not None:
        span.set_attribute("tollgate.client_disconnected", True)
    if status >= 500:
        span.set_status(StatusCode.ERROR)
    span.end()


def request_ended(
    gateway: Gateway, scope: dict[str, Any], exchange: Exchange | None, status: int, disconnected: str | None
) -> None:
    """Count a chat request and write its access-log line (every HTTP request gets one)."""
    account = exchange.account if exchange is not None else None
    if exchange is not None:
        _end_span(exchange, status, disconnected)
    if scope.get("path") == "/v1/chat/completions":
        if account is not None:
            gateway.metrics.finished(account.tenant, account.model, account.provider, account.outcome, status)
        else:
            gateway.metrics.finished(None, None, None, "unauthenticated" if status == 401 else "error", status)
    settings = gateway.config.logging
    if not settings.access or not access_log.isEnabledFor(logging.INFO):
        return
    fields = _access_fields(scope, exchange, status, disconnected)
    if settings.format == "json":
        line = json.dumps(fields, separators=(",", ":"))
    else:
        line = " ".join([f"{key}={_text(value)}" for key, value in fields.items() if key != "time"])
    handler = _ours()
    if handler is not None:  # the line as the handler's Formatter would write it, without a LogRecord
        handler.write_line(line if settings.format == "json" else f"{_asctime()} INFO {access_log.name}: {line}")
    else:
        access_log.info(line, extra={"access": fields})


def _access_fields(
    scope: dict[str, Any], exchange: Exchange | None, status: int, disconnected: str | None
) -> dict[str, Any]:
    if exchange is None:
        return {
            "time": _now(),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "request_id": None,
            "trace_id": None,
            "latency_ms": None,
            "overhead_ms": None,
            "client_disconnected": disconnected is not None,
        }
    fields: dict[str, Any] = {
        "time": _now(),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": status,
        "request_id": exchange.request_id,
        "trace_id": exchange.trace.trace_id,
        "latency_ms": exchange.latency_ms(),
        "overhead_ms": exchange.overhead_ms(),
    }
    account = exchange.account
    if account is not None:
        fields["tenant"] = account.tenant
        fields["model"] = account.model
        fields["provider"] = account.provider
        fields["outcome"] = account.outcome
        fields["stream"] = account.stream
        fields["attempts"] = len(account.failures) + (1 if account.outcome == "ok" else 0)
        fields["failures"] = [f"{provider}: {kind}" for provider, kind in account.failures]
        fields["prompt_tokens"] = account.prompt_tokens
        fields["completion_tokens"] = account.completion_tokens
        fields["cost_usd"] = account.cost_usd
    fields["client_disconnected"] = disconnected is not None
    return fields


_utc: list[Any] = [-1, ""]  # the last whole second formatted, and its text
_local: list[Any] = [-1, ""]


def _now() -> str:
    """`datetime.now(UTC).isoformat(timespec="milliseconds")`, with the seconds formatted once a second."""
    now = time.time()
    second = int(now)
    if second != _utc[0]:
        _utc[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_utc[1]}.{int((now - second) * 1000):03d}+00:00"


def _asctime() -> str:
    """logging.Formatter's default `%(asctime)s` (local time, `,mmm`), formatted once a second."""
    now = time.time()
    second = int(now)
    if second != _local[0]:
        _local[:] = [second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))]
    return f"{_local[1]},{int((now - second) * 1000):03d}"


def _text(value: Any) -> str:
    if isinstance(value, list):
        return json.dumps(",".join(value)) if value else "-"
    if value is None:
        return "-"
    text = str(value)
    return json.dumps(text) if " " in text else text


class AccessLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's own handler (`configure_logging` installs it): a line is the whole message, so
    `request_ended` hands it the finished line and skips the LogRecord and the Formatter; records that
    come through logging anyway (another writer of `tollgate.access`) are written the usual way."""

    def write_line(self, line: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(line + "\n")
                self.flush()
            except Exception:  # logging's own rule: a failing log write never fails the request
                self.handleError(logging.makeLogRecord({"msg": line, "name": access_log.name}))


def _ours() -> AccessLogHandler | None:
    """Our handler when it is the access log's only way out (no filters, no propagation), else None."""
    handlers = access_log.handlers
    if len(handlers) == 1 and not access_log.propagate and not access_log.filters:
        handler = handlers[0]
        if isinstance(handler, AccessLogHandler) and not handler.filters and handler.level <= logging.INFO:
            return handler
    return None


def configure_logging(settings: LoggingConfig, stream: TextIO | None = None) -> None:
    """`tollgate serve`'s logging, in one place: the level, the access log's own handler (a JSON line
    is the whole line), and httpx/httpcore's one INFO line per upstream call silenced."""
    logging.getLogger().setLevel(settings.level)
    logging.getLogger("tollgate").setLevel(settings.level)
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    handler = AccessLogHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(message)s" if settings.format == "json" else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    )
    access_log.handlers[:] = [handler]
    access_log.propagate = False
    # one line per request whatever `level` says of the rest; none at all with `access = false`
    access_log.setLevel(logging.INFO if settings.access else logging.CRITICAL + 1)


def _admin(gateway: Gateway, scope: dict[str, Any]) -> bool:
    header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"authorization"), None)
    try:
        gateway.admin.check(header)
    except Unauthenticated:
        return False
    return True


def metrics_app(gateway: Gateway) -> Any:
    """The ASGI app `[metrics] port` serves: `GET /metrics` and nothing else."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        found = scope.get("path") == "/metrics" and scope.get("method") in ("GET", "HEAD")
        status = 200 if found else 404
        if found and gateway.config.metrics.require_admin_key and not _admin(gateway, scope):
            status = 401
        body = generate_latest(gateway.metrics.registry) if status == 200 else b"not found\n"
        if status == 401:
            body = b"this endpoint needs the admin key: 'Authorization: Bearer <admin key>'\n"
        content_type = CONTENT_TYPE_LATEST if status == 200 else "text/plain; charset=utf-8"
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
