"""One actor per active tenant: the only place that applies admission for its tenant.

Admission is one pure decision (`policies.admission`: enabled? model allowed? priced? parallel,
RPM and TPM limits? budget — reserve the worst case?), applied by the actor in one step, all or
nothing. Settlement replaces the reservation by the actual cost, exactly once per ticket. An actor
starts on first use (its period's spend read from the projections, which the Projector has caught
up with every commit), and stops after `idle_s` with nothing in flight.

An actor is given what it uses: the `Books` (the tenant's view and policy, prices, its aggregate
for budget alerts' state), `spent` (a period's settled spend, from the projections), `aggregates` (the
one door through which its budget alerts are committed), `clock` (wall time for money) and `alerts`
(told of each committed threshold crossing: `AlertSender.crossed`, which counts and delivers it).

A hard budget is admitted against budget leases when the actor is given `leases`
(`runtime.ledger.leases`, docs/leases.md): the actor holds slices of the period's budget (one
slice of the whole remainder when it is the only live instance), admits while its reservations
plus the request's worst case fit in what its slices hold beyond what settled under them
(`admission.admit(..., leased_usd=)`), leases a slice sized for the request when they do not
(`policies.leases.lease_size`) and tops up after an admission when running low (`should_top_up`).
It gives every slice back (`LeaseReturned`, what settled under them spread oldest first) when
nothing was in flight for `lease_idle_s`, at a period change, when it stops, and when told to
(`GiveBack`, the gateway's shutdown, while the Journal still runs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, time
from decimal import Decimal
from functools import partial
from typing import Any

import attrs
import trio

from events.lease import BudgetSlices, OpenLease
from events.money import ZERO, usd_str
from events.request import Request
from events.store import Recorded
from events.tenant import Tenant, tenant_id
from policies import admission, budget, leases
from policies.errors import BudgetExceeded, RequestRefused
from policies.periods import period_bounds
from policies.ratelimit import Quota
from policies.routing import Deployment
from policies.tenant import TenantPolicy
from policies.usage import UsageBounds
from policies.validation import ChatRequest
from runtime.actors.alerts import Alert
from runtime.actors.mailbox import ask
from runtime.actors.supervisor import supervise
from runtime.errors import ActorUnavailable, Overloaded
from runtime.ledger.aggregates import Aggregates
from runtime.ledger.books import Books, TenantView
from runtime.ledger.leases import Leases

log = logging.getLogger("tollgate.tenant")
MAILBOX_SIZE = 1024
FOREIGN_QUIET = 0.1
"""Of `lease_idle_s`: quiet this long, an actor holding more than is left unleased gives its budget
leases back as soon as another process settles spend of the tenant (`_yield_to_others`)."""

RELEASE_S = 5.0
"""The longest an ended actor's supervisor waits for its budget leases to go back."""

Spent = Callable[[str, datetime, datetime], Awaitable[tuple[Decimal, int]]]
"""Settled spend of a tenant (by name) for received_at in [start, end), and the ledger position
the projections it was read from reflect (every event at or before it counted, none after)."""

UNOWNED = -1
"""The epoch of an admission no actor holds (`TenantActors.admit`'s fast path)."""


@attrs.frozen
class Admission:
    """What a tenant actor granted: a ticket to settle, the reservation, the routes it may take,
    the output cap to send upstream, and the quota levels after it (for the rate-limit headers)."""

    tenant_id: str
    tenant: str
    ticket: int
    epoch: int
    reserved_usd: Decimal
    reserved_tokens: int
    period_start: datetime
    candidates: tuple[Deployment, ...]
    output_cap: int | None
    quotas: Mapping[str, Quota]
    request: uuid.UUID
    """The request's ledger id (its `Request` aggregate)."""
    usage_bounds: UsageBounds = UsageBounds(0, None)

    @property
    def owned(self) -> bool:
        """Held by a tenant actor (a ticket to settle there); False: admitted without one, nothing reserved."""
        return self.epoch != UNOWNED

    @property
    def hold(self) -> admission.Hold:
        return admission.Hold(self.period_start, self.reserved_usd, self.reserved_tokens)


