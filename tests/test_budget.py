"""Budgets as the pure decisions they are (`policies.budget`): reserve, settle, thresholds, bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import attrs
from hypothesis import given
from hypothesis import strategies as st

from events.money import ZERO, usd
from events.usage import Usage
from policies.budget import (
    IMAGE_PART_TOKENS,
    TOKENS_FOR_TOOLS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REQUEST,
    TOKENS_PER_TOOL,
    BudgetState,
    crossings,
    prompt_upper_bound,
    remaining,
    reserve,
    settle,
    worst_case_cost,
)
from policies.cost import Price, cost_of

START = datetime(2026, 11, 1, tzinfo=UTC)
money = st.decimals(min_value=0, max_value=100, places=9, allow_nan=False, allow_infinity=False).map(usd)
rates = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
prices = st.builds(Price, rates, rates, st.one_of(st.none(), rates))
# A request: what it reserves, and the percentage of it the settled cost comes to (None: unpriced).
requests = st.lists(st.tuples(money, st.one_of(st.none(), st.integers(0, 100))), max_size=30)


@given(money, requests)
def test_a_hard_budget_is_never_overspent(budget: Decimal, workload: list[tuple[Decimal, int | None]]) -> None:
    state = BudgetState(START)
    held: list[tuple[Decimal, int | None]] = []
    for amount, fraction in workload:
        decision = reserve(budget, "hard", state, amount)
        assert decision.remaining == remaining(budget, state)
        assert decision.allowed == (state.spent + state.reserved + amount <= budget)
        state = decision.state
        if decision.allowed:
            held.append((amount, fraction))
        if len(held) > 2:  # requests settle out of order, each within what it reserved
            reserved, part = held.pop(0)
            state = settle(state, reserved, None if part is None else usd(reserved * part / 100))
        assert state.spent + state.reserved <= budget
    for reserved, part in held:
        state = settle(state, reserved, None if part is None else reserved)
        assert state.spent <= budget
    assert state.reserved == ZERO


def test_a_refused_reservation_changes_nothing() -> None:
    state = BudgetState(START, spent=Decimal("0.9"), reserved=Decimal("0.05"))
    decision = reserve(Decimal(1), "hard", state, Decimal("0.06"))
    assert not decision.allowed and decision.state == state and decision.remaining == Decimal("0.05")
    assert reserve(Decimal(1), "hard", state, Decimal("0.05")).allowed


def test_a_soft_budget_admits_while_spent_is_under_it_and_no_budget_always() -> None:
    under = BudgetState(START, spent=Decimal("0.99"), reserved=Decimal(5))
    assert reserve(Decimal(1), "soft", under, Decimal(10)).allowed
    assert not reserve(Decimal(1), "soft", BudgetState(START, spent=Decimal(1)), Decimal(0)).allowed
    unlimited = reserve(None, "hard", BudgetState(START, spent=Decimal(10**6)), Decimal(10**6))
    assert unlimited.allowed and unlimited.remaining is None
    assert not reserve(ZERO, "hard", BudgetState(START), Decimal("0.000000001")).allowed


def test_settling_replaces_the_reservation_by_the_actual_cost() -> None:
    state = BudgetState(START, spent=Decimal(1), reserved=Decimal("0.5"))
    assert settle(state, Decimal("0.3"), Decimal("0.1")) == BudgetState(START, Decimal("1.1"), Decimal("0.2"))
    assert settle(state, Decimal("0.3"), None) == BudgetState(START, Decimal(1), Decimal("0.2")), "unpriced adds 0"
    assert settle(state, Decimal(2), Decimal(0)).reserved == ZERO, "never below zero"


def test_threshold_crossings_are_reported_once_per_level() -> None:
    state, reached = crossings(Decimal(10), BudgetState(START, spent=Decimal("8.5")))
    assert reached == [50, 80] and state.crossed == {50, 80}
    assert crossings(Decimal(10), state) == (state, [])
    state, reached = crossings(Decimal(10), attrs.evolve(state, spent=Decimal(10)))
    assert reached == [100]
    assert crossings(ZERO, BudgetState(START))[1] == [] and crossings(None, BudgetState(START, Decimal(5)))[1] == []


@given(prices, st.integers(0, 10**7), st.integers(0, 10**6), st.data())
def test_the_worst_case_bounds_every_usage_within_it(
    price: Price, prompt: int, output: int, data: st.DataObject
) -> None:
    usage = Usage(
        data.draw(st.integers(0, prompt)), data.draw(st.integers(0, output)), data.draw(st.integers(0, prompt))
    )
    assert cost_of(usage, price) <= worst_case_cost(prompt, output, price)


def test_the_prompt_bound_adds_each_allowance() -> None:
    assert prompt_upper_bound(100, 2) == 100 + 2 * TOKENS_PER_MESSAGE + TOKENS_PER_REQUEST
    assert prompt_upper_bound(0, 0, images=3) == TOKENS_PER_REQUEST + 3 * IMAGE_PART_TOKENS
    assert prompt_upper_bound(0, 0, tools=2) == TOKENS_PER_REQUEST + TOKENS_FOR_TOOLS + 2 * TOKENS_PER_TOOL
