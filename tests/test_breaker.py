"""The circuit breaker: seeds case A6, ratio trips, ignored outcomes, validation, and its invariants."""

from __future__ import annotations

import math

import attrs
import cattrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from policies.breaker import (
    BreakerConfig,
    BreakerState,
    Outcome,
    Ticket,
    Transition,
    admit,
    record,
    snapshot,
)

VALID_MOVES = {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}


class Driver:
    """Feeds one breaker and keeps the transitions it reports."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = BreakerState()
        self.transitions: list[Transition] = []

    def admit(self, now: float) -> Ticket | None:
        self.state, verdict, transition = admit(self.config, self.state, now)
        self._note(transition)
        return verdict.ticket

    def record(self, now: float, ticket: Ticket, outcome: Outcome) -> None:
        self.state, transition = record(self.config, self.state, now, ticket, outcome)
        self._note(transition)

    def call(self, now: float, outcome: Outcome) -> bool:
        """Admit and finish one request at `now`; False if it was refused."""
        ticket = self.admit(now)
        if ticket is None:
            return False
        self.record(now, ticket, outcome)
        return True

    def phase(self) -> str:
        return self.state.state

    def _note(self, transition: Transition | None) -> None:
        if transition is not None:
            self.transitions.append(transition)

    @property
    def moves(self) -> list[tuple[str, str, str]]:
        return [(t.from_state, t.to_state, t.reason) for t in self.transitions]


def test_a6_trip_probe_close_and_reopen() -> None:
    config = BreakerConfig(consecutive_failures=2, cooldown_s=0.05, half_open_probes=2, success_threshold=2)
    breaker = Driver(config)

    assert breaker.call(1.000, "failure")
    assert breaker.state.state == "closed"
    assert breaker.call(1.001, "failure")
    assert breaker.moves == [("closed", "open", "2 consecutive failures")]

    state, verdict, transition = admit(config, breaker.state, 1.02)
    assert not verdict.allowed and verdict.retry_at == pytest.approx(1.051) and transition is None
    assert state == breaker.state

    # After the cooldown: half-open, and only K = 2 probes at a time.
    first = breaker.admit(1.06)
    second = breaker.admit(1.06)
    assert first is not None and first.probe and second is not None and second.probe
    assert breaker.moves[-1] == ("open", "half_open", "cooldown of 0.05s over")
    state, verdict, _ = admit(config, breaker.state, 1.06)
    assert not verdict.allowed and verdict.retry_at is None
    assert snapshot(config, breaker.state, 1.06).probes_in_flight == 2

    breaker.record(1.07, first, "success")
    assert breaker.phase() == "half_open"
    breaker.record(1.08, second, "success")
    assert breaker.moves[-1] == ("half_open", "closed", "2 probe successes")
    assert snapshot(config, breaker.state, 1.08) == snapshot(config, BreakerState(), 1.08)

    # Trip again; a probe failure re-opens with a new cooldown from the probe's failure.
    assert breaker.call(2.0, "failure") and breaker.call(2.0, "failure")
    probe = breaker.admit(2.1)
    assert probe is not None and probe.probe
    breaker.record(2.2, probe, "failure")
    assert breaker.moves[-1] == ("half_open", "open", "probe failed")
    _, verdict, _ = admit(config, breaker.state, 2.24)
    assert not verdict.allowed and verdict.retry_at == pytest.approx(2.25)
    assert breaker.admit(2.26) is not None


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = Driver(BreakerConfig(consecutive_failures=3, min_requests=1000))
    for outcome in ["failure", "failure", "success", "failure", "failure"]:
        assert breaker.call(0.0, outcome)  # type: ignore[arg-type]
    assert breaker.state.state == "closed" and breaker.state.consecutive_failures == 2
    assert breaker.call(0.0, "failure")
    assert breaker.moves == [("closed", "open", "3 consecutive failures")]


def test_ratio_trips_only_with_min_requests() -> None:
    config = BreakerConfig(consecutive_failures=100, failure_ratio=0.5, window_s=60, min_requests=10)
    breaker = Driver(config)
    for i in range(9):  # 9 requests, 5 failures: a ratio above 0.5 but too few requests
        assert breaker.call(float(i), "failure" if i % 2 == 0 else "success")
    assert breaker.state.state == "closed"
    assert breaker.call(9.0, "success")  # successes never trip
    assert breaker.state.state == "closed"
    assert breaker.call(10.0, "failure")  # 6 of 11
    assert breaker.moves == [("closed", "open", "failure ratio 0.55 over 60s (11 requests)")]


def test_ratio_below_threshold_does_not_trip() -> None:
    breaker = Driver(BreakerConfig(consecutive_failures=100, failure_ratio=0.7, min_requests=10))
    for i in range(30):
        assert breaker.call(float(i), "failure" if i % 3 else "success")  # 2 of every 3 fail: 0.67 < 0.7
    assert breaker.state.state == "closed"
    snap = snapshot(breaker.config, breaker.state, 29.0)
    assert (snap.requests, snap.failures) == (30, 20)


def test_exact_ratio_trips() -> None:
    breaker = Driver(BreakerConfig(consecutive_failures=100, failure_ratio=0.7, min_requests=10))
    for outcome in ["success"] * 3 + ["failure"] * 7:
        breaker.call(0.0, outcome)  # type: ignore[arg-type]
    assert breaker.moves == [("closed", "open", "failure ratio 0.70 over 60s (10 requests)")]


def test_old_failures_leave_the_window() -> None:
    config = BreakerConfig(consecutive_failures=100, failure_ratio=0.5, window_s=60, min_requests=10)
    breaker = Driver(config)
    for i in range(9):
        assert breaker.call(i * 0.1, "failure")
    assert snapshot(config, breaker.state, 1.0).failures == 9
    assert snapshot(config, breaker.state, 61.0).requests == 0
    assert breaker.call(61.0, "failure")  # 1 request in the window, not 10
    assert breaker.state.state == "closed"
    assert snapshot(config, breaker.state, 61.0).requests == 1


def test_window_memory_is_bounded() -> None:
    config = BreakerConfig(consecutive_failures=100, min_requests=10**9)
    breaker = Driver(config)
    for i in range(10_000):
        breaker.call(i * 0.37, "success" if i % 2 else "failure")
        assert len(breaker.state.window) <= 10


def test_ignored_outcomes_do_not_move_a_closed_breaker() -> None:
    breaker = Driver(BreakerConfig(consecutive_failures=2))
    assert breaker.call(0.0, "failure")
    before = breaker.state
    for _ in range(50):
        assert breaker.call(0.0, "ignored")
    assert breaker.state == before
    assert breaker.call(0.0, "failure")
    assert breaker.moves == [("closed", "open", "2 consecutive failures")]


def test_an_ignored_probe_frees_its_slot() -> None:
    config = BreakerConfig(consecutive_failures=1, cooldown_s=1, half_open_probes=1, success_threshold=1)
    breaker = Driver(config)
    breaker.call(0.0, "failure")
    probe = breaker.admit(1.0)
    assert probe is not None and breaker.admit(1.0) is None
    breaker.record(1.0, probe, "ignored")
    assert breaker.state.state == "half_open" and breaker.state.probe_successes == 0
    probe = breaker.admit(1.0)
    assert probe is not None
    breaker.record(1.0, probe, "success")
    assert breaker.phase() == "closed"


def test_late_outcomes_from_an_earlier_epoch_are_dropped() -> None:
    config = BreakerConfig(consecutive_failures=1, cooldown_s=1, half_open_probes=2, success_threshold=1)
    breaker = Driver(config)
    slow = breaker.admit(0.0)
    assert slow is not None
    breaker.call(0.0, "failure")  # trips while `slow` is still running
    old_probe = breaker.admit(1.0)
    breaker.call(1.0, "failure")  # another probe fails: open again, `old_probe` still running
    assert old_probe is not None and breaker.state.state == "open"
    assert breaker.admit(2.0) is not None  # half-open again, one of two slots taken
    before = breaker.state
    for ticket in (slow, old_probe):
        for outcome in ("success", "failure", "ignored"):
            breaker.record(2.0, ticket, outcome)
            assert breaker.state == before


def test_snapshot() -> None:
    config = BreakerConfig(consecutive_failures=3, cooldown_s=30)
    breaker = Driver(config)
    breaker.call(5.0, "success")
    breaker.call(5.0, "failure")
    breaker.call(6.0, "failure")
    snap = snapshot(config, breaker.state, 6.0)
    assert (snap.state, snap.requests, snap.failures, snap.consecutive_failures) == ("closed", 3, 2, 2)
    assert snap.half_open_at is None
    breaker.call(7.0, "failure")
    snap = snapshot(config, breaker.state, 8.0)
    assert (snap.state, snap.half_open_at, snap.probes_in_flight) == ("open", 37.0, 0)


# --- configuration --------------------------------------------------------------------------------------

FIELDS = [
    "consecutive_failures",
    "failure_ratio",
    "window_s",
    "min_requests",
    "cooldown_s",
    "half_open_probes",
    "success_threshold",
]


def test_defaults() -> None:
    assert BreakerConfig() == BreakerConfig(5, 0.5, 60, 10, 30, 1, 2)
    assert BreakerConfig().problems() == []
    assert BreakerConfig(failure_ratio=1.0).failure_ratio == 1.0


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_each_non_positive_field_is_named(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: must be .*, got {value}$"):
        BreakerConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"), [("failure_ratio", 1.5), ("failure_ratio", math.nan), ("cooldown_s", math.inf)]
)
def test_out_of_range_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: must be"):
        BreakerConfig(**{field: value})  # type: ignore[arg-type]


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ValueError, match="cooldown_s") as caught:
        BreakerConfig(**dict.fromkeys(FIELDS, 0))
    problems = str(caught.value).split("; ")
    assert [problem.partition(":")[0] for problem in problems] == FIELDS
    assert "cooldown_s: must be a finite number > 0, got 0" in problems


def test_cattrs_reports_the_path() -> None:
    @attrs.frozen
    class Provider:
        name: str
        breaker: BreakerConfig = BreakerConfig()

    converter = cattrs.Converter(detailed_validation=True)
    assert converter.structure({"name": "a", "breaker": {"cooldown_s": 5}}, Provider).breaker.cooldown_s == 5
    with pytest.raises(cattrs.ClassValidationError) as caught:
        converter.structure({"name": "a", "breaker": {"cooldown_s": 0}}, Provider)
    messages = cattrs.transform_error(caught.value, path="$", format_exception=lambda error, _: str(error))
    assert messages == ["cooldown_s: must be a finite number > 0, got 0 @ $.breaker"]


# --- properties -----------------------------------------------------------------------------------------

configs = st.builds(
    BreakerConfig,
    consecutive_failures=st.integers(1, 4),
    failure_ratio=st.sampled_from([0.25, 0.5, 1.0]),
    window_s=st.sampled_from([1.0, 10.0]),
    min_requests=st.integers(1, 5),
    cooldown_s=st.sampled_from([0.1, 1.0, 5.0]),
    half_open_probes=st.integers(1, 3),
    success_threshold=st.integers(1, 3),
)
calls = st.lists(
    st.tuples(st.sampled_from([0.0, 0.05, 0.5, 2.0, 6.0]), st.sampled_from(["success", "failure"])), max_size=60
)


@given(configs, calls, st.lists(st.tuples(st.integers(0, 60), st.integers(1, 3)), max_size=20))
def test_interleaved_ignored_outcomes_change_nothing(
    config: BreakerConfig, sequence: list[tuple[float, Outcome]], extra: list[tuple[int, int]]
) -> None:
    ignored_before = {position: count for position, count in extra}
    plain, noisy = Driver(config), Driver(config)
    plain_verdicts, noisy_verdicts = [], []
    now = 0.0
    for position, (step, outcome) in enumerate(sequence):
        now += step
        for _ in range(ignored_before.get(position, 0)):
            noisy.call(now, "ignored")
        plain_verdicts.append(plain.call(now, outcome))
        noisy_verdicts.append(noisy.call(now, outcome))
    assert noisy_verdicts == plain_verdicts
    assert noisy.moves == plain.moves
    assert snapshot(config, noisy.state, now) == snapshot(config, plain.state, now)


class BreakerMachine(RuleBasedStateMachine):
    """Random arrivals, completions in any order and time steps; the breaker's promises hold throughout."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.running: list[Ticket] = []

    @initialize(config=configs)
    def start(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = BreakerState()

    def check(self, before: BreakerState, transition: Transition | None) -> None:
        if transition is not None:
            assert (transition.from_state, transition.to_state) in VALID_MOVES
            assert transition.from_state == before.state
            assert self.state.state == transition.to_state

    @rule(step=st.sampled_from([0.0, 0.01, 0.1, 1.0, 5.0]))
    def wait(self, step: float) -> None:
        self.now += step

    @rule()
    def arrive(self) -> None:
        before = self.state
        self.state, verdict, transition = admit(self.config, before, self.now)
        self.check(before, transition)
        if before.state == "open":
            assert before.opened_at is not None
            if self.now < before.opened_at + self.config.cooldown_s:
                assert not verdict.allowed and verdict.retry_at == before.opened_at + self.config.cooldown_s
        if verdict.ticket is not None:
            assert verdict.ticket.probe == (self.state.state == "half_open")
            self.running.append(verdict.ticket)
        else:
            assert verdict.retry_at is None or verdict.retry_at > self.now

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 100), outcome=st.sampled_from(["success", "failure", "ignored"]))
    def finish(self, pick: int, outcome: Outcome) -> None:
        ticket = self.running.pop(pick % len(self.running))
        before = self.state
        self.state, transition = record(self.config, before, self.now, ticket, outcome)
        self.check(before, transition)
        if outcome == "ignored":
            assert transition is None
            assert attrs.evolve(self.state, probes_in_flight=before.probes_in_flight) == before

    @invariant()
    def probes_are_counted_and_capped(self) -> None:
        if not hasattr(self, "state"):
            return
        current = sum(1 for t in self.running if t.probe and t.epoch == self.state.epoch)
        assert self.state.probes_in_flight == current <= self.config.half_open_probes
        if self.state.state != "half_open":
            assert self.state.probes_in_flight == 0
        assert (self.state.opened_at is not None) == (self.state.state == "open")
        assert len(self.state.window) <= 10


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.pytestmark = [pytest.mark.slow]
