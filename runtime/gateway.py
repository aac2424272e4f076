"""`open_gateway(config)`: the ledger, the root nursery, its supervised actors, the `Gateway` handle.

Start-up: open the ledger and its projections, let the projections catch up with the log tail, load
the books (tenants, keys, prices) from them, start the Journal and the Projector, record requests a
crash left unsettled as `interrupted`, reconcile `[[tenants]]` and `[pricing]` from the config
(only differences are appended), then start one supervised actor per provider.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from events.money import ZERO
from events.pricelist import PRICE_LIST_ID, PriceList
from events.projections import Projections, instance_used, open_leases, spend_report
from events.provider import Provider, provider_id
from events.request import Request
from events.store import MEMORY, Instance, LedgerStore
from events.tenant import Tenant, tenant_id
from events.usage import Usage
from policies.cost import UNPRICED, Priced, price_fields
from policies.leases import spread
from policies.periods import period_bounds
from policies.routing import Deployment, RoutingIndex
from providers.anthropic import DEFAULT_BASE_URL, AnthropicUpstream
from providers.openai import OpenAIUpstream
from providers.simulator import Simulator
from providers.upstream import Upstream
from runtime.actors.alerts import AlertSender
from runtime.actors.provider import ProviderHandle, ProviderStatistics
from runtime.actors.supervisor import supervise
from runtime.actors.tenant import TenantActors, TenantStatistics
from runtime.auth import DEMO_KEY, AdminKey, hash_key, new_key
from runtime.chat.record import USAGE_UNKNOWN, append_terminal
from runtime.config import Config, ProviderConfig
from runtime.ledger.aggregates import Aggregates
from runtime.ledger.audit import FoundEvent, find_events
from runtime.ledger.books import Books
from runtime.ledger.breakers import BreakerLog
from runtime.ledger.cache import CacheStore, ResponseCache
from runtime.ledger.conversations import Conversations
from runtime.ledger.instances import HEARTBEAT_S, Instances
from runtime.ledger.journal import Journal, JournalStatistics, LedgerUnavailable
from runtime.ledger.leases import Leases
from runtime.ledger.projector import Projector, projections_path
from runtime.metrics import Metrics
from runtime.telemetry import Telemetry

log = logging.getLogger("tollgate")


def build_upstream(provider: ProviderConfig, environ: Mapping[str, str]) -> Upstream:
    if provider.kind == "simulator":
        return Simulator(provider.name, provider.simulator)
    api_key = environ.get(provider.api_key_env) if provider.api_key_env else None
    if provider.kind == "anthropic":
        return AnthropicUpstream(
            provider.name,
            provider.base_url or DEFAULT_BASE_URL,
            api_key,
            provider.timeouts,
            provider.max_concurrency,
            provider.anthropic.default_max_tokens,
            provider.headers,
        )
    assert provider.base_url is not None  # checked by check_config
    return OpenAIUpstream(
        provider.name,
        provider.base_url,
        api_key,
        provider.timeouts,
        provider.max_concurrency,
        provider.headers,
        responses=provider.responses,
    )


@attrs.frozen
class GatewayStatistics:
    ready: bool
    draining: bool
    providers: tuple[ProviderStatistics, ...]
    journal: JournalStatistics
    projected_position: int
    http_in_flight: int
    tenants: tuple[TenantStatistics, ...]
    instance: str
    live_instances: int  # as of this process's last heartbeat: what its budget leases and rate-limit shares divide by


@attrs.define
class Gateway:
    config: Config
    providers: dict[str, ProviderHandle]
    routes: RoutingIndex
    books: Books
    journal: Journal
    projector: Projector
    store: LedgerStore
    aggregates: Aggregates
    """The live `Tenant`, `PriceList` and `Provider` aggregates: their one door for changes."""
    breakers: BreakerLog
    """Breaker transitions on their way to the ledger, in order."""
    admin: AdminKey
    metrics: Metrics
    instances: Instances
    """This process's instance id and heartbeat; the live instances on this ledger."""
    leases: Leases
    """Budget leases (`BudgetSlices`) taken, returned and expired by this instance."""
    generated_admin_key: str | None = None
    alerts: AlertSender | None = None
    telemetry: Telemetry = attrs.field(factory=Telemetry)
    """Traces (`[tracing]`): the HTTP edge opens each request's server span with its tracer."""
    tenant_actors: TenantActors | None = None
    cache: ResponseCache | None = None
    """The response cache, a side table of the ledger's database (`runtime.ledger.cache`)."""
    conversations: Conversations | None = None
    """Stored Responses API turns (`runtime.ledger.conversations`), opened with the ledger."""
    http_in_flight: int = 0
    clock: Callable[[], datetime] = attrs.field(default=lambda: datetime.now(UTC))
    """Wall time for money: received_at, prices in force, budget periods (tests pass a virtual one)."""
    ready: bool = False
    draining: trio.Event = attrs.field(factory=trio.Event)
    repricing: trio.Lock = attrs.field(factory=trio.Lock)
    """Held by a re-pricing run (`runtime.ledger.reprice`): one at a time, so restatement versions never collide."""

    def begin_drain(self) -> None:
        self.ready = False
        self.draining.set()

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            ready=self.ready,
            draining=self.draining.is_set(),
            providers=tuple(handle.statistics() for handle in self.providers.values()),
            journal=self.journal.statistics(),
            projected_position=self.projector.position,
            http_in_flight=self.http_in_flight,
            tenants=tuple(self.tenant_actors.statistics()) if self.tenant_actors else (),
            instance=self.instances.instance,
            live_instances=self.instances.live_count,
        )

    def reserved_usd(self, tenant: str) -> Decimal:
        """Money reserved by this tenant's requests in flight."""
        return sum(
            (Decimal(row["reserved_usd"]) for row in self.books.open_requests() if row["tenant"] == tenant), ZERO
        )

    async def spent(self, tenant: str, start: datetime, end: datetime) -> Decimal:
        """Settled spend of `tenant` for received_at in [start, end) (UTC-day aligned periods)."""
        spent, _ = await self.spent_at(tenant, start, end)
        return spent

    async def spent_at(self, tenant: str, start: datetime, end: datetime) -> tuple[Decimal, int]:
        """`spent`, and the ledger position the projections it was read from reflect (read in the same
        step: a tenant actor counts what is committed after it from the commit hook)."""
        last_day = (end - timedelta(microseconds=1)).date().isoformat()

        report = partial(
            spend_report, tenant=tenant, day_from=start.date().isoformat(), day_to=last_day, group_by=("tenant",)
        )
        rows, position = await self.projector.query(lambda p: p.read_at(report))
        return (Decimal(rows[0]["cost_usd"]) if rows else ZERO), position

    def output_limit(self, model: str, deployments: tuple[Deployment, ...]) -> int:
        """The most output tokens a request without max_tokens may produce (for reservations)."""
        alias = self.config.models.get(model)
        if alias is not None and alias.max_output_tokens is not None:
            return alias.max_output_tokens
        limits = [self.providers[d.provider].config.max_output_tokens for d in deployments]
        return max(limits, default=4096)

    @property
    def tenants(self) -> TenantActors:
        assert self.tenant_actors is not None
        return self.tenant_actors

    async def events_page(
        self,
        after: int,
        limit: int,
        tenant: str | None,
        request_id: str | None,
        scan_limit: int,
        ledger_id: uuid.UUID | None = None,
    ) -> tuple[list[FoundEvent], int]:
        """Events after `after` matching the filters, at most `limit`; and where to continue."""
        return await trio.to_thread.run_sync(
            partial(find_events, self.store, after, limit, tenant, request_id, scan_limit, ledger_id),
            limiter=self.journal.limiter,
        )

    async def load(self, aggregate_id: uuid.UUID, kind: type[Any]) -> Any:
        """Read an aggregate from the store (through the Journal's door: one thread at a time)."""
        return await trio.to_thread.run_sync(self.store.get, aggregate_id, kind, limiter=self.journal.limiter)


