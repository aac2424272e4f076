"""The gateway's Prometheus instruments: one `Metrics` per gateway, handed down as a collaborator.

A leaf (it imports nothing of runtime/): chat/ records into it at settlement, the HTTP edge when a
request ends, the tenant actor when a budget threshold is crossed; `GET /metrics` exposes its
registry. **Bounded cardinality**: tenant and model labels take only configured names (`label_tenant`,
`label_model`); anything else is `other`. Provider names come from the config, outcomes and failure
kinds from fixed vocabularies, statuses from the HTTP codes the gateway answers with.

Cost is kept as exact `Decimal` sums per label set and converted to a float only when scraped, so
`tollgate_cost_usd_total` equals the ledger's sum of `cost_usd` (up to that one conversion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from threading import Lock

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

OTHER = "other"
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)  # GenAI semconv advice
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class _CostCollector(Collector):
    """A USD counter (`tollgate_cost_usd_total{tenant, model, provider}` by default) from exact Decimal sums."""

    def __init__(
        self, name: str = "tollgate_cost_usd", help_: str = "Cost charged to tenants, in USD (the ledger's exact sums)"
    ) -> None:
        self._name, self._help = name, help_
        self._sums: dict[tuple[str, str, str], Decimal] = {}
        self._lock = Lock()  # scrapes may come from prometheus-client's own server thread

    def add(self, labels: tuple[str, str, str], cost: Decimal) -> None:
        with self._lock:
            self._sums[labels] = self._sums.get(labels, Decimal(0)) + cost

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._help, labels=["tenant", "model", "provider"])
        with self._lock:
            sums = list(self._sums.items())
        for labels, total in sums:
            family.add_metric(list(labels), float(total))
        yield family


class Metrics:
    def __init__(self, tenants: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        self.tenants = frozenset(tenants)
        self.models = frozenset(models)
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "tollgate_requests",
            "Chat completion requests, by how they ended",
            ["tenant", "model", "provider", "outcome", "status"],
            registry=registry,
        )
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens billed per request (GenAI semantic conventions)",
            ["gen_ai_token_type", "gen_ai_provider_name", "gen_ai_request_model", "tenant"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of chat requests as the client sees them (GenAI semantic conventions)",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request to the first streamed token (GenAI semantic conventions)",
            ["gen_ai_provider_name", "gen_ai_request_model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "tollgate_overhead_seconds",
            "Time a request spent in the gateway itself (its latency minus time waiting on providers)",
            ["provider"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.attempts = Counter(
            "tollgate_attempts",
            "Provider attempts, by result (ok, or the failure's kind)",
            ["provider", "result"],
            registry=registry,
        )
        self.retries = Counter(
            "tollgate_retries",
            "Attempts that retried the provider of the attempt before",
            ["provider"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "tollgate_fallbacks", "Attempts that fell back to another provider", ["provider"], registry=registry
        )
        self.budget_alerts = Counter(
            "tollgate_budget_alerts",
            "Budget thresholds crossed (50, 80, 100 % of a period's budget)",
            ["tenant", "threshold"],
            registry=registry,
        )
        self.alert_deliveries = Counter(
            "tollgate_alert_deliveries",
            "Budget alert webhook deliveries, by result (delivered, failed)",
            ["result"],
            registry=registry,
        )
        self.journal_commit = Histogram(
            "tollgate_journal_commit_seconds",
            "Time to write one Journal batch to the ledger",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.journal_batch = Histogram(
            "tollgate_journal_batch_events",
            "Events per Journal batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
        self.cache = Counter(
            "tollgate_cache_lookups",
            "Chat requests by what the response cache did (hit, miss, bypass)",
            ["tenant", "result"],
            registry=registry,
        )
        self._cost = _CostCollector()
        registry.register(self._cost)
        self._saved = _CostCollector(
            "tollgate_cache_saved_usd", "What cache hits would have cost at the price in force, in USD"
        )
        registry.register(self._saved)
        self._live: Collector | None = None
        # labelled children looked up once per label set: prometheus-client's `labels()` validates
        # and locks on every call, the request path calls it half a dozen times per request
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self._settled: dict[tuple[str, str, str, str, str], tuple[Histogram, Histogram, Histogram, Histogram]] = {}
        self._first_token: dict[tuple[str, str], Histogram] = {}
        self.url: str | None = None  # where `[metrics] port` serves, once bound

    def label_tenant(self, name: str | None) -> str:
        return name if name is not None and name in self.tenants else OTHER

    def label_model(self, name: str | None) -> str:
        return name if name is not None and name in self.models else OTHER

    def settled(
        self,
        tenant: str,
        model: str,
        provider: str | None,
        outcome: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: Decimal | None,
        latency_s: float,
        overhead_s: float,
        operation: str = "chat",
    ) -> None:
        """A request settled (`RequestRecord.settle`, the one place): its tokens, cost and timings.
        `operation` is OpenTelemetry's `gen_ai.operation.name`: "chat" (Messages and Responses
        requests are chats too) or "embeddings"."""
        labels = (self.label_tenant(tenant), self.label_model(model), provider or "none")
        key = (*labels, outcome, operation)
        children = self._settled.get(key)
        if children is None:
            tenant_label, model_label, provider_label = labels
            children = self._settled[key] = (
                self.tokens.labels("input", provider_label, model_label, tenant_label),
                self.tokens.labels("output", provider_label, model_label, tenant_label),
                self.duration.labels(operation, provider_label, model_label, outcome),
                self.overhead.labels(provider_label),
            )
        if prompt_tokens or completion_tokens:
            children[0].observe(prompt_tokens)
            children[1].observe(completion_tokens)
        if cost_usd:
            self._cost.add(labels, cost_usd)
        children[2].observe(latency_s)
        children[3].observe(overhead_s)

    def cache_used(self, tenant: str, model: str, provider: str | None, result: str, saved_usd: Decimal | None) -> None:
        """The response cache answered (`hit`, with what it saved when priced), or not (`miss`, `bypass`)."""
        self.cache.labels(self.label_tenant(tenant), result).inc()
        if saved_usd:
            self._saved.add((self.label_tenant(tenant), self.label_model(model), provider or "none"), saved_usd)

    def attempted(self, chain: Iterable[tuple[str, str]]) -> None:
        """A request's attempts in order, each `(provider, result)`: a retry repeats the provider
        before it, a fallback changes it."""
        before: str | None = None
        for provider, result in chain:
            self._child(self.attempts, provider, result).inc()
            if before is not None:
                self._child(self.retries if provider == before else self.fallbacks, provider).inc()
            before = provider

    def finished(self, tenant: str | None, model: str | None, provider: str | None, outcome: str, status: int) -> None:
        """A chat request ended at the HTTP edge, with the status it was answered with."""
        self._child(
            self.requests, self.label_tenant(tenant), self.label_model(model), provider or "none", outcome, str(status)
        ).inc()

    def _child(self, metric: Counter, *labels: str) -> Counter:
        """`metric.labels(*labels)`, looked up once per label set (the labels are bounded, so is this)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def first_token(self, provider: str, model: str, seconds: float) -> None:
        key = (provider, self.label_model(model))
        child = self._first_token.get(key)
        if child is None:
            child = self._first_token[key] = self.time_to_first_token.labels(*key)
        child.observe(seconds)

    def journal_wrote(self, seconds: float, events: int) -> None:
        self.journal_commit.observe(seconds)
        self.journal_batch.observe(events)

    def threshold_crossed(self, tenant: str, threshold: int) -> None:
        self.budget_alerts.labels(self.label_tenant(tenant), str(threshold)).inc()

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """The collector read at scrape time (the gateway's statistics: queues, breakers, budgets);
        a second call replaces the first (an app made again for the same gateway)."""

        class _Live(Collector):
            def collect(self) -> Iterable[Metric]:
                return collect()

        if self._live is not None:
            self.registry.unregister(self._live)
        self._live = _Live()
        self.registry.register(self._live)
