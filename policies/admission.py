"""Admission: one pure decision per request, and the settlement that undoes its reservation.

    admit(policy, state, chat, output limit, candidate prices, now) → Admitted | Refused

Checks, in order, the first failing one refusing:
    enabled?                 TenantDisabled
    model allowed?           ModelNotAllowed
    priced? (with a budget)  ModelUnpriced: a request whose cost cannot be known is not admitted
    max_parallel             RateLimited (retry in 1 s)
    RPM and TPM              RateLimited (`policies.ratelimit.check_all`: all or nothing)
    budget                   BudgetExceeded (`policies.budget.reserve` of the worst case)

The worst case is the most expensive priced candidate at `policies.budget.worst_case_cost` of the
prompt upper bound and the output tokens of every choice (the client's `max_tokens`, else the
`output_limit` given, × `n`; a `max_tokens` of 0 — an embeddings request — reserves no output, and
its settlement bills none). Under a hard budget a request without `max_tokens` gets an output *cap*
(per choice: `output_limit`), to be written into the body sent upstream, so for every admitted
candidate

    cost_of(prompt bound in, cap × n out) ≤ reserved.

`usage_bounds` tell settlement what the reservation allowed (`policies.usage.billed_usage`).

A refusal returns the state it was given: a refused request consumes no quota, no budget and no
parallel slot. Quota levels (`policies.ratelimit.Quota` by kind, "requests" and "tokens") come back
either way, for the HTTP edge to turn into `x-ratelimit-*` headers. `now` is monotonic seconds (the
buckets' clock); budget periods are the caller's business (a new period is a new `BudgetState`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import attrs

from events.money import ZERO, usd_str
from policies import budget, ratelimit
from policies.cost import Price
from policies.errors import (
    BudgetExceeded,
    CostUnbounded,
    ModelNotAllowed,
    ModelUnpriced,
    RateLimited,
    RequestRefused,
    TenantDisabled,
)
from policies.routing import Deployment, order_candidates
from policies.tenant import TenantPolicy
from policies.usage import UsageBounds
from policies.validation import ChatRequest

PARALLEL_RETRY_S = 1.0


@attrs.frozen
class TenantState:
    """What a tenant's admissions depend on between requests: its budget period, its two buckets,
    and how many admitted requests have not settled yet."""

    budget: budget.BudgetState
    requests: ratelimit.RateState = ratelimit.RateState()
    tokens: ratelimit.RateState = ratelimit.RateState()
    in_flight: int = 0


@attrs.frozen
class Candidate:
    """A deployment that may serve the request, with its price in force when the request was
    received (None: unpriced)."""

    deployment: Deployment
    price: Price | None


@attrs.frozen
class Hold:
    """What an admitted request holds until it settles: money in its budget period, and tokens."""

    period_start: datetime
    usd: Decimal
    tokens: int


@attrs.frozen
class Admitted:
    state: TenantState  # to keep: the reservation made, the buckets charged, one more in flight
    hold: Hold
    candidates: tuple[Deployment, ...]  # in the tenant's order; with a budget, only priced ones
    output_cap: int | None  # per choice, to send upstream as max_tokens; None: the client's own (or none)
    usage_bounds: UsageBounds
    quotas: Mapping[str, ratelimit.Quota]


@attrs.frozen
class Refused:
    state: TenantState  # the state given, unchanged
    reason: RequestRefused  # a `RateLimited` carries `retry_after` and the quota levels
    quotas: Mapping[str, ratelimit.Quota]


def _limits(policy: TenantPolicy) -> list[tuple[str, ratelimit.RateLimit]]:
    limits = []
    if policy.rpm is not None:
        limits.append(("requests", ratelimit.RateLimit(policy.rpm)))
    if policy.tpm is not None:
        limits.append(("tokens", ratelimit.RateLimit(policy.tpm)))
    return limits


def _token_bounds(chat: ChatRequest, output_limit: int) -> tuple[int, int]:
    prompt_tokens = budget.prompt_upper_bound(chat.prompt_bytes, chat.message_count, chat.image_parts, chat.tool_count)
    # every choice may run to the cap; `max_tokens` 0 (an embeddings request) reserves no output at all
    return prompt_tokens, (output_limit if chat.max_tokens is None else chat.max_tokens) * chat.n


def worst_case(
    policy: TenantPolicy, chat: ChatRequest, output_limit: int, candidates: Sequence[Candidate]
) -> Decimal | None:
    """What `admit` reserves for `chat` under a budget: the most expensive priced candidate's worst
    case, over the candidates `admit` would keep (None: none is priced). A budget holder that leases
    slices (`policies.leases`) asks it to size a lease."""
    prices = {c.deployment: c.price for c in candidates}
    ordered = order_candidates([c.deployment for c in candidates], policy.default_provider, policy.fallback_providers)
    prompt_tokens, output_tokens = _token_bounds(chat, output_limit)
    costs = [budget.worst_case_cost(prompt_tokens, output_tokens, p) for d in ordered if (p := prices[d]) is not None]
    return max(costs, default=None)


def admit(
    policy: TenantPolicy,
    state: TenantState,
    chat: ChatRequest,
    output_limit: int,
    candidates: Sequence[Candidate],
    now: float,
    *,
    tenant: str,
    enabled: bool = True,
    leased_usd: Decimal | None = None,
) -> Admitted | Refused:
    """Admit `chat` for `tenant` (named in refusals) or refuse it. `output_limit` is the most output
    tokens per choice a request without `max_tokens` may produce. `leased_usd`, for a hard budget
    admitted against budget leases (`policies.leases`): what the leases held hold beyond what settled
    under them; the request must also fit in it beside the reservations (`reserved + worst ≤ leased`)."""

    def refused(reason: RequestRefused, quotas: Mapping[str, ratelimit.Quota] | None = None) -> Refused:
        return Refused(state, reason, quotas or {})

    if not enabled:
        return refused(TenantDisabled(f"Tenant {tenant!r} is disabled."))
    if policy.allowed_models and chat.model not in policy.allowed_models:
        return refused(ModelNotAllowed(f"Tenant {tenant!r} may not use model {chat.model!r}.", param="model"))
    prices = {c.deployment: c.price for c in candidates}
    ordered = order_candidates([c.deployment for c in candidates], policy.default_provider, policy.fallback_providers)
    prompt_tokens, output_tokens = _token_bounds(chat, output_limit)
    worst = ZERO
    hard = policy.budget_usd is not None and policy.budget_mode == "hard"
    if hard and chat.unbounded is not None:
        return refused(
            CostUnbounded(
                f"Tenant {tenant!r} has a hard budget, and this request carries {chat.unbounded}: what the provider "
                "bills for it cannot be reserved in advance.",
                param="input",
            )
        )
    if policy.budget_usd is not None:
        priced = [(d, price) for d in ordered if (price := prices[d]) is not None]
        if not priced:
            return refused(
                ModelUnpriced(
                    f"Model {chat.model!r} has no price, and tenant {tenant!r} has a budget: "
                    "a request whose cost cannot be known cannot be admitted.",
                    param="model",
                )
            )
        worst = max(budget.worst_case_cost(prompt_tokens, output_tokens, price) for _, price in priced)
        ordered = tuple(d for d, _ in priced)
    tokens = prompt_tokens + output_tokens
    if policy.max_parallel is not None and state.in_flight >= policy.max_parallel:
        return refused(
            RateLimited(
                f"Tenant {tenant!r} has {state.in_flight} requests in flight (max_parallel {policy.max_parallel}).",
                retry_after=PARALLEL_RETRY_S,
                quotas={},
            )
        )
    limits = _limits(policy)
    current = {"requests": state.requests, "tokens": state.tokens}
    cost = {"requests": 1.0, "tokens": float(tokens)}
    charged, decision = ratelimit.check_all([(lim, current[kind], cost[kind]) for kind, lim in limits], now)
    quotas = {kind: q for (kind, _), q in zip(limits, decision.quotas, strict=True)}
    if not decision.allowed:
        if decision.never:
            never = {k: q for k, q in quotas.items() if math.isinf(q.retry_after_s)}
            message = ratelimit.never_message(tenant, tokens, never)
            return refused(RateLimited(message, retry_after=None, quotas=quotas), quotas)
        waiting = "/".join(kind for kind, q in quotas.items() if q.retry_after_s > 0)
        message = (
            f"Rate limit reached for tenant {tenant!r} ({waiting} per minute); retry in {decision.retry_after_s:.1f}s."
        )
        return refused(RateLimited(message, retry_after=decision.retry_after_s, quotas=quotas), quotas)
    reservation = budget.reserve(policy.budget_usd, policy.budget_mode, state.budget, worst)
    if hard and leased_usd is not None:
        free = max(leased_usd - state.budget.reserved, ZERO)
        remains = min(reservation.remaining or ZERO, free)
        reservation = attrs.evolve(reservation, remaining=remains)
        if worst > free:
            reservation = attrs.evolve(reservation, allowed=False, state=state.budget)
    if not reservation.allowed:
        return refused(
            BudgetExceeded(
                f"Budget exceeded for tenant {tenant!r}: ${usd_str(reservation.remaining or ZERO)} remains this "
                f"{policy.budget_period} (budget ${usd_str(policy.budget_usd or ZERO)}), and this request could "
                f"cost up to ${usd_str(worst)}."
            ),
            {kind: ratelimit.quota(limit, current[kind], now, cost[kind]) for kind, limit in limits},  # uncharged
        )
    buckets = {kind: new for (kind, _), new in zip(limits, charged, strict=True)}
    cap = output_limit if chat.max_tokens is None and hard else None  # per choice: reserved `n` times
    output_bound = output_tokens if chat.max_tokens is not None or cap is not None else None
    return Admitted(
        TenantState(
            reservation.state,
            buckets.get("requests", state.requests),
            buckets.get("tokens", state.tokens),
            state.in_flight + 1,
        ),
        Hold(state.budget.period_start, worst, tokens),
        ordered,
        cap,
        UsageBounds(None if chat.unbounded is not None else prompt_tokens, output_bound),
        quotas,
    )


def settle(
    policy: TenantPolicy,
    state: TenantState,
    hold: Hold,
    cost_usd: Decimal | None,
    tokens: int,
    now: float,
    *,
    still_open: bool = True,
) -> TenantState:
    """Replace `hold` by what the request cost (`cost_usd`; None: unpriced, adds nothing) and used
    (`tokens`, corrected in the TPM bucket), freeing its parallel slot. A hold that is no longer
    open (taken by an earlier incarnation of the actor, whose reservations are gone) only adds its
    cost to the spend of its period, if that is the current one."""
    spend = state.budget
    if hold.period_start == spend.period_start:
        spend = budget.settle(spend, hold.usd if still_open else ZERO, cost_usd)
    if not still_open:
        return attrs.evolve(state, budget=spend)
    bucket = state.tokens
    if policy.tpm is not None:
        bucket = ratelimit.adjust(ratelimit.RateLimit(policy.tpm), bucket, now, tokens - hold.tokens)
    return TenantState(spend, state.requests, bucket, max(state.in_flight - 1, 0))


def remaining(policy: TenantPolicy, state: TenantState, now: float) -> tuple[int | None, int | None]:
    """Requests and tokens available now (None: no such limit)."""
    buckets = {"requests": state.requests, "tokens": state.tokens}
    found = {kind: ratelimit.quota(limit, buckets[kind], now).remaining for kind, limit in _limits(policy)}
    return found.get("requests"), found.get("tokens")
