"""One actor per active tenant: the only place that decides admission for its tenant.

Admission happens in one actor step, all or nothing: enabled? model allowed? RPM, TPM and
parallel limits (pure `policies.ratelimit`)? budget — reserve the worst case (pure
`policies.budget`)? Settlement replaces the reservation by the actual cost, exactly once per
ticket. An actor starts on first use (its period's spend read from the projections, which the
Projector has caught up with every commit), and stops after `idle_s` with nothing in flight.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING

import attrs
import trio

from events.money import ZERO, usd_str
from events.request import Request
from events.store import Recorded
from events.tenant import Tenant, tenant_id
from policies import budget, ratelimit
from policies.errors import BudgetExceeded, ModelNotAllowed, ModelUnpriced, RateLimited, RequestRefused, TenantDisabled
from policies.periods import period_bounds
from policies.routing import Deployment, order_candidates
from policies.tenant import TenantPolicy
from policies.usage import UsageBounds
from policies.validation import ChatRequest
from runtime.actors.supervisor import supervise
from runtime.errors import ActorUnavailable
from runtime.ledger.books import TenantView

if TYPE_CHECKING:
    from runtime.gateway import Gateway

log = logging.getLogger("tollgate.tenant")
MAILBOX_SIZE = 1024


@attrs.frozen
class Admission:
    """What a tenant actor granted: a ticket to settle, the reservation, the routes it may take."""

    tenant_id: str
    tenant: str
    ticket: int
    epoch: int
    reserved_usd: Decimal
    reserved_tokens: int
    period_start: datetime
    candidates: tuple[Deployment, ...]
    output_cap: int | None
    headers: dict[str, str]
    usage_bounds: UsageBounds = UsageBounds(0, None)


@attrs.frozen
class Admit:
    """A request to admit. `received_at` is when the gateway received it: the worst case is priced
    at that moment because settlement prices the request there too (a price change landing between
    receipt and admission must not make the cost exceed the reservation)."""

    chat: ChatRequest
    candidates: tuple[Deployment, ...]
    output_tokens: int
    received_at: datetime
    reply: trio.MemorySendChannel[Admission | RequestRefused]


@attrs.frozen
class Settle:
    admission: Admission
    cost_usd: Decimal | None
    tokens: int


@attrs.frozen
class Restated:
    """Committed restatements changed this tenant's spend on `day` (UTC midnight) by `delta_usd`."""

    day: datetime
    delta_usd: Decimal


@attrs.frozen
class TenantStatistics:
    tenant: str
    period_start: str
    spent_usd: str
    reserved_usd: str
    in_flight: int
    rpm_remaining: int | None
    tpm_remaining: int | None
    admitted: int
    refused: int