def _config_tenant_changes(gateway: Gateway, environ: Mapping[str, str], existing: dict[str, Tenant]) -> list[Any]:
    books = gateway.books
    changed: list[Any] = []
    named = set()
    for tenant in gateway.config.tenants:
        named.add(tenant.name)
        digest = tenant.api_key_sha256 or hash_key(environ[tenant.api_key_env or ""])
        if digest == hash_key(DEMO_KEY):
            log.warning(
                "tenant %r uses the demo key published in the README: anyone can use it; "
                "replace it before exposing this gateway",
                tenant.name,
            )
        policy = tenant.policy().to_record()
        aggregate = existing.get(str(tenant_id(tenant.name)))
        if aggregate is None:
            owner = books.key_owner(digest)
            if owner is not None:
                log.error("tenant %r: its key already belongs to another tenant; not registered", tenant.name)
                continue
            aggregate = Tenant.register(tenant.name, digest, policy, "config")
        else:
            if aggregate.key_sha256 != digest:
                aggregate.issue_key(digest, None)
            aggregate.update({k: v for k, v in policy.items() if aggregate.policy.get(k) != v})
        if tenant.enabled:
            aggregate.enable()
        else:
            aggregate.disable()
        changed.append(aggregate)
    for aggregate in existing.values():
        if aggregate.source == "config" and aggregate.name not in named:
            aggregate.disable()
            changed.append(aggregate)
    return changed