def priced_candidates(books: Books, deployments: Sequence[Deployment], at: datetime) -> list[admission.Candidate]:
    """Each deployment with its price in force at `at` (None: unpriced)."""
    candidates = []
    for deployment in deployments:
        entry = books.prices.lookup(deployment.provider, deployment.model, at)
        candidates.append(admission.Candidate(deployment, entry.price if entry is not None else None))
    return candidates


def granted(view: TenantView, ticket: int, epoch: int, decision: admission.Admitted, request: uuid.UUID) -> Admission:
    """The `Admission` an admitted decision grants (`ticket` in `epoch` of the actor that holds it)."""
    hold = decision.hold
    return Admission(
        view.id,
        view.name,
        ticket,
        epoch,
        hold.usd,
        hold.tokens,
        hold.period_start,
        decision.candidates,
        decision.output_cap,
        decision.quotas,
        request,
        decision.usage_bounds,
    )


@attrs.frozen
class Admit:
    """A request to admit. `received_at` is when the gateway received it: the worst case is priced
    at that moment because settlement prices the request there too (a price change landing between
    receipt and admission must not make the cost exceed the reservation)."""

    chat: ChatRequest
    candidates: tuple[Deployment, ...]
    output_tokens: int
    received_at: datetime
    request: uuid.UUID
    reply: trio.MemorySendChannel[Admission | RequestRefused | Overloaded]


@attrs.frozen
class Settle:
    admission: Admission
    cost_usd: Decimal | None
    tokens: int


@attrs.frozen
class Restated:
    """Committed events changed this tenant's spend on `day` (UTC midnight): `changes` are (ledger
    position, delta) pairs; the actor counts those after the position its period's spend was read
    at (`Spent`), the others being in it already."""

    day: datetime
    changes: tuple[tuple[int, Decimal], ...]
    foreign: bool = False
    """Another process settled spend of this tenant (not a re-pricing): an idle holder of budget
    leases gives them back at once, so the money goes where the tenant is spending it."""


@attrs.frozen
class LeaseLost:
    """Another process expired a budget lease this actor holds (`LeaseExpired`, e.g. its heartbeats
    were late): it no longer admits against it."""

    lease: str


@attrs.frozen
class GiveBack:
    """Give every budget lease back now (the gateway is stopping); `reply` is closed when done."""

    reply: trio.MemorySendChannel[None]


Message = Admit | Settle | Restated | LeaseLost | GiveBack


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
    leased_usd: str | None = None
    """What the budget leases held hold (None: no leases)."""
    leases_held: int = 0


