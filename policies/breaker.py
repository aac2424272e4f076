"""A provider's circuit breaker: a pure state machine over `now` (monotonic seconds).

    closed ──(`consecutive_failures` failures in a row, or failure ratio ≥ `failure_ratio`
              over the window with ≥ `min_requests` requests in it)──────────────────▶ open
    open ──(the first `admit` at or after opened_at + `cooldown_s`)──────────────────▶ half_open
    half_open ──(`success_threshold` probe successes)────────────────────────────────▶ closed
    half_open ──(any probe failure)──────────────────────────────────────────────────▶ open (a new cooldown)

- **closed** admits everything. Successes and failures go into a rolling window of `window_s` seconds,
  kept as `WINDOW_BUCKETS` buckets of counts, so memory is bounded: an outcome leaves the window between
  0.9·`window_s` and `window_s` after it happened. A success resets the run of consecutive failures.
  Both trips are checked when a failure is recorded (run first, then failures/requests ≥ `failure_ratio`).
  Entering closed starts from an empty window and no failures.
- **open** refuses, with `retry_at` = opened_at + `cooldown_s`.
- **half_open** admits at most `half_open_probes` requests at a time (probes); the rest are refused with
  `retry_at` None (it depends on when a probe finishes).

Outcomes are "success", "failure" (a retryable provider failure) and "ignored" (a client error, a client
cancellation): an ignored outcome moves nothing, except that an ignored probe frees its slot.

Every transition starts a new epoch. `admit` hands out a `Ticket` stamped with the epoch, and `record`
counts an outcome only in the epoch its request was admitted in: a slow request admitted before a trip
can neither re-trip the breaker later, nor close it, nor free a probe slot it never held.

`admit` and `record` return the new state and the `Transition` they caused (or None), which the runtime
journals as a `Provider` event. Nothing here does I/O or reads a clock; `now` must never decrease.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs

State = Literal["closed", "open", "half_open"]
Outcome = Literal["success", "failure", "ignored"]
WINDOW_BUCKETS = 10


def _positive_number(name: str, value: float) -> str | None:
    if not value > 0 or math.isinf(value):
        return f"{name}: must be a finite number > 0, got {value:g}"
    return None


def _positive_count(name: str, value: int) -> str | None:
    return None if value > 0 else f"{name}: must be > 0, got {value!r}"


@attrs.frozen
class BreakerConfig:
    """Thresholds of one provider's breaker. Constructing an invalid one raises ValueError naming every bad field."""

    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    window_s: float = 60.0
    min_requests: int = 10
    cooldown_s: float = 30.0
    half_open_probes: int = 1
    success_threshold: int = 2

    def __attrs_post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """One line per bad field, e.g. `cooldown_s: must be a finite number > 0, got 0`."""
        found = [
            _positive_count("consecutive_failures", self.consecutive_failures),
            None if 0 < self.failure_ratio <= 1 else f"failure_ratio: must be in (0, 1], got {self.failure_ratio:g}",
            _positive_number("window_s", self.window_s),
            _positive_count("min_requests", self.min_requests),
            _positive_number("cooldown_s", self.cooldown_s),
            _positive_count("half_open_probes", self.half_open_probes),
            _positive_count("success_threshold", self.success_threshold),
        ]
        return [problem for problem in found if problem is not None]


@attrs.frozen
class Bucket:
    """Outcomes recorded in one slice of the window: slice `index` covers [index·w, (index+1)·w), w = window_s / 10."""

    index: int
    requests: int
    failures: int


@attrs.frozen
class BreakerState:
    state: State = "closed"
    epoch: int = 0
    consecutive_failures: int = 0
    window: tuple[Bucket, ...] = ()
    opened_at: float | None = None
    probes_in_flight: int = 0
    probe_successes: int = 0


@attrs.frozen
class Ticket:
    """Proof of admission: give it back to `record` with the request's outcome."""

    epoch: int
    probe: bool


@attrs.frozen
class Verdict:
    """`ticket` when admitted; otherwise `retry_at`, the earliest time it may admit (None: when a probe finishes)."""

    ticket: Ticket | None
    retry_at: float | None = None

    @property
    def allowed(self) -> bool:
        return self.ticket is not None


@attrs.frozen
class Transition:
    from_state: State
    to_state: State
    reason: str


@attrs.frozen
class BreakerSnapshot:
    """Plain data for statistics; window counts are as of `now`."""

    state: State
    requests: int
    failures: int
    consecutive_failures: int
    half_open_at: float | None
    probes_in_flight: int
    probe_successes: int