def _config_price_changes(gateway: Gateway, price_list: PriceList, now: datetime) -> None:
    for key, price in gateway.config.pricing.items():
        entry = gateway.books.prices.entry_at(key, now)
        if entry is None or entry.price != price:
            price_list.set_price(key, now, "config", **price_fields(price))


async def _start_ledger(gateway: Gateway, environ: Mapping[str, str]) -> None:
    """Recover interrupted requests and reconcile the config into the ledger."""
    now = gateway.clock()
    events: list[Any] = []
    events.extend(await _orphans(gateway, await gateway.instances.live(now)))
    if events:
        log.warning("recorded %d request(s) left unsettled by an earlier stop as interrupted", len(events))
    existing = {}
    for view in gateway.books.tenants():
        aggregate = await gateway.load(uuid.UUID(view.id), Tenant)
        if aggregate is not None:
            existing[view.id] = aggregate
    tenants = {str(a.id): a for a in _config_tenant_changes(gateway, environ, existing)}
    for aggregate in tenants.values():
        events.extend(aggregate.collect_events())
    providers = []
    for name, handle in gateway.providers.items():
        provider = await gateway.load(provider_id(name), Provider)
        if provider is None:
            provider = Provider.register(name)
            events.extend(provider.collect_events())
        providers.append(provider)
        handle.on_transition = partial(gateway.breakers.record, name)
    price_list = await gateway.load(PRICE_LIST_ID, PriceList) or PriceList.open()
    _config_price_changes(gateway, price_list, now)
    events.extend(price_list.collect_events())
    if events:
        await gateway.journal.commit(events)
    gateway.aggregates.committed([*existing.values(), *tenants.values(), price_list, *providers])  # only now


async def _orphans(gateway: Gateway, live: set[str]) -> list[Any]:
    """`interrupted` for each open request whose instance is not live (None: a single-process
    gateway's, from before instances; this process's own are never orphans)."""
    events: list[Any] = []
    for row in gateway.books.open_requests():
        if row.get("instance") in live or row.get("instance") == gateway.instances.instance:
            continue
        request = await gateway.load(uuid.UUID(row["id"]), Request)
        if request is not None and request.outcome is None:
            append_terminal(request, Request.Failed, "interrupted", *_recovered_usage(gateway, request, row))
            events.extend(request.collect_events())
    return events


def _recovered_usage(
    gateway: Gateway, request: Request, row: dict[str, Any]
) -> tuple[Usage, Priced, Deployment | None]:
    """What an interrupted request is settled with: unknown usage (cost None), unless its provider
    had reported usage before the stop (`Request.UsageReported`), priced as it would have been."""
    reported = request.usage_reported
    if reported is None:
        return USAGE_UNKNOWN, UNPRICED, None
    usage = Usage(
        reported.prompt_tokens,
        reported.completion_tokens,
        reported.cached_tokens,
        reported.usage_source,  # type: ignore[arg-type]  # a UsageSource, as it was recorded
        cache_write_tokens=reported.cache_write_tokens,
        cache_write_1h_tokens=reported.cache_write_1h_tokens,
    )
    served = Deployment(reported.provider, reported.served_model)
    if not usage.total_tokens:
        return usage, Priced(ZERO, None), served
    received_at = datetime.fromisoformat(row["received_at"])
    return usage, gateway.books.prices.price(served.provider, served.model, usage, received_at), served


