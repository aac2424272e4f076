"""The ledger side of one request: its `Request` aggregate, written as the request goes.

`open` queues `Admitted` without waiting (a full Journal refuses the request with 503, and the
reservation is handed back through `settle`); `attempt_failed` adds to the aggregate; `settle` checks
the reported usage against what the admission allowed (`policies.usage`: the counts recorded are the
ones billed, flagged in `usage_source` when they are not the provider's, whose own figures then go to
`reported_usage`), prices it at the deployment that served, replaces the tenant's reservation by the
cost, appends the one terminal event and waits until it is durable — exactly once, whatever path the
request ends on: it is the one place a request is settled. `reject` records a request refused before
dispatch.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import trio

from events.money import ZERO, usd_str
from events.request import Request
from events.usage import Usage
from policies.cost import PriceBook, Priced
from policies.routing import Deployment
from policies.usage import billed_usage, reported_record
from policies.validation import ChatRequest
from providers.errors import ProviderError
from providers.tokens import estimate_input_tokens, estimate_prompt_tokens
from runtime.actors.tenant import Admission
from runtime.chat.exchange import Account, Exchange
from runtime.errors import Overloaded
from runtime.ledger.books import TenantView
from runtime.ledger.journal import Journal, LedgerUnavailable
from runtime.metrics import Metrics

SettleReservation = Callable[[Admission, Decimal | None, int], Awaitable[None]]
"""Replace an admission's reservation by the actual cost and tokens (the tenant actors' `settle`)."""

log = logging.getLogger("tollgate.record")


def estimate_usage(chat: ChatRequest, content_bytes: int) -> Usage:
    """Usage when the provider reported none: the prompt estimate plus the bytes delivered (an
    embeddings request: its input's estimate, and no output)."""
    if chat.inputs is not None:
        return Usage(estimate_input_tokens(chat.body.get("input")), 0, 0, "estimated")
    completion = (content_bytes + 3) // 4
    return Usage(estimate_prompt_tokens(chat.body.get("messages") or []), completion, 0, "estimated")


NOTHING_CONSUMED = Usage(0, 0, 0, "estimated")
USAGE_UNKNOWN = Usage(0, 0, 0, "unknown")  # a request the gateway stopped under: recorded with cost None


def append_terminal(
    aggregate: Request,
    kind: type[Request.Settled],
    outcome: str,
    usage: Usage,
    priced: Priced,
    served: Deployment | None,
    *,
    latency_us: int = 0,
    overhead_us: int = 0,
    reported_usage: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Append a request's terminal event: the one place its fields are spelled out (settlement here,
    and the gateway's crash recovery, which settles what an earlier stop left open)."""
    aggregate.settle(
        kind,
        provider=served.provider if served else None,
        served_model=served.model if served else None,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        usage_source=usage.source,
        cost_usd=priced.cost_usd,
        price_ref=priced.price_ref,
        latency_us=latency_us,
        overhead_us=overhead_us,
        outcome=outcome,
        reported_usage=reported_usage,
        **extra,
    )


class RequestRecord:
    def __init__(
        self,
        exchange: Exchange,
        tenant: TenantView,
        chat: ChatRequest,
        received_at: datetime,
        admission: Admission,
        *,
        journal: Journal,
        prices: PriceBook,
        settle_reservation: SettleReservation,
        draining: trio.Event,
        metrics: Metrics,
        operation: str = "chat",
    ) -> None:
        self.admission = admission
        self.operation = operation
        self.metrics = metrics
        self._failures: list[tuple[str, str]] = []  # (provider, kind) per failed attempt
        self._journal = journal
        self._prices = prices
        self._settle_reservation = settle_reservation
        self._draining = draining
        self._exchange = exchange
        self.tenant = tenant
        self.chat = chat
        self.received_at = received_at
        self._aggregate: Request | None = None
        self._unsent: list[Any] = []  # a `UsageReported` the Journal had no room for: sent with the terminal event
        self.priced: Priced | None = None
        self.billed: Usage | None = None  # the usage settled: what the client is shown as its usage

    def interruption(self) -> str:
        """Why a request that did not finish ended, when nobody said: the gateway stopping, or its client."""
        return "shutdown" if self._draining.is_set() else "client_disconnected"

    @property
    def settled(self) -> bool:
        return self.priced is not None

    @property
    def corrected_usage(self) -> Usage | None:
        """The usage billed when it is not what the provider reported (invalid or beyond the
        reservation): what the client must be shown instead of the provider's figures."""
        billed = self.billed
        return billed if billed is not None and billed.source in ("provider_invalid", "provider_capped") else None

    async def open(self) -> None:
        """Queue `Admitted`. When the Journal refuses it (full: 503), the request is settled with
        nothing consumed — its reservation handed back, nothing recorded — and the refusal raised."""
        aggregate = Request.admit(
            self._exchange.request_id,
            self.tenant.name,
            self.chat.model,
            self.chat.stream,
            self.admission.reserved_usd,
            self.received_at,
            id=self._exchange.ledger_id,
            instance=self._journal.instance,
            operation=self.operation,
        )
        try:
            self._journal.submit(aggregate.collect_events())
        except BaseException:
            await self.settle(Request.Failed, "overloaded", None, served=None)
            raise
        self._exchange.recorded = True
        self._aggregate = aggregate

    def attempt_failed(self, deployment: Deployment, error: ProviderError) -> None:
        assert self._aggregate is not None
        self._failures.append((deployment.provider, error.kind))
        self._aggregate.attempt_failed(deployment.provider, deployment.model, error.kind, error.status, error.retryable)

    def usage_reported(self, usage: Usage, content_bytes: int, served: Deployment) -> None:
        """A stream's provider reported `usage` before the stream ended: queue `UsageReported` (once,
        without waiting), so a crash before the terminal event recovers the request with it. The counts
        are the ones that would be billed now (`policies.usage`, as `settle` bills them)."""
        aggregate = self._aggregate
        if aggregate is None or self.priced is not None or aggregate.usage_reported is not None:
            return
        billed = billed_usage(usage, estimate_usage(self.chat, content_bytes), self.admission.usage_bounds)
        aggregate.report_usage(
            served.provider,
            served.model,
            billed.source,
            prompt_tokens=billed.prompt_tokens,
            completion_tokens=billed.completion_tokens,
            cached_tokens=billed.cached_tokens,
            cache_write_tokens=billed.cache_write_tokens,
            cache_write_1h_tokens=billed.cache_write_1h_tokens,
        )
        events = aggregate.collect_events()
        try:
            self._journal.submit(events)
        except (Overloaded, LedgerUnavailable):
            self._unsent = [*self._unsent, *events]  # in order, before the terminal event

    async def settle(
        self,
        kind: type[Request.Settled],
        outcome: str,
        usage: Usage | None,
        content_bytes: int = 0,
        *,
        served: Deployment | None,
    ) -> Priced:
        """Settle the request and wait until its terminal event is committed. Idempotent. `usage` None
        means nothing was consumed; `content_bytes` (delivered to the client) feeds the estimate that
        replaces unusable reported usage; `served` is the deployment that served (or was last tried;
        None: no attempt was made), where the usage is priced."""
        if self.priced is not None:
            return self.priced
        deployment = served
        reported: Usage | None = None
        if usage is None:
            usage = NOTHING_CONSUMED
        else:
            reported = usage
            usage = billed_usage(reported, estimate_usage(self.chat, content_bytes), self.admission.usage_bounds)
            if usage.source in ("provider_invalid", "provider_capped"):
                log.warning(
                    "request %s: provider %s reported usage %s (prompt %r, completion %r, cached %r); billed "
                    "prompt %d, completion %d, cached %d",
                    self._exchange.request_id,
                    deployment.provider if deployment else None,
                    "that is not valid" if usage.source == "provider_invalid" else "beyond what was reserved",
                    reported.prompt_tokens,
                    reported.completion_tokens,
                    reported.cached_tokens,
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cached_tokens,
                )
        if deployment is not None and usage.total_tokens:
            priced = self._prices.price(deployment.provider, deployment.model, usage, self.received_at)
        else:
            priced = Priced(ZERO, None)  # nothing was consumed: nothing to charge
        self.priced = priced
        self._account(outcome, usage, priced, deployment)
        await self._settle_reservation(self.admission, priced.cost_usd, usage.total_tokens)
        if self._aggregate is None:
            return priced  # never recorded: the Journal refused its `Admitted`
        append_terminal(
            self._aggregate,
            kind,
            outcome,
            usage,
            priced,
            deployment,
            latency_us=int(self._exchange.latency_ms() * 1000),
            overhead_us=int(self._exchange.overhead_ms() * 1000),
            reported_usage=reported_record(reported, usage),
        )
        self.billed = usage
        events, self._unsent = [*self._unsent, *self._aggregate.collect_events()], []
        with self._exchange.spanned("tollgate.ledger.commit", {"tollgate.outcome": outcome}):
            await self._journal.commit(events)
        return priced

    async def serve_from_cache(self, usage: Usage, served: Deployment) -> Priced:
        """Settle as a cache hit: the original `usage`, produced by `served`; $0 billed, the
        reservation released, and what it would have cost at the price in force recorded as
        `saved_usd` (None: unpriced). Returns the saving. Not idempotent with `settle`: call one."""
        assert self._aggregate is not None and self.priced is None
        saved = self._prices.price(served.provider, served.model, usage, self.received_at)
        if not usage.total_tokens:
            saved = Priced(ZERO, saved.price_ref)
        self.priced = Priced(ZERO, saved.price_ref)
        self._account("cache_hit", usage, self.priced, served)
        await self._settle_reservation(self.admission, ZERO, 0)
        append_terminal(
            self._aggregate,
            Request.ServedFromCache,
            "cache_hit",
            usage,
            self.priced,
            served,
            latency_us=int(self._exchange.latency_ms() * 1000),
            overhead_us=int(self._exchange.overhead_ms() * 1000),
            saved_usd=saved.cost_usd,
        )
        self.billed = usage
        with self._exchange.spanned("tollgate.ledger.commit", {"tollgate.outcome": "cache_hit"}):
            await self._journal.commit(self._aggregate.collect_events())
        return saved

    def _account(self, outcome: str, usage: Usage, priced: Priced, served: Deployment | None) -> None:
        """Metrics and the exchange's account of the settlement: the exact Decimal cost, the billed tokens."""
        exchange, provider = self._exchange, served.provider if served else None
        chain = [*self._failures, *([(provider, "ok")] if provider and outcome == "ok" else [])]
        self.metrics.attempted(chain)
        self.metrics.settled(
            self.tenant.name,
            self.chat.model,
            provider,
            outcome,
            usage.prompt_tokens,
            usage.completion_tokens,
            priced.cost_usd,
            exchange.latency_ms() / 1000,
            exchange.overhead_ms() / 1000,
            "embeddings" if self.operation == "embeddings" else "chat",
        )
        if (span := exchange.serving) is not None:  # the attempt that answered ends with its account
            exchange.serving = None
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": usage.completion_tokens,
                    "tollgate.tenant": self.tenant.name,
                    "tollgate.outcome": outcome,
                    "tollgate.cost_usd": usd_str(priced.cost_usd) if priced.cost_usd is not None else "",
                }
            )
            span.end()
        exchange.account = Account(
            self.tenant.name,
            self.chat.model,
            self.chat.stream,
            outcome,
            provider,
            tuple(self._failures),
            usage.prompt_tokens,
            usage.completion_tokens,
            usd_str(priced.cost_usd) if priced.cost_usd is not None else None,
        )

    def cost_str(self) -> str | None:
        if self.priced is None or self.priced.cost_usd is None:
            return None
        return usd_str(self.priced.cost_usd)


async def reject(
    journal: Journal,
    exchange: Exchange,
    tenant: TenantView,
    asked: Any,
    reason: str,
    status: int,
    received_at: datetime,
    operation: str = "chat",
) -> None:
    """Record a request refused before dispatch (authentication failures of unknown keys excepted);
    `asked` is its decoded body (None or anything when it could not be read), whose model and stream
    flag are recorded when they are what they should be."""
    asked = asked if isinstance(asked, dict) else {}
    model = asked.get("model") if isinstance(asked.get("model"), str) else None
    stream = asked.get("stream") is True
    aggregate = Request.reject(
        exchange.request_id,
        tenant.name,
        model,
        stream,
        reason,
        status,
        received_at,
        id=exchange.ledger_id,
        operation=operation,
    )
    await journal.commit(aggregate.collect_events())
    exchange.recorded = True
    exchange.account = Account(tenant.name, model, stream, reason)