class TenantActor:
    def __init__(
        self,
        tenant: TenantView,
        *,
        books: Books,
        spent: Spent,
        aggregates: Aggregates,
        clock: Callable[[], datetime],
        idle_s: float,
        alerts: Callable[[Alert], None],
        instance: str | None = None,
        live: Callable[[], int] = lambda: 1,
        leases: Leases | None = None,
        lease_idle_s: float = 2.0,
    ) -> None:
        self.tenant_id = tenant.id
        self._leases = leases
        self._lease_idle_s = lease_idle_s
        self._held: list[OpenLease] = []  # the budget leases held for `_state.budget.period_start`, oldest first
        self._lease_spent = ZERO  # settled under them
        self._unleased: set[int] = set()  # tickets whose leases were given back (counted used in full)
        self._top_up_refused = False  # the last top-up found nothing left: wait for a need to try again
        self._quiet_since = 0.0  # when the last ticket settled (trio time)
        self._instance = instance
        self._live = live
        self._alerts = alerts
        self.name = tenant.name
        self._books = books
        self._spent = spent
        self._aggregates = aggregates
        self._clock = clock
        self._idle_s = idle_s
        self.send, self._receive = trio.open_memory_channel[Message](MAILBOX_SIZE)
        self.stopped = trio.Event()
        self._changed = trio.lowlevel.ParkingLot()  # unparked each time the actor is back at its mailbox
        self._busy = False
        self._epoch = 0
        self._tickets: dict[int, Admission] = {}
        self._next_ticket = 0
        self._state = admission.TenantState(budget.BudgetState(self._clock()))
        self._loaded_at = 0  # the ledger position the period's spend was read at
        self._admitted = 0
        self._refused = 0

    # --- the actor ------------------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[TenantActor] = trio.TASK_STATUS_IGNORED) -> None:
        # A restart (after a crash) keeps the tickets: their reservations are still in flight, and
        # forgetting them would let new requests spend the same money again.
        await self._load_period(self._clock())
        self._quiet_since = last = trio.current_time()
        task_status.started(self)
        while True:
            stop_at = last + self._idle_s
            give_back_at = self._quiet_since + self._lease_idle_s if self._held and not self._tickets else math.inf
            with trio.move_on_at(min(stop_at, give_back_at)) as idle:
                message = await self._receive.receive()
            if idle.cancelled_caught:
                now = trio.current_time()
                if self._tickets:
                    last = now
                    continue
                if self._held and (now >= give_back_at or now >= stop_at):
                    await self._give_back()  # quiet for `lease_idle_s`, or stopping: the slices go back
                    if self._held:  # the ledger refused: not stopping with slices out; again later
                        last = now
                        continue
                if now < stop_at or self._receive.statistics().current_buffer_used:
                    continue  # not idle long enough to stop, or a message came while the leases went back
                self._receive.close()
                return
            last = trio.current_time()
            self._busy = True
            try:
                await self._handle(message)
            finally:
                self._busy = False
                self._changed.unpark_all()

    async def _handle(self, message: Message) -> None:
        if isinstance(message, Admit):
            try:
                decision = await self._admit(message)
            except Exception:  # a bug must not cost the tenant its reservations: refuse this one alone
                log.exception("tenant %s: admission failed; the request is refused", self.name)
                message.reply.close()  # the caller answers 503
                return
            try:
                message.reply.send_nowait(decision)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if isinstance(decision, Admission):  # the caller left before hearing back
                    await self._settle(Settle(decision, ZERO, 0))
            finally:
                message.reply.close()
            if isinstance(decision, Admission):
                await self._top_up(decision.reserved_usd)
        elif isinstance(message, Restated):
            await self._restated(message)
        elif isinstance(message, LeaseLost):
            self._lost(message.lease)
        elif isinstance(message, GiveBack):
            with message.reply:
                await self._give_back()
        else:
            await self._settle(message)

    async def _load_period(self, now: datetime) -> None:
        policy = self._policy()
        start, end = period_bounds(policy.budget_period, now)
        spent, self._loaded_at = await self._spent(self.name, start, end)
        aggregate = await self._aggregates.get(uuid.UUID(self.tenant_id), Tenant)
        crossed = frozenset(aggregate.thresholds.get(start.isoformat(), [])) if aggregate is not None else frozenset()
        reserved = sum((t.reserved_usd for t in self._tickets.values() if t.period_start == start), ZERO)
        self._state = attrs.evolve(
            self._state, budget=budget.BudgetState(start, spent, reserved, crossed), in_flight=len(self._tickets)
        )
        await self._alert_crossings(policy)  # spend already past a level not alerted for (a budget just set)

    def _policy(self) -> TenantPolicy:
        """The tenant's policy, with this process's share of its rate limits (`TenantPolicy.share`)."""
        view = self._books.tenant(self.tenant_id)
        return (view.tenant_policy if view is not None else TenantPolicy()).share(self._live())

    async def _admit(self, message: Admit) -> Admission | RequestRefused | Overloaded:
        view = self._books.tenant(self.tenant_id)
        enabled = view is not None and view.enabled
        policy = (view.tenant_policy if view is not None else TenantPolicy()).share(self._live())
        if enabled:
            now = self._clock()
            start, _ = period_bounds(policy.budget_period, now)
            if start != self._state.budget.period_start:
                await self._give_back()  # the old period's slices: what settled under them, and still reserved
                await self._load_period(now)  # a new period restores the budget
        candidates = priced_candidates(self._books, message.candidates, message.received_at)
        leasing = self._leasing(policy)
        others = ZERO if leasing else self._others_reserved()  # leases bound other processes exactly
        state = self._state
        if others:  # other processes' requests in flight count against the budget too
            state = attrs.evolve(state, budget=attrs.evolve(state.budget, reserved=state.budget.reserved + others))

        def decide() -> admission.Admitted | admission.Refused:
            return admission.admit(
                policy,
                state,
                message.chat,
                message.output_tokens,
                candidates,
                trio.current_time(),
                tenant=self.name,
                enabled=enabled,
                leased_usd=self._leased() if leasing else None,
            )

        decision = decide()
        if leasing and isinstance(decision, admission.Refused) and isinstance(decision.reason, BudgetExceeded):
            worst = admission.worst_case(policy, message.chat, message.output_tokens, candidates)
            try:
                taken = worst is not None and await self._take(policy, worst - self._free())
            except Overloaded as busy:  # the Journal's queue is full: a 503 `overloaded`, as for `submit`
                return busy
            if taken:
                decision = decide()  # against the slice just leased
        self._state = decision.state
        if others:
            kept = decision.state.budget
            self._state = attrs.evolve(decision.state, budget=attrs.evolve(kept, reserved=kept.reserved - others))
        if isinstance(decision, admission.Refused):
            self._refused += 1
            return decision.reason
        self._next_ticket += 1
        self._admitted += 1
        assert view is not None  # admitted: enabled
        grant = granted(view, self._next_ticket, self._epoch, decision, message.request)
        self._tickets[grant.ticket] = grant
        return grant

    # --- budget leases ---------------------------------------------------------------------------
    def _leasing(self, policy: TenantPolicy) -> bool:
        return self._leases is not None and policy.budget_usd is not None and policy.budget_mode == "hard"

    def _leased(self) -> Decimal:
        """What the slices held hold beyond what settled under them (reservations not deducted)."""
        return sum((lease.amount_usd for lease in self._held), ZERO) - self._lease_spent

    def _free(self) -> Decimal:
        return self._leased() - self._state.budget.reserved

    async def _take(self, policy: TenantPolicy, need: Decimal) -> bool:
        """Lease a slice for a request needing `need` beyond what is held free; False: refused."""
        assert self._leases is not None and policy.budget_usd is not None
        spend = self._state.budget
        before = spend.spent + spend.reserved  # opens the period's slices when none was ever leased
        lease = await self._leases.take(
            self.name, spend.period_start, policy.budget_usd, max(need, ZERO), self._live(), before
        )
        if lease is None:
            return False
        self._held.append(lease)  # committed: `take` returns after the Journal did
        self._top_up_refused = False
        return True

    async def _top_up(self, worst: Decimal) -> None:
        """After an admission: lease the next slice before running dry (`policies.leases.should_top_up`,
        the request just admitted standing for the next one's worst case)."""
        policy = self._policy()
        if not (self._leasing(policy) and self._held) or self._top_up_refused:
            return
        if not leases.should_top_up(self._free(), self._held[-1].amount_usd, worst):
            return
        try:
            self._top_up_refused = not await self._take(policy, ZERO)
        except Exception:  # a top-up is ahead of need: the next request that needs it asks again
            log.warning("tenant %s: could not top up its budget lease", self.name, exc_info=True)

    async def _give_back(self) -> None:
        """Give every slice held back: what settled under them, plus what requests in flight still
        reserve under them (they may yet spend it; their settlement no longer counts here)."""
        if not self._held or self._leases is None:
            return
        start = self._state.budget.period_start
        open_tickets = [n for n, t in self._tickets.items() if t.period_start == start and n not in self._unleased]
        used = self._lease_spent + sum((self._tickets[n].reserved_usd for n in open_tickets), ZERO)
        held = list(self._held)
        try:
            for lease, used_usd in zip(held, leases.spread(used, [h.amount_usd for h in held]), strict=True):
                await self._leases.give_back(self.name, start, lease.lease, used_usd)
                self._held.remove(lease)
        except Exception:  # kept: given back at the next quiet spell or stop (or expired by a survivor)
            log.warning("tenant %s: could not give its budget leases back", self.name, exc_info=True)
            if self._held:
                self._quiet_since = trio.current_time()  # try again after another quiet spell
                return
        self._unleased.update(open_tickets)
        self._lease_spent = ZERO
        self._top_up_refused = False

    def holds(self, lease: str) -> bool:
        return any(held.lease == lease for held in self._held)

    def _lost(self, lease: str) -> None:
        """A survivor expired one of the slices held: drop it, with its share of what settled under
        the slices (oldest first, as `_give_back` spreads it; that spend stays spent). The survivor
        counted this instance's requests in flight as used under it, so their settlements no longer
        count under what is still held. The next admission that needs more leases it again."""
        lost = next((held for held in self._held if held.lease == lease), None)
        if lost is None:
            return
        shares = leases.spread(self._lease_spent, [held.amount_usd for held in self._held])
        self._lease_spent -= shares[self._held.index(lost)]
        self._held.remove(lost)
        if not self._held:
            self._lease_spent = ZERO
        start = self._state.budget.period_start
        self._unleased.update(n for n, t in self._tickets.items() if t.period_start == start)
        self._top_up_refused = False
        log.warning("tenant %s: budget lease %s was expired by another instance", self.name, lease)

    def _others_reserved(self) -> Decimal:
        """What other processes reserved for this tenant's requests in flight in this period, as far
        as this process has followed the log (their `Admitted` not yet settled)."""
        start = self._state.budget.period_start.isoformat()
        return sum(
            (
                Decimal(row["reserved_usd"])
                for row in self._books.open_requests()
                if row["tenant"] == self.name
                and row.get("instance") != self._instance
                and row["instance"] is not None
                and row["received_at"] >= start
            ),
            ZERO,
        )

    async def _settle(self, message: Settle) -> None:
        granted = message.admission
        ticket = self._tickets.pop(granted.ticket, None) if granted.epoch == self._epoch else None
        if ticket is not None:
            unleased = granted.ticket in self._unleased
            self._unleased.discard(granted.ticket)
            if self._held and not unleased and granted.period_start == self._state.budget.period_start:
                self._lease_spent += message.cost_usd or ZERO
            if not self._tickets:
                self._quiet_since = trio.current_time()
        policy = self._policy()
        self._state = admission.settle(
            policy,
            self._state,
            granted.hold,
            message.cost_usd,
            message.tokens,
            trio.current_time(),
            still_open=ticket is not None,
        )
        await self._alert_crossings(policy)

    async def _alert_crossings(self, policy: TenantPolicy) -> None:
        spend, levels = budget.crossings(policy.budget_usd, self._state.budget)
        self._state = attrs.evolve(self._state, budget=spend)
        budget_usd = policy.budget_usd
        if levels and budget_usd is not None:

            def crossed(aggregate: Tenant | None) -> Tenant:
                if aggregate is None:
                    raise LookupError(f"no tenant {self.name!r} in the ledger")
                for level in levels:
                    aggregate.threshold_crossed(spend.period_start, level, spend.spent, budget_usd)
                return aggregate

            try:
                await self._aggregates.change(uuid.UUID(self.tenant_id), Tenant, crossed)
            except Exception:  # an alert must never break settlement
                log.warning("tenant %s: could not record a budget alert", self.name, exc_info=True)
                return
            for level in levels:  # recorded: now counted, and sent on (never blocking settlement)
                self._alerts(Alert(self.tenant_id, self.name, spend.period_start, level, spend.spent, budget_usd))

    async def _restated(self, message: Restated) -> None:
        """Spend of a day in the current period that the actor has not counted: a re-pricing, another
        process's settlement, or one admitted here without an actor (`TenantActors.admit`). The
        period's spend was read at a ledger position (`_loaded_at`): changes at or before it are in
        it already. A correction upward may cross an alert threshold."""
        policy = self._policy()
        start, _ = period_bounds(policy.budget_period, message.day)
        spend = self._state.budget
        if start != spend.period_start:
            return
        delta = sum((d for position, d in message.changes if position > self._loaded_at), ZERO)
        if delta:
            self._state = attrs.evolve(self._state, budget=attrs.evolve(spend, spent=spend.spent + delta))
            await self._alert_crossings(policy)
        if message.foreign:
            await self._yield_to_others(policy)

    async def _yield_to_others(self, policy: TenantPolicy) -> None:
        """Another process settled this tenant's spend: quiet here, holding more free than is left
        unleased for everyone else, the actor gives its slices back (the money goes where the tenant
        spends it; a steady load with budget to spare does not churn leases)."""
        quiet = trio.current_time() - self._quiet_since >= self._lease_idle_s * FOREIGN_QUIET
        if not (self._held and not self._tickets and quiet and self._leases and policy.budget_usd is not None):
            return
        slices = await self._leases.held(self.name, self._state.budget.period_start)
        if slices is not None and slices.left(policy.budget_usd) < self._free():
            await self._give_back()

    async def wait_settled(self) -> None:
        """Wait until nothing is in flight, nothing reserved, and the actor is idle at an empty mailbox
        (its idle timer running) — a drain; tests use it for quiescence. The check and the wait are one
        step in trio's thread, so a settlement cannot slip between them."""
        while (
            self._busy or self._tickets or self._state.budget.reserved or self._receive.statistics().current_buffer_used
        ):
            await self._changed.park()

    def statistics(self) -> TenantStatistics:
        rpm, tpm = admission.remaining(self._policy(), self._state, trio.current_time())
        spend = self._state.budget
        return TenantStatistics(
            tenant=self.name,
            period_start=spend.period_start.isoformat(),
            spent_usd=usd_str(spend.spent),
            reserved_usd=usd_str(spend.reserved),
            in_flight=len(self._tickets),
            rpm_remaining=rpm,
            tpm_remaining=tpm,
            admitted=self._admitted,
            refused=self._refused,
            leased_usd=usd_str(self._leased()) if self._held else None,
            leases_held=len(self._held),
        )

    def give_up(self, error: BaseException) -> None:
        self._receive.close()

    async def release(self) -> None:
        """The actor ended (its supervisor gave up, or it was cancelled): give back the slices it
        still holds, or they would stay leased to this live instance (no survivor expires them) and
        its successor would be refused for the rest of the period."""
        if self._held:
            await self._give_back()