def _bucket_index(config: BreakerConfig, now: float) -> int:
    return math.floor(now * WINDOW_BUCKETS / config.window_s)


def _live(config: BreakerConfig, window: tuple[Bucket, ...], now: float) -> tuple[Bucket, ...]:
    oldest = _bucket_index(config, now) - WINDOW_BUCKETS + 1
    return tuple(bucket for bucket in window if bucket.index >= oldest)


def _counted(config: BreakerConfig, window: tuple[Bucket, ...], now: float, failed: bool) -> tuple[Bucket, ...]:
    live = _live(config, window, now)
    index = _bucket_index(config, now)
    if live and live[-1].index == index:
        last = live[-1]
        return (*live[:-1], attrs.evolve(last, requests=last.requests + 1, failures=last.failures + int(failed)))
    return (*live, Bucket(index, 1, int(failed)))


def _move(state: BreakerState, to_state: State, reason: str, now: float) -> tuple[BreakerState, Transition]:
    """Start a new epoch in `to_state`: open remembers when; closed starts from an empty window."""
    moved = attrs.evolve(
        state,
        state=to_state,
        epoch=state.epoch + 1,
        opened_at=now if to_state == "open" else None,
        probes_in_flight=0,
        probe_successes=0,
    )
    if to_state == "closed":
        moved = attrs.evolve(moved, consecutive_failures=0, window=())
    return moved, Transition(state.state, to_state, reason)


def admit(config: BreakerConfig, state: BreakerState, now: float) -> tuple[BreakerState, Verdict, Transition | None]:
    """May a request go to this provider now? Moves open → half_open once the cooldown is over."""
    transition = None
    if state.state == "open":
        assert state.opened_at is not None
        half_open_at = state.opened_at + config.cooldown_s
        if now < half_open_at:
            return state, Verdict(None, half_open_at), None
        state, transition = _move(state, "half_open", f"cooldown of {config.cooldown_s:g}s over", now)
    if state.state == "closed":
        return state, Verdict(Ticket(state.epoch, probe=False)), transition
    if state.probes_in_flight >= config.half_open_probes:
        return state, Verdict(None), transition
    state = attrs.evolve(state, probes_in_flight=state.probes_in_flight + 1)
    return state, Verdict(Ticket(state.epoch, probe=True)), transition


def record(
    config: BreakerConfig, state: BreakerState, now: float, ticket: Ticket, outcome: Outcome
) -> tuple[BreakerState, Transition | None]:
    """Count the outcome of a request admitted with `ticket`."""
    if ticket.epoch != state.epoch or (outcome == "ignored" and not ticket.probe):
        return state, None
    if state.state == "half_open":
        if outcome == "failure":
            return _move(state, "open", "probe failed", now)
        freed = attrs.evolve(state, probes_in_flight=state.probes_in_flight - 1)
        if outcome == "ignored":
            return freed, None
        successes = state.probe_successes + 1
        if successes >= config.success_threshold:
            return _move(state, "closed", f"{successes} probe successes", now)
        return attrs.evolve(freed, probe_successes=successes), None
    # closed (an open breaker hands out no tickets, so a ticket of its epoch cannot exist)
    failed = outcome == "failure"
    window = _counted(config, state.window, now, failed)
    state = attrs.evolve(state, consecutive_failures=state.consecutive_failures + 1 if failed else 0, window=window)
    if not failed:
        return state, None
    if state.consecutive_failures >= config.consecutive_failures:
        return _move(state, "open", f"{state.consecutive_failures} consecutive failures", now)
    requests = sum(bucket.requests for bucket in window)
    failures = sum(bucket.failures for bucket in window)
    if requests >= config.min_requests and failures / requests >= config.failure_ratio:
        reason = f"failure ratio {failures / requests:.2f} over {config.window_s:g}s ({requests} requests)"
        return _move(state, "open", reason, now)
    return state, None


def snapshot(config: BreakerConfig, state: BreakerState, now: float) -> BreakerSnapshot:
    live = _live(config, state.window, now)
    return BreakerSnapshot(
        state=state.state,
        requests=sum(bucket.requests for bucket in live),
        failures=sum(bucket.failures for bucket in live),
        consecutive_failures=state.consecutive_failures,
        half_open_at=None if state.opened_at is None else state.opened_at + config.cooldown_s,
        probes_in_flight=state.probes_in_flight,
        probe_successes=state.probe_successes,
    )