async def _recover_orphans(gateway: Gateway) -> None:
    """Each heartbeat: settle as `interrupted` the open requests of instances that stopped beating
    (kill -9), so their reservations do not stay open. Two survivors may race: the second append
    conflicts on the request's version and is dropped (the first one recorded it). A heartbeat that
    lands while the previous one's recovery runs is not missed (`next_beat`)."""
    seen = gateway.instances.beats
    while True:
        seen = await gateway.instances.next_beat(seen)
        live = await gateway.instances.live(gateway.clock())
        for event in await _orphans(gateway, live):
            try:
                await gateway.journal.commit([event])
            except LedgerUnavailable:
                log.info("request %s: recovered by another instance", event.originator_id)
        try:
            await _expire_leases(gateway, live)
        except LedgerUnavailable:
            log.warning("could not expire the budget leases of gone instances; next heartbeat", exc_info=True)
        await gateway.instances.forget_gone(gateway.clock())


def _instance_used(
    projections: Projections, *, tenant: str, instance: str, period: str, days: tuple[str, str]
) -> Decimal:
    return instance_used(projections, tenant, instance, period, *days)


async def _expire_leases(gateway: Gateway, live: set[str]) -> None:
    """`LeaseExpired` for each open budget lease of an instance that is not live, once past its
    `expires_at` (at once when its process is known gone from this host): used = what that instance
    settled for the tenant in the period (less what its closed leases there used) plus what its
    requests still open reserve, spread over its open leases oldest first, each capped by its amount
    — conservative: it frees no money that may yet be spent. Two survivors may race: the second
    finds the lease closed and appends nothing."""
    now = gateway.clock()
    rows = await gateway.projector.query(open_leases)  # caught up: the gone instance's last settlements too
    if not rows:
        return
    dead = await gateway.instances.dead_here()  # a process gone from this host: no need to wait
    gone: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["instance"] in live or row["instance"] == gateway.instances.instance:
            continue
        if datetime.fromisoformat(row["expires_at"]) > now and row["instance"] not in dead:
            continue
        gone.setdefault((row["tenant"], row["period"], row["instance"]), []).append(row)
    for (tenant, period, instance), held in gone.items():
        start = datetime.fromisoformat(period)
        view = gateway.books.tenant(str(tenant_id(tenant)))
        _, end = period_bounds(view.tenant_policy.budget_period if view is not None else "month", start)
        last_day = (end - timedelta(microseconds=1)).date().isoformat()
        first_day = start.date().isoformat()
        settled = await gateway.projector.query(
            partial(_instance_used, tenant=tenant, instance=instance, period=period, days=(first_day, last_day))
        )
        reserved = sum(
            (
                Decimal(r["reserved_usd"])
                for r in gateway.books.open_requests()
                if r["tenant"] == tenant and r.get("instance") == instance and r["received_at"] >= period
            ),
            ZERO,
        )
        amounts = [Decimal(row["amount_usd"]) for row in held]
        for row, used_usd in zip(held, spread(settled + reserved, amounts), strict=True):
            await gateway.leases.expire(tenant, start, row["lease"], used_usd)
            log.warning(
                "budget lease %s of gone instance %s expired (tenant %r, used $%s of $%s)",
                row["lease"],
                instance,
                tenant,
                used_usd,
                row["amount_usd"],
            )


EXPIRY_INTERVAL_S = 3600.0


async def _expire_conversations(conversations: Conversations, clock: Callable[[], datetime]) -> None:
    """Delete stored Responses turns past their retention (reads already ignore them)."""
    while True:
        await trio.sleep(min(EXPIRY_INTERVAL_S, conversations.retention_s))
        await conversations.expire(clock().timestamp())


def _open_ledger(path: str, password: str = "") -> tuple[LedgerStore, Projections]:
    from runtime.ledger.projector import catch_up

    store = LedgerStore(path, password)
    projections = Projections(projections_path(path))
    catch_up(store, projections)
    return store, projections


