"""Budgets: reserve the worst case before the call, replace it by the actual cost after.

    worst case = prompt upper bound × input price + max output tokens × output price   (per 1e6 tokens)

The prompt upper bound counts one token per UTF-8 byte of text (no tokenizer produces more) plus a
per-message allowance. A *hard* budget admits a request only if spent + reserved + worst case stays
within the budget, so concurrent requests can never overspend it; a *soft* budget admits while
spent < budget. No budget means no limit; a budget of 0 means nothing may be spent.

Threshold alerts: crossing 50 %, 80 % and 100 % of a period's budget is reported once per level
per period.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import attrs

from events.money import MTOK, ZERO, usd
from policies.cost import Price

LEVELS = (50, 80, 100)
TOKENS_PER_MESSAGE = 8
TOKENS_PER_REQUEST = 16


def prompt_upper_bound(prompt_bytes: int, messages: int) -> int:
    return prompt_bytes + TOKENS_PER_MESSAGE * messages + TOKENS_PER_REQUEST


def worst_case_cost(prompt_tokens: int, output_tokens: int, price: Price) -> Decimal:
    return usd((prompt_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / MTOK)


@attrs.frozen
class BudgetState:
    """One budget period: what was spent (settled) and what is reserved by requests in flight."""

    period_start: datetime
    spent: Decimal = ZERO
    reserved: Decimal = ZERO
    crossed: frozenset[int] = frozenset()


@attrs.frozen
class Reservation:
    allowed: bool
    state: BudgetState
    remaining: Decimal | None  # before this reservation; None without a budget


def remaining(budget: Decimal | None, state: BudgetState) -> Decimal | None:
    if budget is None:
        return None
    return max(budget - state.spent - state.reserved, ZERO)


def reserve(budget: Decimal | None, mode: str, state: BudgetState, amount: Decimal) -> Reservation:
    left = remaining(budget, state)
    if budget is None:
        allowed = True
    elif mode == "soft":
        allowed = state.spent < budget
    else:
        allowed = state.spent + state.reserved + amount <= budget
    if allowed:
        return Reservation(True, attrs.evolve(state, reserved=state.reserved + amount), left)
    return Reservation(False, state, left)


def settle(state: BudgetState, reserved: Decimal, actual: Decimal | None) -> BudgetState:
    """Replace a reservation by the actual cost (an unpriced cost adds nothing: it is tracked apart)."""
    return attrs.evolve(state, reserved=max(state.reserved - reserved, ZERO), spent=state.spent + (actual or ZERO))


def crossings(budget: Decimal | None, state: BudgetState) -> tuple[BudgetState, list[int]]:
    """Levels newly reached by settled spend, each reported once per period. Nothing is ever
    spent under a zero budget, so it raises no alerts."""
    if budget is None or state.spent <= 0:
        return state, []
    reached = [level for level in LEVELS if level not in state.crossed and state.spent * 100 >= budget * level]
    if not reached:
        return state, []
    return attrs.evolve(state, crossed=state.crossed | frozenset(reached)), reached
