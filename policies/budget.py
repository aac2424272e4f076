"""Budgets: reserve the worst case before the call, replace it by the actual cost after.

    worst case = prompt upper bound × max(input, cached input) price
               + max output tokens × n × output price                               (per 1e6 tokens)

The prompt upper bound counts one token per UTF-8 byte of the request body as JSON (no tokenizer
produces more; the body holds every text the provider bills: messages, names, system/developer
content, tools, functions, tool_choice, response_format schemas), plus allowances for what
providers add around that text:
    TOKENS_PER_MESSAGE   per message (role and separators)
    TOKENS_PER_REQUEST   per request (the reply's priming)
    TOKENS_FOR_TOOLS     once when tools are declared (Anthropic's tool-use system prompt is
                         346 tokens; OpenAI's function preamble is smaller), plus TOKENS_PER_TOOL each
    IMAGE_PART_TOKENS    per image part. A stated bound above the documented maxima: OpenAI's tile
                         scheme (gpt-4o, gpt-4.1: 85 + 170 × 8 tiles = 1 445 for the largest
                         high-detail image), its patch scheme (gpt-4.1-mini: 1 536 patches × 1.62 =
                         2 489) and Anthropic's (≈ 1 600 for 1.15 megapixels). Not covered: models
                         that bill images at a multiple of these (gpt-4o-mini counts 2 833 + 5 667 per
                         tile, priced to cost the same as gpt-4o) and files referenced by id.
A request for `n` choices may produce `n` × max output tokens.

A *hard* budget admits a request only if spent + reserved + worst case stays within the budget, and
settles the usage `policies.usage` bills, which stays within the reservation's token counts, so
concurrent requests and hostile upstreams can never overspend it (bound 0, given the price in force
at admission is the one the request is priced at); a *soft* budget admits while
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
TOKENS_FOR_TOOLS = 1024
TOKENS_PER_TOOL = 16
IMAGE_PART_TOKENS = 2560


def prompt_upper_bound(prompt_bytes: int, messages: int, images: int = 0, tools: int = 0) -> int:
    """At least as many input tokens as any provider bills for the request (see the module docstring)."""
    tool_allowance = TOKENS_FOR_TOOLS + TOKENS_PER_TOOL * tools if tools else 0
    return (
        prompt_bytes + TOKENS_PER_MESSAGE * messages + TOKENS_PER_REQUEST + IMAGE_PART_TOKENS * images + tool_allowance
    )


def worst_case_cost(prompt_tokens: int, output_tokens: int, price: Price) -> Decimal:
    """The most `prompt_tokens` in and `output_tokens` out (all choices together) can cost; never
    below `policies.cost.cost_of` of any usage within those counts: every prompt token at the
    dearest input rate (plain, cache read, cache write 5-minute or 1-hour) of the dearest tier, every
    output token at the dearest output rate, plus the per-request fee."""
    rates = price.all_rates
    input_rate = max(r.max_input_rate for r in rates)
    output_rate = max(r.output_per_mtok for r in rates)
    return usd((prompt_tokens * input_rate + output_tokens * output_rate) / MTOK + price.fee)


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