class TenantActors:
    """Starts tenant actors on first use under the gateway's nursery, and finds them again.

    A tenant whose policy has nothing that can refuse a request by its state (no budget, no RPM,
    TPM or `max_parallel`) is admitted without an actor: the same pure decision (`policies.admission`)
    on a fresh `TenantState` in the caller's task, nothing reserved, nothing held — an `Admission`
    that is not `owned` (`admit`). Its state stays single-owner: there is none to own.

    What such a request costs must still be counted exactly once by an actor the tenant gets later
    (its policy gained a limit while the request was in flight). An actor counts the period's
    spend it reads from the projections, which reflect the ledger up to a position (`Spent`), and
    the `Restated` changes it is sent, each with the position of the event it comes from, only when
    after that position. An unowned admission with a cost is noted at `settle` (before its terminal
    event is committed, `runtime.chat.record`); the commit hook (`restated`) finds its terminal
    event, drops the note and sends its cost, with its position, to the tenant's actor if one is
    running or starting — the one whose spend may not have counted it. So:
    - an actor running at the commit read its spend before that position: the change counts, once;
    - one starting then (its read not done, or done and not yet in `_actors`) is sent it too, and
      counts it exactly when its read was at an earlier position;
    - one started after the commit hook ran reads projections that caught up with it (`Projector.query`
      waits for every commit fed so far), and is sent nothing.
    A period change reloads the spend and moves the position with it, so a change queued before
    the reload is not counted twice. Never sent to an actor directly: the commit is the only moment
    the cost's position is known.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        books: Books,
        spent: Spent,
        aggregates: Aggregates,
        clock: Callable[[], datetime],
        idle_s: float = 300.0,
        alerts: Callable[[Alert], None] = lambda alert: None,
        instance: str | None = None,
        live: Callable[[], int] = lambda: 1,
        leases: Leases | None = None,
        lease_idle_s: float = 2.0,
    ) -> None:
        self._instance = instance
        self._live = live
        self._leases = leases
        self.lease_idle_s = lease_idle_s
        self._nursery = nursery
        self._alerts = alerts
        self._books = books
        self._spent = spent
        self._aggregates = aggregates
        self._clock = clock
        self.idle_s = idle_s
        self._actors: dict[str, TenantActor] = {}
        self._starting: dict[str, trio.Event] = {}
        self._booting: dict[str, TenantActor] = {}  # starting: constructed, its mailbox open, not yet in `_actors`
        self._unowned: set[uuid.UUID] = set()  # unowned requests settled with a cost, their terminal event to come

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
                actor = TenantActor(
                    tenant,
                    books=self._books,
                    spent=self._spent,
                    aggregates=self._aggregates,
                    clock=self._clock,
                    idle_s=self.idle_s,
                    alerts=self._alerts,
                    instance=self._instance,
                    live=self._live,
                    leases=self._leases,
                    lease_idle_s=self.lease_idle_s,
                )
                self._booting[tenant.id] = actor
                await self._nursery.start(self._supervised, actor)
                self._actors[tenant.id] = actor
                return actor
            finally:
                self._booting.pop(tenant.id, None)
                del self._starting[tenant.id]
                starting.set()

    async def _supervised(
        self, actor: TenantActor, task_status: trio.TaskStatus[TenantActor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await supervise(f"tenant:{actor.name}", actor.run, actor.give_up, task_status=task_status)
        finally:
            # Before its successor may start (`stopped`): its slices go back, shielded and bounded
            # (a Journal that is stopping must not hold the supervisor up).
            with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_S):
                await actor.release()
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
        request: uuid.UUID,
    ) -> Admission:
        """Admit `chat` (received at `received_at`, where its worst case is priced; `request` its ledger
        id) or raise the refusal."""
        fast = self._admit_unowned(tenant, chat, candidates, output_tokens, received_at, request)
        if isinstance(fast, RequestRefused):
            raise fast
        if fast is not None:
            return fast
        for _ in range(3):
            actor = await self.actor(tenant)
            try:
                decision = await ask(
                    actor.send,
                    partial(Admit, chat, candidates, output_tokens, received_at, request),
                    self._hand_back,
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # it stopped while idle just now: start another
            except trio.EndOfChannel:
                raise ActorUnavailable(
                    f"The actor for tenant {tenant.name!r} stopped; retry.", retry_after=1.0
                ) from None
            if isinstance(decision, RequestRefused | Overloaded):
                raise decision
            return decision
        raise ActorUnavailable(f"The actor for tenant {tenant.name!r} is unavailable.", retry_after=1.0)

    def _admit_unowned(
        self,
        tenant: TenantView,
        chat: ChatRequest,
        candidates: tuple[Deployment, ...],
        output_tokens: int,
        received_at: datetime,
        request: uuid.UUID,
    ) -> Admission | RequestRefused | None:
        """The decision for a tenant nothing in whose state can refuse, made here (None: ask its actor —
        one is running or starting, or the tenant is disabled or has a limit)."""
        if tenant.id in self._actors or tenant.id in self._starting:
            return None
        view = self._books.tenant(tenant.id)
        if view is None or not view.enabled:
            return None
        policy = view.tenant_policy
        limits = (policy.budget_usd, policy.rpm, policy.tpm, policy.max_parallel)
        if any(limit is not None for limit in limits):
            return None
        start, _ = period_bounds(policy.budget_period, self._clock())
        decision = admission.admit(
            policy,
            admission.TenantState(budget.BudgetState(start)),
            chat,
            output_tokens,
            priced_candidates(self._books, candidates, received_at),
            trio.current_time(),
            tenant=view.name,
            enabled=True,
        )
        if isinstance(decision, admission.Refused):
            return decision.reason
        if decision.hold.usd != ZERO:  # without a budget the worst case is not reserved
            raise AssertionError(f"an admission without a budget reserved ${decision.hold.usd}")
        return granted(view, 0, UNOWNED, decision, request)

    async def _hand_back(self, decision: Admission | RequestRefused | Overloaded) -> None:
        """A grant that arrived as its caller was cancelled: give its reservation back."""
        if isinstance(decision, Admission):
            await self.settle(decision, ZERO, 0)

    async def settle(self, granted: Admission, cost_usd: Decimal | None, tokens: int) -> None:
        """Replace the reservation by the actual cost. Never dropped and never waited for: a full mailbox
        gets it from a task of its own (the caller's request is ending; a reservation must not outlive it).
        An unowned admission reserved nothing: a cost is noted, for the commit hook to route (`restated`)."""
        if not granted.owned:
            if cost_usd:
                self._unowned.add(granted.request)
            return
        actor = self._actors.get(granted.tenant_id)
        if actor is None:
            return  # the actor is gone; its successor reads settled spend from the ledger
        message = Settle(granted, cost_usd, tokens)
        try:
            actor.send.send_nowait(message)
        except trio.WouldBlock:
            self._nursery.start_soon(self._send_later, actor, message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # stopped: its successor reads settled spend from the ledger

    def restated(self, recorded: Sequence[Recorded]) -> None:
        """Route committed `CostRestated` deltas, other processes' settlements and the costs of requests
        admitted here without an actor to the running or starting actors of their tenants, with their
        positions (called by the Journal's commit hook, in the trio thread, before the projections are
        fed the batch). An actor started later reads them from the projections."""
        deltas: dict[tuple[str, datetime], list[tuple[int, Decimal]]] = {}
        foreign: set[tuple[str, datetime]] = set()
        admitted: dict[Any, Request.Admitted] = {}
        for record in recorded:
            event = record.event
            if isinstance(event, BudgetSlices.LeaseExpired):
                self._lease_lost(event.lease)
            elif isinstance(event, Request.CostRestated):
                day = datetime.combine(event.received_at.date(), time(), tzinfo=UTC)
                key = (str(tenant_id(event.tenant)), day)
                deltas.setdefault(key, []).append((record.position, event.new_cost_usd - (event.old_cost_usd or ZERO)))
            elif isinstance(event, Request.Admitted):
                admitted[event.originator_id] = event
            elif isinstance(event, Request.Settled) and event.cost_usd:
                # Another process's settlement, or ours admitted without an actor: its cost is this
                # tenant's spend here too (the others of ours are settled through `settle`). The
                # admission is in this batch or still open in the Books.
                unowned = event.originator_id in self._unowned
                self._unowned.discard(event.originator_id)
                found = admitted.get(event.originator_id)
                if found is not None:
                    tenant, instance, received = found.tenant, found.instance, found.received_at
                else:
                    row = self._books.open_request(str(event.originator_id))
                    if row is None:
                        continue
                    tenant, instance, received = (
                        row["tenant"],
                        row["instance"],
                        datetime.fromisoformat(row["received_at"]),
                    )
                ours = instance is None or instance == self._instance
                if ours and not unowned:
                    continue
                key = (str(tenant_id(tenant)), datetime.combine(received.date(), time(), tzinfo=UTC))
                deltas.setdefault(key, []).append((record.position, event.cost_usd))
                if not ours:
                    foreign.add(key)
        for (tenant, day), changes in deltas.items():
            actor = self._actors.get(tenant) or self._booting.get(tenant)
            if actor is None or not any(delta for _, delta in changes):
                continue
            message = Restated(day, tuple(changes), foreign=(tenant, day) in foreign)
            try:
                actor.send.send_nowait(message)
            except trio.WouldBlock:
                self._nursery.start_soon(self._send_later, actor, message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # stopped: its successor reads the period's spend from the projections

    def _lease_lost(self, lease: str) -> None:
        """A committed `LeaseExpired` (by a survivor, or this process's own heartbeat task) of a
        lease a running actor here holds: tell it, in mailbox order."""
        for actor in self._actors.values():
            if actor.holds(lease):
                try:
                    actor.send.send_nowait(LeaseLost(lease))
                except trio.WouldBlock:
                    self._nursery.start_soon(self._send_later, actor, LeaseLost(lease))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # stopped: its slices are no longer held
                return

    @staticmethod
    async def _send_later(actor: TenantActor, message: Settle | Restated | LeaseLost) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await actor.send.send(message)

    def statistics(self) -> list[TenantStatistics]:
        return [actor.statistics() for actor in self._actors.values()]

    async def give_back(self) -> None:
        """Have every running actor give its budget leases back, and wait until they did (the
        gateway's shutdown, while the Journal still runs)."""
        for actor in list(self._actors.values()):
            done, wait = trio.open_memory_channel[None](1)
            try:
                await actor.send.send(GiveBack(done))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # stopped: it gave them back as it stopped
            with wait, contextlib.suppress(trio.EndOfChannel):
                await wait.receive()

    def find(self, tenant_id: str) -> TenantActor | None:
        return self._actors.get(tenant_id)
