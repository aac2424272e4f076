"""Reported usage is checked before it is billed: the one place that decides what a request is charged for.

A provider's usage is a claim. `billed_usage` turns the claim (or its absence) into the usage the
ledger records and prices, with `Usage.source` saying which rule applied:

    provider          the provider's figures, valid and within the bounds: billed as reported
    estimated         no usage reported: the gateway's estimate (prompt text, delivered bytes)
    provider_invalid  reported but unusable (a count that is not a non-negative integer, a bool,
                      cached > prompt): the gateway's estimate instead; a bad number never lowers spend
    provider_capped   valid, but above what the reservation allowed: each count is billed at its
                      bound (prompt at the reservation's prompt upper bound, completion at the
                      output cap × n; cached counts dropped when the prompt is capped)

For the last two the provider's figures are recorded too, on the terminal event (`reported_usage`,
from `reported_record`): its usage object as it came, made JSON-safe and bounded in size — an audit
trail of the claim, never a billing input.

Every billed count is a non-negative int within `UsageBounds`, so the cost of a billed usage never
exceeds the reservation's worst case at the same price (`policies.budget.worst_case_cost`): a hard
budget is never exceeded because of what an upstream reports. Where nothing bounded the output (no
`max_tokens`, no hard budget), `ABSURD_TOKENS` does. Recorded counts are the billed ones, so every
recorded cost is recomputable from the ledger (re-pricing, `replay --verify`).
"""

from __future__ import annotations

from typing import Any

import attrs

from events.usage import Usage

ABSURD_TOKENS = 10_000_000  # no single request is billed beyond this many tokens of one kind
RECORD_ITEMS = 64  # values kept of a reported usage object (nested ones included)
RECORD_DEPTH = 3  # objects nested deeper are summarised
RECORD_TEXT = 64  # characters kept of a string (keys included)
RECORD_DIGITS = 30  # an integer with more digits is kept as a summary string


@attrs.frozen
class UsageBounds:
    """What a reservation allowed: prompt tokens at most (its upper bound), and completion tokens of
    all choices together when the provider was told a cap (None: nothing capped the output)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def is_valid(usage: Usage) -> bool:
    """Non-negative integer counts (not bools); cache reads and writes together within the prompt,
    1-hour writes within the writes."""
    counts = (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
    )
    return (
        all(_count(value) for value in counts)
        and usage.cached_tokens + usage.cache_write_tokens <= usage.prompt_tokens
        and usage.cache_write_1h_tokens <= usage.cache_write_tokens
    )


def _within(usage: Usage, bounds: UsageBounds) -> Usage:
    prompt_cap = ABSURD_TOKENS if bounds.prompt_tokens is None else min(bounds.prompt_tokens, ABSURD_TOKENS)
    output_cap = ABSURD_TOKENS if bounds.completion_tokens is None else min(bounds.completion_tokens, ABSURD_TOKENS)
    prompt = min(usage.prompt_tokens, prompt_cap)
    kept = prompt == usage.prompt_tokens  # a capped prompt drops its cache counts (billed at the input rate)
    return Usage(
        prompt,
        min(usage.completion_tokens, output_cap),
        usage.cached_tokens if kept else 0,
        usage.source,
        cache_write_tokens=usage.cache_write_tokens if kept else 0,
        cache_write_1h_tokens=usage.cache_write_1h_tokens if kept else 0,
    )


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


def reported_so_far(reported: Usage | None, estimate: Usage) -> Usage:
    """The usage of a stream cut before its final usage (a client leaving, a failure mid-answer),
    from what the provider reported so far (`reported`: Anthropic's `message_start` input, its last
    `message_delta` output) and the gateway's `estimate` of it: the provider's counts, the output at
    least the estimate of what was delivered. Source `provider` when every count is the provider's,
    `estimated` when the output is the estimate (the provider's output figure lagged behind what was
    sent). Nothing reported, or reported but unusable: the estimate (`billed_usage` decides on it)."""
    if reported is None or reported.source != "provider" or not is_valid(reported):
        return reported if reported is not None and reported.source == "provider_invalid" else estimate
    if reported.completion_tokens >= estimate.completion_tokens:
        return reported
    return attrs.evolve(reported, completion_tokens=estimate.completion_tokens, source="estimated")


def reported_record(reported: Usage | None, billed: Usage) -> dict[str, Any] | None:
    """What the ledger keeps of the provider's claim when `billed` is not it (sources
    `provider_invalid`, `provider_capped`); None otherwise. The usage object as it came when the
    adapter kept it (else the counts read), JSON-safe and bounded: at most `RECORD_ITEMS` values and
    `RECORD_DEPTH` levels, strings cut to `RECORD_TEXT` characters (lone surrogates replaced), floats
    and huge integers as strings (money and counts never travel as floats), and the keys the store's
    JSON uses for typed values (`_type_`, `_data_`) escaped with a leading `~`, so no claim can make
    the ledger unreadable."""
    if reported is None or billed.source not in ("provider_invalid", "provider_capped"):
        return None
    claim: Any = reported.reported
    if not isinstance(claim, dict):
        counts = (reported.prompt_tokens, reported.completion_tokens, reported.cached_tokens)
        claim = dict(zip(("prompt_tokens", "completion_tokens", "cached_tokens"), counts, strict=True))
    budget = [RECORD_ITEMS]
    safe = _json_safe(claim, RECORD_DEPTH, budget)
    return safe if isinstance(safe, dict) else {"reported": safe}


def _text(value: str) -> str:
    cut = value if len(value) <= RECORD_TEXT else value[:RECORD_TEXT] + "…"
    return cut.encode("utf-8", "replace").decode("utf-8")


def _json_safe(value: Any, depth: int, budget: list[int]) -> Any:
    if value is None or type(value) is bool:
        return value
    if type(value) is int:
        return value if abs(value) < 10**RECORD_DIGITS else f"<integer of more than {RECORD_DIGITS} digits>"
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list | tuple):
        if depth <= 0:
            return f"<{type(value).__name__} of {len(value)}>"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        kept: list[tuple[Any, Any]] = []
        for key, item in items:
            if budget[0] <= 0:
                kept.append(("…", f"{len(value) - len(kept)} more"))
                break
            budget[0] -= 1
            kept.append((key, _json_safe(item, depth - 1, budget)))
        if isinstance(value, dict):
            return {_key(key): item for key, item in kept}
        return [item for _, item in kept]
    return _text(f"<{type(value).__name__}>")


def _key(key: Any) -> str:
    text = _text(key if isinstance(key, str) else repr(key))
    return "~" + text if text in ("_type_", "_data_") or text.startswith("~") else text