@asynccontextmanager
async def open_gateway(
    config: Config, environ: Mapping[str, str] | None = None, clock: Callable[[], datetime] | None = None
) -> AsyncIterator[Gateway]:
    """`clock` gives the wall time tenant actors use for budget periods (tests pass a virtual one)."""
    environ = os.environ if environ is None else environ
    admin_key = environ.get(config.admin.api_key_env)
    generated = None
    if not admin_key:
        admin_key = generated = new_key("tga-")
    store, projections = await trio.to_thread.run_sync(
        _open_ledger, config.ledger.location, config.ledger.password(environ)
    )
    side = config.ledger.side_path
    if side != MEMORY:  # beside a PostgreSQL ledger the side tables' file is new on a new machine
        await trio.to_thread.run_sync(partial(Path(side).parent.mkdir, parents=True, exist_ok=True))
    cache_store = await trio.to_thread.run_sync(CacheStore, side, config.cache.max_bytes)
    books = Books(projections)
    projector = Projector(store, projections)
    instance = Instance(uuid.uuid4().hex[:12], os.getpid(), socket.gethostname(), datetime.now(UTC), datetime.now(UTC))

    def on_commit(recorded: list[Any]) -> None:
        aggregates.observed(recorded)
        if gateway.tenant_actors is not None:  # before the Books fold: it reads their open requests
            gateway.tenant_actors.restated(recorded)
        books.apply(recorded)
        projector.feed(recorded)

    metrics = Metrics((tenant.name for tenant in config.tenants), config.routing_index().models())
    journal = Journal(
        store, on_commit, observe=metrics.journal_wrote, instance=instance.instance, poll_s=config.ledger.poll_s
    )
    journal.followed = projections.position  # where the Books were loaded: follow the log from there
    handles = {
        provider.name: ProviderHandle(provider, build_upstream(provider, environ)) for provider in config.providers
    }
    aggregates = Aggregates(store, journal)
    gateway = Gateway(
        config=config,
        providers=handles,
        routes=config.routing_index(),
        books=books,
        journal=journal,
        projector=projector,
        store=store,
        aggregates=aggregates,
        breakers=BreakerLog(aggregates),
        admin=AdminKey(admin_key),
        metrics=metrics,
        instances=Instances(store, instance, journal.limiter),
        leases=Leases(aggregates, instance.instance, lambda: gateway.clock(), config.server.lease_s),
        generated_admin_key=generated,
        telemetry=Telemetry.start(config.tracing, environ),
        cache=ResponseCache(cache_store),
    )
    if clock is not None:
        gateway.clock = clock
    conversations = await trio.to_thread.run_sync(Conversations, side, config.responses.retention_s)
    gateway.conversations = conversations
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(projector.run)
            await nursery.start(journal.run)
            await nursery.start(gateway.breakers.run)
            await nursery.start(partial(gateway.instances.run, gateway.clock))
            await _start_ledger(gateway, environ)
            await nursery.start(journal.follow)
            nursery.start_soon(_recover_orphans, gateway)
            gateway.alerts = AlertSender(config.alerts, gateway.aggregates, gateway.metrics)
            await nursery.start(gateway.alerts.run)
            gateway.tenant_actors = TenantActors(
                nursery,
                books=books,
                spent=gateway.spent_at,
                aggregates=gateway.aggregates,
                clock=gateway.clock,
                idle_s=config.server.tenant_idle_s,
                alerts=gateway.alerts.crossed,
                instance=instance.instance,
                live=lambda: gateway.instances.live_count,
                leases=gateway.leases,
                lease_idle_s=config.server.lease_idle_s,
            )
            nursery.start_soon(_expire_conversations, conversations, gateway.clock)
            for handle in handles.values():
                await nursery.start(partial(supervise, f"provider:{handle.name}", handle.run, handle.give_up))
            yield gateway
            with trio.move_on_after(5):  # the budget leases go back while the Journal still runs
                await gateway.tenant_actors.give_back()
            with trio.move_on_after(5):  # leave the read models caught up with the ledger
                await projector.wait_for(journal.position)
            nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await gateway.instances.stop()  # a clean stop: no longer live, nothing to recover
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for handle in handles.values():
                await handle.upstream.aclose()
        store.close()
        projections.close()
        cache_store.close()
        conversations.close()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(gateway.telemetry.shutdown, abandon_on_cancel=True)


__all__ = ["HEARTBEAT_S", "Gateway", "GatewayStatistics", "build_upstream", "open_gateway"]
