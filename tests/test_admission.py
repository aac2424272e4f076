"""Admission as a pure decision: no overspend, refusals consume nothing, the cap fits the reservation."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import attrs
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from events.money import ZERO, usd
from events.usage import Usage
from policies import admission, budget
from policies.admission import Admitted, Candidate, Refused, TenantState
from policies.cost import Price, cost_of
from policies.errors import BudgetExceeded, ModelNotAllowed, ModelUnpriced, RateLimited, TenantDisabled
from policies.ratelimit import RateState
from policies.routing import Deployment
from policies.tenant import TenantPolicy
from policies.validation import ChatRequest
from runtime.http.quota_headers import quota_headers

PERIOD = datetime(2026, 3, 1, tzinfo=UTC)
A, B, C = Deployment("a", "m"), Deployment("b", "m"), Deployment("c", "m")
PRICE = Price(Decimal(1), Decimal(10))


def chat_request(**fields: Any) -> ChatRequest:
    values: dict[str, Any] = {
        "body": {},
        "model": "m",
        "stream": False,
        "include_usage": False,
        "max_tokens": None,
        "prompt_bytes": 100,
        "message_count": 1,
        **fields,
    }
    return ChatRequest(**values)


def fresh(spent: Decimal = ZERO) -> TenantState:
    return TenantState(budget.BudgetState(PERIOD, spent))


def decide(
    policy: TenantPolicy,
    state: TenantState,
    chat: ChatRequest,
    candidates: list[Candidate] | None = None,
    now: float = 0.0,
    output_limit: int = 1000,
    enabled: bool = True,
) -> Admitted | Refused:
    return admission.admit(
        policy,
        state,
        chat,
        output_limit,
        [Candidate(A, PRICE)] if candidates is None else candidates,
        now,
        tenant="t",
        enabled=enabled,
    )


# --- examples -------------------------------------------------------------------------------------------


def test_refusals_in_order_and_each_leaves_the_state() -> None:
    state = fresh()
    everything = TenantPolicy(budget_usd=Decimal(0), allowed_models=("other",), rpm=0)
    order = [
        (dict(enabled=False), TenantDisabled),
        ({}, ModelNotAllowed),
    ]
    for extra, kind in order:
        refused = decide(everything, state, chat_request(), **extra)
        assert isinstance(refused, Refused) and type(refused.reason) is kind and refused.state is state
    unpriced = decide(TenantPolicy(budget_usd=Decimal(1)), state, chat_request(), [Candidate(A, None)])
    assert isinstance(unpriced, Refused) and isinstance(unpriced.reason, ModelUnpriced)
    assert unpriced.reason.param == "model"
    busy = decide(TenantPolicy(max_parallel=1), attrs.evolve(state, in_flight=1), chat_request())
    assert isinstance(busy, Refused) and isinstance(busy.reason, RateLimited)
    assert (busy.reason.retry_after, busy.reason.quotas) == (1.0, {})
    never = decide(TenantPolicy(rpm=0, budget_usd=Decimal(0)), state, chat_request())
    assert isinstance(never, Refused) and isinstance(never.reason, RateLimited)
    assert never.reason.retry_after is None and set(never.quotas) == {"requests"}
    broke = decide(TenantPolicy(budget_usd=Decimal(0), rpm=5), state, chat_request())
    assert isinstance(broke, Refused) and isinstance(broke.reason, BudgetExceeded)
    assert broke.quotas["requests"].remaining == 5, "a refusal for budget charges no request"


def test_an_admission_reserves_the_worst_priced_candidate_in_the_tenants_order() -> None:
    cheap, dear = Price(Decimal(1), Decimal(1)), Price(Decimal(2), Decimal(20))
    policy = TenantPolicy(budget_usd=Decimal(10), default_provider="c", fallback_providers=("b",))
    chat = chat_request(n=2)
    admitted = decide(policy, fresh(), chat, [Candidate(A, cheap), Candidate(B, dear), Candidate(C, None)], 5.0)
    assert isinstance(admitted, Admitted)
    assert admitted.candidates == (B, A), "unpriced candidates are dropped under a budget"
    prompt = budget.prompt_upper_bound(100, 1)
    assert admitted.hold == admission.Hold(PERIOD, budget.worst_case_cost(prompt, 2000, dear), prompt + 2000)
    assert admitted.output_cap == 1000 and admitted.usage_bounds == admission.UsageBounds(prompt, 2000)
    assert admitted.state.budget.reserved == admitted.hold.usd and admitted.state.in_flight == 1
    unbudgeted = decide(TenantPolicy(default_provider="c"), fresh(), chat, [Candidate(A, cheap), Candidate(C, None)])
    assert isinstance(unbudgeted, Admitted) and unbudgeted.candidates == (C, A)
    assert (unbudgeted.hold.usd, unbudgeted.output_cap, unbudgeted.usage_bounds.completion_tokens) == (ZERO, None, None)
    soft = decide(attrs.evolve(policy, budget_mode="soft"), fresh(), chat, [Candidate(A, cheap)])
    assert isinstance(soft, Admitted) and soft.output_cap is None
    own = decide(policy, fresh(), chat_request(max_tokens=7), [Candidate(A, cheap)])
    assert isinstance(own, Admitted) and own.output_cap is None and own.usage_bounds.completion_tokens == 7


def test_quota_levels_come_back_with_an_admission() -> None:
    admitted = decide(TenantPolicy(rpm=10, tpm=100_000), fresh(), chat_request(max_tokens=10), now=1.0)
    assert isinstance(admitted, Admitted)
    assert (admitted.quotas["requests"].limit, admitted.quotas["requests"].remaining) == (10, 9)
    assert admitted.quotas["tokens"].remaining == 100_000 - admitted.hold.tokens
    assert admission.remaining(TenantPolicy(rpm=10, tpm=100_000), admitted.state, 1.0) == (
        9,
        100_000 - admitted.hold.tokens,
    )
    assert admission.remaining(TenantPolicy(), admitted.state, 1.0) == (None, None)


def test_settle_replaces_the_hold_and_refunds_unused_tokens() -> None:
    policy = TenantPolicy(budget_usd=Decimal(10), tpm=100_000)
    admitted = decide(policy, fresh(Decimal(1)), chat_request(max_tokens=100), now=0.0)
    assert isinstance(admitted, Admitted)
    settled = admission.settle(policy, admitted.state, admitted.hold, Decimal("0.5"), 10, 0.0)
    assert (settled.budget.spent, settled.budget.reserved, settled.in_flight) == (Decimal("1.5"), ZERO, 0)
    assert settled.tokens.level == 10
    unpriced = admission.settle(policy, admitted.state, admitted.hold, None, 10, 0.0)
    assert unpriced.budget.spent == Decimal(1), "an unpriced cost adds nothing"
    closed = admission.settle(policy, fresh(Decimal(1)), admitted.hold, Decimal("0.5"), 10, 0.0, still_open=False)
    assert closed == fresh(Decimal("1.5")), "an earlier incarnation's request still counts as spent"
    elsewhere = attrs.evolve(admitted.hold, period_start=datetime(2026, 2, 1, tzinfo=UTC))
    later = admission.settle(policy, admitted.state, elsewhere, Decimal("0.5"), 10, 0.0)
    assert later.budget == admitted.state.budget and later.in_flight == 0, "another period's cost is not this one's"


# --- properties -----------------------------------------------------------------------------------------

rates = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)
prices = st.one_of(st.none(), st.builds(Price, rates, rates, st.one_of(st.none(), rates)))
candidates = st.lists(
    st.builds(Candidate, st.sampled_from([A, B, C, Deployment("a", "other")]), prices), min_size=1, max_size=4
)
money = st.decimals(min_value=0, max_value=5, places=9, allow_nan=False, allow_infinity=False)
policies = st.builds(
    TenantPolicy,
    budget_usd=st.one_of(st.none(), money),
    budget_mode=st.sampled_from(["hard", "hard", "soft"]),
    rpm=st.one_of(st.none(), st.integers(0, 20)),
    tpm=st.one_of(st.none(), st.integers(0, 200_000)),
    max_parallel=st.one_of(st.none(), st.integers(1, 4)),
    allowed_models=st.sampled_from([(), (), ("m",), ("other",)]),
    default_provider=st.sampled_from([None, "a", "b", "c"]),
    fallback_providers=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2).map(tuple),
)
chats = st.builds(
    chat_request,
    max_tokens=st.one_of(st.none(), st.just(0), st.integers(1, 4000)),  # 0: an embeddings request, no output
    prompt_bytes=st.integers(0, 20_000),
    message_count=st.integers(0, 10),
    image_parts=st.integers(0, 2),
    n=st.integers(1, 4),
    tool_count=st.integers(0, 3),
)
# For the money properties: hard budgets that some requests fit, mostly priced candidates, and limits
# that refuse now and then (the general strategies above refuse most requests).
small_rates = st.decimals(min_value=0, max_value=20, places=3, allow_nan=False, allow_infinity=False)
priced = st.builds(Price, small_rates, small_rates, st.one_of(st.none(), small_rates))
deployments = st.sampled_from([A, B, C])
mostly_priced = (
    st.tuples(
        st.lists(st.builds(Candidate, deployments, priced), min_size=1, max_size=3),
        st.lists(st.builds(Candidate, deployments, st.none()), max_size=1),
    )
    .map(lambda found: found[0] + found[1])
    .flatmap(st.permutations)
)
hard_policies = st.builds(
    TenantPolicy,
    budget_usd=st.one_of(st.integers(0, 100).map(lambda cents: Decimal(cents) / 100), money),
    budget_mode=st.just("hard"),
    rpm=st.one_of(st.none(), st.none(), st.integers(1, 30)),
    tpm=st.one_of(st.none(), st.none(), st.integers(10_000, 500_000)),
    max_parallel=st.one_of(st.none(), st.integers(1, 8)),
    default_provider=st.sampled_from([None, "a", "b", "c"]),
    fallback_providers=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2).map(tuple),
)
uncapped_chats = st.builds(
    chat_request,
    prompt_bytes=st.integers(0, 20_000),
    message_count=st.integers(0, 10),
    image_parts=st.integers(0, 2),
    n=st.integers(1, 4),
    tool_count=st.integers(0, 3),
)
buckets = st.builds(RateState, st.floats(0, 200_000, allow_nan=False), st.floats(0, 100, allow_nan=False))
states = st.builds(
    TenantState,
    st.builds(budget.BudgetState, st.just(PERIOD), money, money),
    buckets,
    buckets,
    st.integers(0, 5),
)
output_limits = st.integers(1, 8192)
# One step of a tenant's life: admit a request after `gap` seconds, or settle the `index`-th open one
# with usage within its bounds (`prompt_share`, `output_share` of them, at one of its candidates' prices).
admit_step = st.tuples(st.just("admit"), chats, mostly_priced, output_limits, st.floats(0, 30, allow_nan=False))
settle_step = st.tuples(
    st.just("settle"), st.integers(0, 50), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(0, 3)
)
steps = st.lists(st.one_of(admit_step, settle_step), min_size=1, max_size=30)


def billed_cost(granted: Admitted, prices_by: dict[Deployment, Price | None], step: tuple[Any, ...]) -> Decimal:
    """What settlement may charge: usage within the admission's bounds, at one of its candidates' prices."""
    _, _, prompt_share, output_share, cached_share, which = step
    bounds = granted.usage_bounds
    assert bounds.prompt_tokens is not None and bounds.completion_tokens is not None
    prompt = math.floor(bounds.prompt_tokens * prompt_share)
    usage = Usage(prompt, math.floor(bounds.completion_tokens * output_share), math.floor(prompt * cached_share))
    price = prices_by[granted.candidates[which % len(granted.candidates)]]
    assert price is not None
    return cost_of(usage, price)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hard_policies, st.sampled_from(["0", "0", "0.5", "0.9", "1"]), st.lists(admit_step, max_size=20), steps)
def test_concurrent_reservations_never_overspend_a_hard_budget(
    policy: TenantPolicy, spent_share: str, first: list[tuple[Any, ...]], rest: list[tuple[Any, ...]]
) -> None:
    """Requests admitted one after another while earlier ones are still open, settled in any order at
    any usage their bounds allow: spent + reserved never exceeds a hard budget."""
    hard = policy.budget_usd
    assert hard is not None
    state = fresh(usd(hard * Decimal(spent_share)))
    now, most_open = 0.0, 0
    open_holds: list[tuple[Admitted, dict[Deployment, Price | None]]] = []
    for step in [*first, *rest]:
        if step[0] == "admit":
            _, chat, offered, output_limit, gap = step
            now += gap
            decision = decide(policy, state, chat, offered, now, output_limit)
            if isinstance(decision, Admitted):
                assert decision.usage_bounds.completion_tokens is not None, "a hard budget always bounds the output"
                open_holds.append((decision, {c.deployment: c.price for c in offered}))
            state = decision.state
        elif open_holds:
            granted, prices_by = open_holds.pop(step[1] % len(open_holds))
            cost = billed_cost(granted, prices_by, step)
            assert cost <= granted.hold.usd
            state = admission.settle(policy, state, granted.hold, cost, 0, now)
        assert state.budget.spent + state.budget.reserved <= hard
        assert state.budget.reserved == sum((g.hold.usd for g, _ in open_holds), ZERO)
        assert state.in_flight == len(open_holds)
        most_open = max(most_open, len(open_holds))
    target(float(most_open))  # steer the search towards many reservations open at once


@settings(max_examples=200, deadline=None)
@given(st.one_of(policies, hard_policies), states, chats, candidates, output_limits, st.floats(0, 1000), st.booleans())
def test_a_refusal_leaves_the_state_as_it_was(
    policy: TenantPolicy,
    state: TenantState,
    chat: ChatRequest,
    offered: list[Candidate],
    output_limit: int,
    now: float,
    enabled: bool,
) -> None:
    decision = decide(policy, state, chat, offered, now, output_limit, enabled)
    if isinstance(decision, Refused):
        assert decision.state is state
        if isinstance(decision.reason, RateLimited):
            assert decision.reason.quotas == decision.quotas
    else:
        assert decision.state.in_flight == state.in_flight + 1
        assert decision.state.budget.reserved == state.budget.reserved + decision.hold.usd
        assert decision.state.budget.spent == state.budget.spent


@settings(max_examples=100, deadline=None)
@given(st.one_of(policies, hard_policies), st.lists(admit_step, min_size=1, max_size=25))
def test_refused_requests_change_no_later_decision(policy: TenantPolicy, attempts: list[tuple[Any, ...]]) -> None:
    """Replaying only the admitted requests gives the same admissions: the refused ones took nothing."""

    def run(sequence: list[tuple[Any, ...]]) -> list[Admitted | Refused]:
        state, seen = fresh(), []
        for chat, offered, output_limit, now in sequence:
            decision = decide(policy, state, chat, offered, now, output_limit)
            state = decision.state
            seen.append(decision)
        return seen

    timed, now = [], 0.0
    for _, chat, offered, output_limit, gap in attempts:
        now += gap
        timed.append((chat, offered, output_limit, now))
    first = run(timed)
    admitted = [step for step, decision in zip(timed, first, strict=True) if isinstance(decision, Admitted)]
    assert run(admitted) == [d for d in first if isinstance(d, Admitted)]


@settings(max_examples=300, deadline=None)
@given(hard_policies, states, uncapped_chats, mostly_priced, output_limits)
def test_the_output_cap_never_exceeds_the_reservation(
    policy: TenantPolicy, state: TenantState, chat: ChatRequest, offered: list[Candidate], output_limit: int
) -> None:
    """cap × n × output price + prompt bound × input price ≤ reserved, for every candidate admitted
    (in the money settlement uses: `cost_of`, quantized to 1e-9, cached or not)."""
    decision = decide(policy, state, chat, offered, 0.0, output_limit)
    if not isinstance(decision, Admitted) or decision.output_cap is None:
        return
    assert chat.max_tokens is None and policy.budget_mode == "hard" and policy.budget_usd is not None
    prompt = budget.prompt_upper_bound(chat.prompt_bytes, chat.message_count, chat.image_parts, chat.tool_count)
    output = decision.output_cap * chat.n
    assert decision.usage_bounds == admission.UsageBounds(prompt, output)
    assert decision.hold.tokens == prompt + output
    prices_by = {c.deployment: c.price for c in offered}
    for deployment in decision.candidates:
        price = prices_by[deployment]
        assert price is not None
        for cached in (0, prompt // 2, prompt):
            assert cost_of(Usage(prompt, output, cached), price) <= decision.hold.usd
        exact = (
            prompt * max(price.input_per_mtok, price.cached_input_per_mtok or ZERO) + output * price.output_per_mtok
        ) / 10**6
        assert usd(exact) <= decision.hold.usd


def test_an_unknown_price_is_never_reserved_at_zero() -> None:
    """A budget and only unpriced candidates: refused, never admitted with a $0 reservation."""
    refused = decide(TenantPolicy(budget_usd=Decimal(100)), fresh(), chat_request(), [Candidate(A, None)] * 2)
    assert isinstance(refused, Refused) and isinstance(refused.reason, ModelUnpriced)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_a_zero_budget_admits_nothing_priced_above_zero(mode: Literal["hard", "soft"]) -> None:
    refused = decide(TenantPolicy(budget_usd=Decimal(0), budget_mode=mode), fresh(), chat_request())
    assert isinstance(refused, Refused) and isinstance(refused.reason, BudgetExceeded)


def test_quota_levels_become_openai_headers_at_the_http_edge() -> None:
    admitted = decide(TenantPolicy(rpm=100, tpm=10_000), fresh(), chat_request(max_tokens=10), now=0.0)
    assert isinstance(admitted, Admitted)
    tokens = admitted.hold.tokens
    assert quota_headers(admitted.quotas) == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "0.600s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": str(10_000 - tokens),
        "x-ratelimit-reset-tokens": f"{tokens * 60 / 10_000:.3f}s",
    }
    assert quota_headers({}) == {}
