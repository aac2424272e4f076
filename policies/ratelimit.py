"""Rate limits (RPM, TPM) as leaky buckets, the arithmetic twin of GCRA; pure over `now` (monotonic seconds).

A `RateLimit` of `limit` units per `period_s` has rate r = limit / period_s and burst b = limit. Its
`RateState` is a level L (units in the bucket) measured at time `at`; the level drains continuously:

    L(now) = max(0, L − (now − at)·r)

A check of cost c fits when L(now) + c ≤ b, and then the level becomes L(now) + c. So b units may go at
once (100 RPM: requests 1–100 at one instant pass, 101 does not), and after that r units per second
(one request every 0.6 s). In any interval of length T at most b + r·T units pass. GCRA's theoretical
arrival time is `at + L/r`; the level form is used because summing integer costs at one instant is exact
in floating point (100 × 1 is exactly 100), where GCRA's 100 × 0.6 s is not.

- A refused check consumes nothing: the state comes back unchanged, so retrying clients are not punished.
- `check_all` is all-or-nothing over several limits (RPM and TPM): every limit is charged only if every
  one has room; otherwise none is, and `retry_after_s` is the longest of their waits.
- `adjust` corrects a charge after the fact (TPM reserves an upper-bound estimate; settlement knows the
  actual tokens). A refund never takes the level below 0 (no more than a full burst available); an extra
  charge may take it above the burst, and later checks then wait for it to drain.
- Numbers for OpenAI's headers, per limit (`Quota`): `limit`; `remaining`, the whole units available now;
  `reset_s`, seconds until the bucket is empty (full quota again); and `retry_after_s`.
- A limit of 0 refuses everything (configuration says "absent" for unlimited). A cost above the burst can
  never pass: its `retry_after_s` is `math.inf` and the decision says `never`, so the gateway can explain
  instead of asking the client to wait forever.

`now` should not go backwards; if it does, nothing drains. Comparisons allow a tolerance of one part in
10⁹ of the burst for floating-point rounding, far below one unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

_TOLERANCE = 1e-9


@attrs.frozen
class RateLimit:
    """`limit` units per `period_s` seconds, with bursts of `limit`. A limit of 0 allows nothing."""

    limit: int = attrs.field()
    period_s: float = attrs.field(default=60.0)

    @limit.validator
    def _check_limit(self, _: attrs.Attribute[int], value: int) -> None:
        if not value >= 0:
            raise ValueError(f"limit: must be >= 0, got {value!r}")

    @period_s.validator
    def _check_period(self, _: attrs.Attribute[float], value: float) -> None:
        if not value > 0 or math.isinf(value):
            raise ValueError(f"period_s: must be a finite number > 0, got {value:g}")

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.limit / self.period_s

    @property
    def tolerance(self) -> float:
        return _TOLERANCE * max(self.limit, 1)


@attrs.frozen
class RateState:
    """The bucket's level (units in it) at time `at`. The default is an empty bucket: the full quota is available."""

    level: float = 0.0
    at: float = 0.0


@attrs.frozen
class Quota:
    """One limit after a decision, as OpenAI's `x-ratelimit-*` headers and `Retry-After` describe it."""

    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float  # 0.0 when this limit has room for the cost; math.inf when it never will


@attrs.frozen
class Decision:
    allowed: bool
    retry_after_s: float  # 0.0 when allowed; the longest wait of the limits that refused; math.inf if never
    quotas: tuple[Quota, ...]  # one per limit checked, in order; `remaining` reflects any charge made

    @property
    def never(self) -> bool:
        """A cost above some limit's burst (or a limit of 0): no amount of waiting helps."""
        return math.isinf(self.retry_after_s)


def _level(limit: RateLimit, state: RateState, now: float) -> float:
    return max(0.0, state.level - max(0.0, now - state.at) * limit.rate)


def _drained(limit: RateLimit, state: RateState, now: float) -> RateState:
    return RateState(_level(limit, state, now), max(state.at, now))


def _wait(limit: RateLimit, level: float, cost: float) -> float:
    """Seconds until `cost` fits over `level`: 0 if it does now, inf if it never will."""
    if limit.limit == 0 or cost > limit.limit:
        return math.inf
    excess = level + cost - limit.limit
    return 0.0 if excess <= limit.tolerance else excess / limit.rate


def quota(limit: RateLimit, state: RateState, now: float, cost: float = 1) -> Quota:
    """The header numbers for `limit` now; `retry_after_s` is the wait for a check of `cost`."""
    level = _level(limit, state, now)
    return Quota(
        limit=limit.limit,
        remaining=max(0, math.floor(limit.limit - level + limit.tolerance)),
        reset_s=0.0 if level <= 0 else level / limit.rate if limit.rate > 0 else math.inf,
        retry_after_s=_wait(limit, level, cost),
    )


def check_all(
    checks: Sequence[tuple[RateLimit, RateState, float]], now: float
) -> tuple[tuple[RateState, ...], Decision]:
    """Charge `cost` to every limit if all have room, else to none. Returns the states to keep and the decision."""
    if any(cost < 0 for _, _, cost in checks):
        raise ValueError("a rate-limit cost must be >= 0")
    waits = [_wait(limit, _level(limit, state, now), cost) for limit, state, cost in checks]
    allowed = all(wait == 0 for wait in waits)
    if allowed:
        states = tuple(
            attrs.evolve(_drained(limit, state, now), level=_level(limit, state, now) + cost)
            for limit, state, cost in checks
        )
    else:
        states = tuple(state for _, state, _ in checks)
    quotas = tuple(
        attrs.evolve(quota(limit, new, now), retry_after_s=wait)
        for (limit, _, _), new, wait in zip(checks, states, waits, strict=True)
    )
    return states, Decision(allowed, max(waits, default=0.0), quotas)


def check(limit: RateLimit, state: RateState, now: float, cost: float = 1) -> tuple[RateState, Decision]:
    """One limit: charge `cost` if it fits, else leave the state as it is."""
    (new,), decision = check_all([(limit, state, cost)], now)
    return new, decision


def adjust(limit: RateLimit, state: RateState, now: float, delta_cost: float) -> RateState:
    """Charge `delta_cost` more (or refund it, if negative) after the fact, without a check."""
    drained = _drained(limit, state, now)
    return attrs.evolve(drained, level=max(0.0, drained.level + delta_cost))


def never_message(tenant: str, tokens: int, never: Mapping[str, Quota]) -> str:
    """Why a request can never pass, by limit kind ("requests", "tokens") of the limits that refuse
    it forever; the token count is named only where tokens are the reason."""
    reasons = []
    if "requests" in never:
        reasons.append(f"tenant {tenant!r} has a requests-per-minute limit of {never['requests'].limit}")
    if "tokens" in never:
        reasons.append(
            f"this request may use up to {tokens} tokens, more than the tokens-per-minute limit of tenant "
            f"{tenant!r} ({never['tokens'].limit}) allows at once"
        )
    if not reasons:
        return f"This request can never pass tenant {tenant!r}'s rate limits."
    text = "; ".join(reasons)
    return f"{text[0].upper()}{text[1:]}, so no amount of waiting admits it."
