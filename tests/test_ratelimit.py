"""Rate limits: seeds case A2, continuous refill, free refusals, all-or-nothing RPM+TPM, refunds, edges."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.ratelimit import Decision, RateLimit, RateState, adjust, check, check_all, quota

RPM = RateLimit(100)


def burst_at(limit: RateLimit, now: float, count: int) -> tuple[RateState, list[Decision]]:
    state, decisions = RateState(), []
    for _ in range(count):
        state, decision = check(limit, state, now)
        decisions.append(decision)
    return state, decisions


def test_a2_hundred_at_once_then_refused() -> None:
    _, decisions = burst_at(RPM, 1000.0, 150)
    assert all(d.allowed for d in decisions[:100])
    assert not any(d.allowed for d in decisions[100:])
    assert [d.quotas[0].remaining for d in decisions[:100]] == list(range(99, -1, -1))
    assert all(d.quotas[0].remaining == 0 and d.quotas[0].limit == 100 for d in decisions[100:])
    refused = decisions[100]
    assert refused.retry_after_s == pytest.approx(0.6) and not refused.never
    assert refused.quotas[0].reset_s == pytest.approx(60.0)


def test_waiting_retry_after_is_enough() -> None:
    state, decisions = burst_at(RPM, 1000.0, 101)
    wait = decisions[-1].retry_after_s
    _, early = check(RPM, state, 1000.0 + wait * 0.99)
    _, on_time = check(RPM, state, 1000.0 + wait)
    assert not early.allowed and on_time.allowed


def test_continuous_refill() -> None:
    state, _ = burst_at(RPM, 0.0, 100)
    assert quota(RPM, state, 30.0).remaining == 50
    assert quota(RPM, state, 30.0).reset_s == pytest.approx(30.0)
    allowed = 0
    while True:
        state, decision = check(RPM, state, 30.0)
        if not decision.allowed:
            break
        allowed += 1
    assert allowed == 50
    assert quota(RPM, state, 90.0) == quota(RPM, RateState(), 90.0)  # full again after a minute


def test_refused_checks_consume_nothing() -> None:
    state, _ = burst_at(RPM, 0.0, 100)
    for i in range(1000):
        new, decision = check(RPM, state, i * 0.0005)  # hammering for half a second
        assert not decision.allowed and new == state
    _, decision = check(RPM, state, 0.6)
    assert decision.allowed


def test_an_idle_bucket_is_full() -> None:
    assert quota(RPM, RateState(), 12345.0) == quota(RPM, RateState(level=100, at=0.0), 60.0)
    assert quota(RPM, RateState(), 0.0).remaining == 100


def test_cost_per_check() -> None:
    tpm = RateLimit(1000)
    state, decision = check(tpm, RateState(), 0.0, cost=700)
    assert decision.allowed and decision.quotas[0].remaining == 300
    unchanged, decision = check(tpm, state, 0.0, cost=301)
    assert not decision.allowed and unchanged == state
    assert decision.retry_after_s == pytest.approx(0.06)  # 1 token at 1000/60 per second
    _, decision = check(tpm, state, 0.0, cost=300)
    assert decision.allowed and decision.quotas[0].remaining == 0


def test_all_or_nothing_across_rpm_and_tpm() -> None:
    tpm = RateLimit(1000)
    (rpm_state, tpm_state), decision = check_all([(RPM, RateState(), 1), (tpm, RateState(), 600)], 0.0)
    assert decision.allowed
    assert [q.remaining for q in decision.quotas] == [99, 400]

    states, decision = check_all([(RPM, rpm_state, 1), (tpm, tpm_state, 600)], 0.0)
    assert not decision.allowed
    assert states == (rpm_state, tpm_state)  # RPM had room but is not charged
    assert [q.remaining for q in decision.quotas] == [99, 400]
    assert decision.quotas[0].retry_after_s == 0.0
    assert decision.retry_after_s == decision.quotas[1].retry_after_s == pytest.approx(200 / (1000 / 60))


def test_the_longest_wait_wins() -> None:
    rpm = RateLimit(1)
    tpm = RateLimit(60)
    states, _ = check_all([(rpm, RateState(), 1), (tpm, RateState(), 60)], 0.0)
    _, decision = check_all([(rpm, states[0], 1), (tpm, states[1], 30)], 0.0)
    assert [q.retry_after_s for q in decision.quotas] == pytest.approx([60.0, 30.0])
    assert decision.retry_after_s == pytest.approx(60.0)


def test_refund_after_settlement() -> None:
    tpm = RateLimit(1000)
    state, _ = check(tpm, RateState(), 0.0, cost=600)  # the upper-bound reservation
    state = adjust(tpm, state, 0.0, -400)  # actually used 200
    assert quota(tpm, state, 0.0).remaining == 800
    state = adjust(tpm, state, 0.0, -10_000)
    assert quota(tpm, state, 0.0).remaining == 1000
    assert state.level == 0.0  # a refund never makes more than a burst available


def test_extra_charge_is_debt() -> None:
    tpm = RateLimit(1000)
    state, _ = check(tpm, RateState(), 0.0, cost=900)
    state = adjust(tpm, state, 0.0, 300)  # the response was longer than estimated
    assert quota(tpm, state, 0.0).remaining == 0
    assert quota(tpm, state, 0.0).reset_s == pytest.approx(72.0)
    _, decision = check(tpm, state, 0.0, cost=1)
    assert decision.retry_after_s == pytest.approx(201 * 0.06)


def test_adjust_drains_first() -> None:
    state, _ = burst_at(RPM, 0.0, 100)
    state = adjust(RPM, state, 30.0, 0)
    assert state.level == pytest.approx(50.0) and state.at == 30.0


def test_limit_zero_allows_nothing() -> None:
    nothing = RateLimit(0)
    for cost in (0, 1, 5):
        state, decision = check(nothing, RateState(), 100.0, cost=cost)
        assert not decision.allowed and decision.never and decision.retry_after_s == math.inf
        assert state == RateState()
        assert decision.quotas[0].remaining == 0 and decision.quotas[0].limit == 0


def test_a_cost_above_the_burst_never_passes() -> None:
    tpm = RateLimit(1000)
    state, decision = check(tpm, RateState(), 0.0, cost=1001)
    assert not decision.allowed and decision.never and state == RateState()
    assert decision.quotas[0].remaining == 1000  # the bucket is full; it is the request that is too big
    _, decision = check_all([(RPM, RateState(), 1), (tpm, RateState(), 5000)], 0.0)
    assert decision.never and decision.quotas[0].retry_after_s == 0.0


def test_zero_cost_is_free() -> None:
    state, _ = burst_at(RPM, 0.0, 100)
    new, decision = check(RPM, state, 0.0, cost=0)
    assert decision.allowed and new == state


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match=r"^limit: must be >= 0, got -1$"):
        RateLimit(-1)
    with pytest.raises(ValueError, match=r"^period_s: must be a finite number > 0, got 0$"):
        RateLimit(10, period_s=0)
    with pytest.raises(ValueError, match="cost"):
        check(RPM, RateState(), 0.0, cost=-1)


def test_time_going_backwards_refills_nothing() -> None:
    state, _ = burst_at(RPM, 100.0, 100)
    _, decision = check(RPM, state, 50.0)
    assert not decision.allowed
    assert quota(RPM, state, 50.0).remaining == 0


def test_large_monotonic_clock_values() -> None:
    tpm = RateLimit(100_000_000)
    start = 10_000_000.0
    state, decision = check(tpm, RateState(), start, cost=100_000_000)
    assert decision.allowed
    state, decision = check(tpm, state, start + 30.0, cost=50_000_000)
    assert decision.allowed


# --- properties -----------------------------------------------------------------------------------------

limits = st.builds(RateLimit, st.integers(1, 50), st.sampled_from([1.0, 10.0, 60.0]))
# (arrival time, cost), in time order
arrivals = st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 20)), min_size=1, max_size=80).map(
    lambda gaps: [(sum(gap for gap, _ in gaps[: i + 1]), cost) for i, (_, cost) in enumerate(gaps)]
)


def run(limit: RateLimit, attempts: list[tuple[float, int]]) -> list[tuple[float, int, Decision]]:
    state, seen = RateState(), []
    for now, cost in attempts:
        state, decision = check(limit, state, now, cost)
        seen.append((now, cost, decision))
    return seen


@given(limits, arrivals)
def test_no_window_passes_more_than_burst_plus_rate(limit: RateLimit, attempts: list[tuple[float, int]]) -> None:
    passed = [(now, cost) for now, cost, decision in run(limit, attempts) if decision.allowed]
    for i, (start, _) in enumerate(passed):
        total = 0
        for end, cost in passed[i:]:
            total += cost
            assert total <= limit.limit + limit.rate * (end - start) + 1e-6


@given(limits, arrivals)
def test_refused_attempts_change_no_later_decision(limit: RateLimit, attempts: list[tuple[float, int]]) -> None:
    seen = run(limit, attempts)
    again = run(limit, [(now, cost) for now, cost, decision in seen if decision.allowed])
    assert [decision for _, _, decision in again] == [decision for _, _, decision in seen if decision.allowed]


@given(limits, arrivals, st.integers(0, 60))
def test_waiting_retry_after_always_suffices(limit: RateLimit, attempts: list[tuple[float, int]], cost: int) -> None:
    state = RateState()
    for now, spent in attempts:
        state, _ = check(limit, state, now, spent)
    now = attempts[-1][0]
    unchanged, decision = check(limit, state, now, cost)
    assert unchanged == state or decision.allowed
    if decision.never:
        assert cost > limit.limit
    elif not decision.allowed:
        _, later = check(limit, state, now + decision.retry_after_s, cost)
        assert later.allowed