def _headers(quotas: dict[str, ratelimit.Quota]) -> dict[str, str]:
    headers = {}
    for kind, quota in quotas.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(quota.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = f"{quota.reset_s:.3f}s"
    return headers


@attrs.define
class _Ticket:
    admission: Admission


class TenantActor:
    def __init__(self, gateway: Gateway, tenant: TenantView, clock: Callable[[], datetime], idle_s: float) -> None:
        self.gateway = gateway
        self.tenant_id = tenant.id
        self.name = tenant.name
        self._clock = clock
        self._idle_s = idle_s
        self.send, self._receive = trio.open_memory_channel[Admit | Settle | Restated](MAILBOX_SIZE)
        self.stopped = trio.Event()
        self._epoch = 0
        self._tickets: dict[int, _Ticket] = {}
        self._next_ticket = 0
        self._budget = budget.BudgetState(self._clock())
        self._rpm = ratelimit.RateState()
        self._tpm = ratelimit.RateState()
        self._admitted = 0
        self._refused = 0

    # --- the actor ------------------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[TenantActor] = trio.TASK_STATUS_IGNORED) -> None:
        self._epoch += 1
        self._tickets.clear()
        await self._load_period(self._clock())
        task_status.started(self)
        while True:
            with trio.move_on_after(self._idle_s) as idle:
                message = await self._receive.receive()
            if idle.cancelled_caught:
                if not self._tickets:
                    self._receive.close()
                    return
                continue
            if isinstance(message, Admit):
                decision = await self._admit(message)
                try:
                    message.reply.send_nowait(decision)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    if isinstance(decision, Admission):  # the caller left before hearing back
                        await self._settle(Settle(decision, ZERO, 0))
                finally:
                    message.reply.close()
            elif isinstance(message, Restated):
                await self._restated(message)
            else:
                await self._settle(message)

    async def _load_period(self, now: datetime) -> None:
        policy = self._policy()
        start, end = period_bounds(policy.budget_period, now)
        spent = await self.gateway.spent(self.name, start, end)
        aggregate = await self.gateway.aggregates.get(uuid.UUID(self.tenant_id), Tenant)
        crossed = frozenset(aggregate.thresholds.get(start.isoformat(), [])) if aggregate is not None else frozenset()
        reserved = sum(
            (t.admission.reserved_usd for t in self._tickets.values() if t.admission.period_start == start), ZERO
        )
        self._budget = budget.BudgetState(start, spent, reserved, crossed)

    def _policy(self) -> TenantPolicy:
        view = self.gateway.books.tenant(self.tenant_id)
        return TenantPolicy.from_record(view.policy) if view is not None else TenantPolicy()

    def _limits(self, policy: TenantPolicy) -> list[tuple[str, ratelimit.RateLimit, ratelimit.RateState]]:
        limits = []
        if policy.rpm is not None:
            limits.append(("requests", ratelimit.RateLimit(policy.rpm), self._rpm))
        if policy.tpm is not None:
            limits.append(("tokens", ratelimit.RateLimit(policy.tpm), self._tpm))
        return limits

    async def _admit(self, message: Admit) -> Admission | RequestRefused:
        view = self.gateway.books.tenant(self.tenant_id)
        if view is None or not view.enabled:
            self._refused += 1
            return TenantDisabled(f"Tenant {self.name!r} is disabled.")
        policy = TenantPolicy.from_record(view.policy)
        chat = message.chat
        if policy.allowed_models and chat.model not in policy.allowed_models:
            self._refused += 1
            return ModelNotAllowed(f"Tenant {self.name!r} may not use model {chat.model!r}.", param="model")
        now = self._clock()
        start, _ = period_bounds(policy.budget_period, now)
        if start != self._budget.period_start:
            await self._load_period(now)  # a new period restores the budget
        candidates = order_candidates(message.candidates, policy.default_provider, policy.fallback_providers)
        prompt_tokens = budget.prompt_upper_bound(
            chat.prompt_bytes, chat.message_count, chat.image_parts, chat.tool_count
        )
        output_tokens = (chat.max_tokens or message.output_tokens) * chat.n  # every choice may run to the cap
        worst = ZERO
        if policy.budget_usd is not None:
            priced = []
            for deployment in candidates:
                entry = self.gateway.books.prices.lookup(deployment.provider, deployment.model, message.received_at)
                if entry is not None and entry.price is not None:
                    priced.append(deployment)
                    worst = max(worst, budget.worst_case_cost(prompt_tokens, output_tokens, entry.price))
            if not priced:
                self._refused += 1
                return ModelUnpriced(
                    f"Model {chat.model!r} has no price, and tenant {self.name!r} has a budget: "
                    "a request whose cost cannot be known cannot be admitted.",
                    param="model",
                )
            candidates = tuple(priced)
        tokens = prompt_tokens + output_tokens
        limits = self._limits(policy)
        if policy.max_parallel is not None and len(self._tickets) >= policy.max_parallel:
            self._refused += 1
            return RateLimited(
                f"Tenant {self.name!r} has {len(self._tickets)} requests in flight "
                f"(max_parallel {policy.max_parallel}).",
                retry_after=1.0,
                headers={},
            )
        now_mono = trio.current_time()
        states, decision = ratelimit.check_all(
            [(lim, st, 1.0 if kind == "requests" else float(tokens)) for kind, lim, st in limits], now_mono
        )
        quotas = {kind: q for (kind, _, _), q in zip(limits, decision.quotas, strict=True)}
        if not decision.allowed:
            self._refused += 1
            refused = [kind for kind, q in quotas.items() if q.retry_after_s > 0]
            if decision.never:
                return RateLimited(
                    ratelimit.never_message(
                        self.name, tokens, {k: q for k, q in quotas.items() if math.isinf(q.retry_after_s)}
                    ),
                    retry_after=None,
                    headers=_headers(quotas),
                )
            return RateLimited(
                f"Rate limit reached for tenant {self.name!r} ({'/'.join(refused)} per minute); "
                f"retry in {decision.retry_after_s:.1f}s.",
                retry_after=decision.retry_after_s,
                headers=_headers(quotas),
            )
        reservation = budget.reserve(policy.budget_usd, policy.budget_mode, self._budget, worst)
        if not reservation.allowed:
            self._refused += 1
            return BudgetExceeded(
                f"Budget exceeded for tenant {self.name!r}: ${usd_str(reservation.remaining or ZERO)} remains this "
                f"{policy.budget_period} (budget ${usd_str(policy.budget_usd or ZERO)}), and this request could cost "
                f"up to ${usd_str(worst)}."
            )
        for (kind, _, _), state in zip(limits, states, strict=True):
            if kind == "requests":
                self._rpm = state
            else:
                self._tpm = state
        self._budget = reservation.state
        self._next_ticket += 1
        self._admitted += 1
        cap = (
            message.output_tokens  # per choice: the reservation counted it `n` times
            if chat.max_tokens is None and policy.budget_usd is not None and policy.budget_mode == "hard"
            else None
        )
        output_bound = output_tokens if chat.max_tokens is not None or cap is not None else None
        admission = Admission(
            self.tenant_id,
            self.name,
            self._next_ticket,
            self._epoch,
            worst,
            tokens,
            self._budget.period_start,
            candidates,
            cap,
            _headers(quotas),
            UsageBounds(prompt_tokens, output_bound),
        )
        self._tickets[admission.ticket] = _Ticket(admission)
        return admission

    async def _settle(self, message: Settle) -> None:
        admission = message.admission
        ticket = self._tickets.pop(admission.ticket, None) if admission.epoch == self._epoch else None
        reserved = ticket.admission.reserved_usd if ticket is not None else ZERO
        if admission.period_start == self._budget.period_start:
            self._budget = budget.settle(self._budget, reserved, message.cost_usd)
        policy = self._policy()
        if policy.tpm is not None and ticket is not None:
            self._tpm = ratelimit.adjust(
                ratelimit.RateLimit(policy.tpm),
                self._tpm,
                trio.current_time(),
                message.tokens - admission.reserved_tokens,
            )
        await self._alert_crossings(policy)

    async def _alert_crossings(self, policy: TenantPolicy) -> None:
        self._budget, levels = budget.crossings(policy.budget_usd, self._budget)
        budget_usd, state = policy.budget_usd, self._budget
        if levels and budget_usd is not None:

            def crossed(aggregate: Tenant | None) -> Tenant:
                if aggregate is None:
                    raise LookupError(f"no tenant {self.name!r} in the ledger")
                for level in levels:
                    aggregate.threshold_crossed(state.period_start, level, state.spent, budget_usd)
                return aggregate

            try:
                await self.gateway.aggregates.change(uuid.UUID(self.tenant_id), Tenant, crossed)
            except Exception:  # an alert must never break settlement
                log.warning("tenant %s: could not record a budget alert", self.name, exc_info=True)

    async def _restated(self, message: Restated) -> None:
        """A re-pricing of a day in the current period corrects what was spent (the period's spend
        was read from projections that did not have it, or settled here before it); a correction
        upward may cross an alert threshold."""
        policy = self._policy()
        start, _ = period_bounds(policy.budget_period, message.day)
        if start == self._budget.period_start:
            self._budget = attrs.evolve(self._budget, spent=self._budget.spent + message.delta_usd)
            await self._alert_crossings(policy)

    def statistics(self) -> TenantStatistics:
        policy = self._policy()
        now = trio.current_time()
        rpm = (
            ratelimit.quota(ratelimit.RateLimit(policy.rpm), self._rpm, now).remaining
            if policy.rpm is not None
            else None
        )
        tpm = (
            ratelimit.quota(ratelimit.RateLimit(policy.tpm), self._tpm, now).remaining
            if policy.tpm is not None
            else None
        )
        return TenantStatistics(
            tenant=self.name,
            period_start=self._budget.period_start.isoformat(),
            spent_usd=usd_str(self._budget.spent),
            reserved_usd=usd_str(self._budget.reserved),
            in_flight=len(self._tickets),
            rpm_remaining=rpm,
            tpm_remaining=tpm,
            admitted=self._admitted,
            refused=self._refused,
        )

    def give_up(self, error: BaseException) -> None:
        self._receive.close()


class TenantActors:
    """Starts tenant actors on first use under the gateway's nursery, and finds them again."""

    def __init__(self, gateway: Gateway, nursery: trio.Nursery, idle_s: float = 300.0) -> None:
        self.gateway = gateway
        self._nursery = nursery
        self.idle_s = idle_s
        self._actors: dict[str, TenantActor] = {}
        self._starting: dict[str, trio.Event] = {}

    async def actor(self, tenant: TenantView) -> TenantActor:
        while True:
            actor = self._actors.get(tenant.id)
            if actor is not None and not actor.stopped.is_set():
                return actor
            starting = self._starting.get(tenant.id)
            if starting is not None:
                await starting.wait()
                continue
            starting = self._starting[tenant.id] = trio.Event()
            try:
                actor = TenantActor(self.gateway, tenant, self.gateway.clock, self.idle_s)
                await self._nursery.start(self._supervised, actor)
                self._actors[tenant.id] = actor
                return actor
            finally:
                del self._starting[tenant.id]
                starting.set()

    async def _supervised(
        self, actor: TenantActor, task_status: trio.TaskStatus[TenantActor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await supervise(f"tenant:{actor.name}", actor.run, actor.give_up, task_status=task_status)
        finally:
            actor.stopped.set()
            if self._actors.get(actor.tenant_id) is actor:
                del self._actors[actor.tenant_id]

    async def admit(
        self,
        tenant: TenantView,
        chat: ChatRequest,
        candidates: tuple[Deployment, ...],
        output_tokens: int,
        received_at: datetime,
    ) -> Admission:
        """Admit `chat` (received at `received_at`, where its worst case is priced) or raise the refusal."""
        for _ in range(3):
            actor = await self.actor(tenant)
            reply_send, reply_receive = trio.open_memory_channel[Admission | RequestRefused](1)
            try:
                await actor.send.send(Admit(chat, candidates, output_tokens, received_at, reply_send))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # it stopped while idle just now: start another
            with reply_receive:
                try:
                    decision = await reply_receive.receive()
                except trio.EndOfChannel:
                    raise ActorUnavailable(
                        f"The actor for tenant {tenant.name!r} stopped; retry.", retry_after=1.0
                    ) from None
                except BaseException:
                    # Cancelled while a grant may already sit in the buffer: hand its reservation back.
                    try:
                        early = reply_receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        pass
                    else:
                        if isinstance(early, Admission):
                            await self.settle(early, ZERO, 0)
                    raise
            if isinstance(decision, RequestRefused):
                raise decision
            return decision
        raise ActorUnavailable(f"The actor for tenant {tenant.name!r} is unavailable.", retry_after=1.0)

    async def settle(self, admission: Admission, cost_usd: Decimal | None, tokens: int) -> None:
        """Replace the reservation by the actual cost. Shielded: it must happen on every path."""
        actor = self._actors.get(admission.tenant_id)
        if actor is None:
            return  # the actor is gone; its successor reads settled spend from the ledger
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(5),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await actor.send.send(Settle(admission, cost_usd, tokens))

    def restated(self, recorded: Sequence[Recorded]) -> None:
        """Route committed `CostRestated` deltas to the running actors of their tenants (called by the
        Journal's commit hook, in the trio thread). An actor not running reads them from projections."""
        deltas: dict[tuple[str, datetime], Decimal] = {}
        for record in recorded:
            event = record.event
            if isinstance(event, Request.CostRestated):
                day = datetime.combine(event.received_at.date(), time(), tzinfo=UTC)
                key = (str(tenant_id(event.tenant)), day)
                deltas[key] = deltas.get(key, ZERO) + event.new_cost_usd - (event.old_cost_usd or ZERO)
        for (tenant, day), delta in deltas.items():
            actor = self._actors.get(tenant)
            if actor is None or not delta:
                continue
            message = Restated(day, delta)
            try:
                actor.send.send_nowait(message)
            except trio.WouldBlock:
                self._nursery.start_soon(self._send_later, actor, message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # stopped: its successor reads the period's spend from the projections

    @staticmethod
    async def _send_later(actor: TenantActor, message: Restated) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await actor.send.send(message)

    def statistics(self) -> list[TenantStatistics]:
        return [actor.statistics() for actor in self._actors.values()]

    def find(self, tenant_id: str) -> TenantActor | None:
        return self._actors.get(tenant_id)
