"""Reported usage is checked before it is billed: the one place that decides what a request is charged for.

A provider's usage is a claim. `billed_usage` turns the claim (or its absence) into the usage the
ledger records and prices, with `Usage.source` saying which rule applied:

    provider          the provider's figures, valid and within the bounds: billed as reported
    estimated         no usage reported: the gateway's estimate (prompt text, delivered bytes)
    provider_invalid  reported but unusable (a count that is not a non-negative integer, a bool,
                      cached > prompt): the gateway's estimate instead; a bad number never lowers spend
    provider_capped   valid, but above what the reservation allowed: each count is billed at its
                      bound (prompt at the reservation's prompt upper bound, completion at the
                      output cap × n; cached counts dropped when the prompt is capped), and the
                      provider's figures are logged with the request id

Every billed count is a non-negative int within `UsageBounds`, so the cost of a billed usage never
exceeds the reservation's worst case at the same price (`policies.budget.worst_case_cost`): a hard
budget is never exceeded because of what an upstream reports. Where nothing bounded the output (no
`max_tokens`, no hard budget), `ABSURD_TOKENS` does. Recorded counts are the billed ones, so every
recorded cost is recomputable from the ledger (re-pricing, `replay --verify`).
"""

from __future__ import annotations

import attrs

from events.usage import Usage

ABSURD_TOKENS = 10_000_000  # no single request is billed beyond this many tokens of one kind


@attrs.frozen
class UsageBounds:
    """What a reservation allowed: prompt tokens at most (its upper bound), and completion tokens of
    all choices together when the provider was told a cap (None: nothing capped the output)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def is_valid(usage: Usage) -> bool:
    """Non-negative integer counts (not bools), cached within the prompt."""
    counts = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    return all(_count(value) for value in counts) and usage.cached_tokens <= usage.prompt_tokens


def _within(usage: Usage, bounds: UsageBounds) -> Usage:
    prompt_cap = ABSURD_TOKENS if bounds.prompt_tokens is None else min(bounds.prompt_tokens, ABSURD_TOKENS)
    output_cap = ABSURD_TOKENS if bounds.completion_tokens is None else min(bounds.completion_tokens, ABSURD_TOKENS)
    prompt = min(usage.prompt_tokens, prompt_cap)
    cached = usage.cached_tokens if prompt == usage.prompt_tokens else 0
    return Usage(prompt, min(usage.completion_tokens, output_cap), cached, usage.source)


def billed_usage(reported: Usage | None, estimate: Usage, bounds: UsageBounds) -> Usage:
    """The usage to record and price for a request that reported `reported` (None: nothing), whose
    gateway estimate is `estimate`, under `bounds`."""
    if reported is None:
        return _within(attrs.evolve(estimate, source="estimated"), bounds)
    if reported.source == "estimated":  # the gateway's own estimate, made by the caller
        return _within(reported, bounds)
    if reported.source == "provider_invalid" or not is_valid(reported):
        return _within(attrs.evolve(estimate, source="provider_invalid"), bounds)
    billed = _within(attrs.evolve(reported, source="provider"), bounds)
    if billed != attrs.evolve(reported, source="provider"):
        return attrs.evolve(billed, source="provider_capped")
    return billed
