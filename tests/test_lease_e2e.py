"""Budget leases end to end (issue #13): two real `tollgate serve` processes on one ledger (SQLite
and PostgreSQL, conftest's `backend`),
a tenant with a hard budget hammered through both at once with the openai SDK (non-stream, streams,
disconnects, an upstream failing part of the time); and kill -9 of a process holding a lease.
Processes and helpers are those of tests/test_workers.py; waits poll with a deadline, never sleep."""

from __future__ import annotations

import itertools
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from events.lease import BudgetSlices
from events.request import Request
from events.store import Recorded
from tests.fake_openai import Behaviour, FakeOpenAI, serving
from tests.test_replay import replay_verify
from tests.test_workers import (
    ADMIN,
    DEADLINE_S,
    client,
    close_clients,  # noqa: F401 (autouse: the SDK clients this module makes are closed after each test)
    env,
    ledger_events,
    ledger_lines,
    ready,
    unsettled,
    until,
)
from tests.test_workers import serving as serve_process

# The fake bills 11 prompt + 7 completion tokens: $0.081 a request; a request with max_tokens 20
# reserves about $0.3 (its prompt bound at $1 000/M in, 20 tokens at $10 000/M out).
CONFIG = """
[server]
host = "127.0.0.1"
grace_period_s = 5.0
lease_idle_s = 1.0
lease_s = 2.0
[ledger]
LEDGER
[[providers]]
name = "up"
kind = "openai"
base_url = "UPSTREAM"
models = ["gpt-test"]
max_retries = 0
[pricing."up/gpt-test"]
input_per_mtok = "1000"
output_per_mtok = "10000"
"""


class FlakyOpenAI(FakeOpenAI):
    """Every fifth request fails with a 500, every seventh stream is cut mid-way."""

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(behaviour=behaviour)
        self.counter = itertools.count()

    def next_behaviour(self) -> Behaviour:
        n = next(self.counter)
        if n % 5 == 4:
            return Behaviour(status=500)
        if n % 7 == 6:
            return Behaviour(fault="reset_mid_stream", chunks=4)
        return self.behaviour


@contextmanager
def upstream(behaviour: Behaviour, *, flaky: bool) -> Iterator[str]:
    """The fake upstream (`flaky`: failing part of the time), served by its own trio loop in a
    thread (the gateways are processes)."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        fake = FlakyOpenAI(behaviour) if flaky else FakeOpenAI(behaviour=behaviour)
        async with serving(fake.app()) as url:
            box["url"], box["token"], box["stop"] = url, trio.lowlevel.current_trio_token(), trio.Event()
            started.set()
            await box["stop"].wait()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(DEADLINE_S)
    try:
        yield box["url"]
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(DEADLINE_S)


def write_config(tmp_path: Path, upstream_url: str, backend: str | None) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace("LEDGER", ledger_lines(tmp_path, backend)).replace("UPSTREAM", upstream_url))
    return config


def new_tenant(url: str, budget: str) -> str:
    created = httpx.post(
        url + "/admin/tenants", json={"name": "capped", "budget_usd": budget, "budget_mode": "hard"}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    return str(created.json()["api_key"])


def key_works(url: str, key: str) -> bool:
    return httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def live_instances(url: str) -> int:
    return int(httpx.get(url + "/admin/statistics", headers=ADMIN).json()["live_instances"])


def open_leases(events: list[Recorded]) -> set[str]:
    leased = {r.event.lease for r in events if isinstance(r.event, BudgetSlices.BudgetLeased)}
    closed = {
        r.event.lease for r in events if isinstance(r.event, BudgetSlices.LeaseReturned | BudgetSlices.LeaseExpired)
    }
    return leased - closed


def assert_leases_within(events: list[Recorded], budget: Decimal) -> None:
    """At every position of the log: committed + open leases ≤ budget (the aggregate's own sum)."""
    committed, held = Decimal(0), {}
    for record in events:
        event = record.event
        if isinstance(event, BudgetSlices.Opened):
            committed += event.spent_before_usd
        elif isinstance(event, BudgetSlices.BudgetLeased):
            held[event.lease] = event.amount_usd
        elif isinstance(event, BudgetSlices.LeaseReturned | BudgetSlices.LeaseExpired):
            committed += min(event.used_usd, held.pop(event.lease))
        assert committed + sum(held.values(), Decimal(0)) <= budget


def settled_cost(events: list[Recorded]) -> Decimal:
    return sum((r.event.cost_usd or Decimal(0) for r in events if isinstance(r.event, Request.Settled)), Decimal(0))


def one_request(url: str, key: str, kind: int, max_tokens: int = 20) -> str:
    """Non-stream, a full stream, or a stream the client leaves after its first chunk."""
    try:
        sdk = client(url, key)
        if kind == 0:
            sdk.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "spend"}], max_tokens=max_tokens
            )
            return "ok"
        chunks = sdk.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "spend"}], max_tokens=max_tokens, stream=True
        )
        with chunks:
            for n, _chunk in enumerate(chunks):
                if kind == 2 and n == 0:
                    return "left"
        return "ok"
    except openai.APIStatusError as error:
        return error.code or str(error.status_code)
    except (openai.APIError, httpx.HTTPError):
        return "cut"


@pytest.mark.slow
def test_a_hard_budget_hammered_through_two_processes_is_never_overspent(tmp_path: Path, backend: str | None) -> None:
    budget = Decimal("3")
    with ExitStack() as stack:
        url_up = stack.enter_context(upstream(Behaviour(chunks=4, chunk_delay_s=0.01), flaky=True))
        config = write_config(tmp_path, url_up, backend)
        process_a, url_a = stack.enter_context(serve_process(config))
        process_b, url_b = stack.enter_context(serve_process(config))
        key = new_tenant(url_a, str(budget))
        until(lambda: key_works(url_b, key), "the key on B")
        # each process counts the other (as of its last heartbeat), so each leases a share, not the whole
        until(lambda: all(live_instances(url) == 2 for url in (url_a, url_b)), "both processes live on both")
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(
                pool.map(lambda i: one_request(url_a if i % 2 else url_b, key, i % 3), range(120), timeout=DEADLINE_S)
            )
        assert "budget_exceeded" in outcomes and "ok" in outcomes, outcomes
        # Quiet for lease_idle_s: both give their slices back.
        until(lambda: not open_leases(ledger_events(config)), "every lease given back")
        events = ledger_events(config)
        assert not unsettled(events)
        assert settled_cost(events) <= budget
        assert settled_cost(events) > budget / 2  # the budget was spent, not refused early
        assert_leases_within(events, budget)
        instances = {ready(url)["instance"] for url in (url_a, url_b)}  # type: ignore[index]
        takers = {r.event.instance for r in events if isinstance(r.event, BudgetSlices.BudgetLeased)}
        assert takers == instances
        counts = {
            kind.__name__: sum(isinstance(r.event, kind) for r in events)
            for kind in (BudgetSlices.BudgetLeased, BudgetSlices.LeaseReturned, BudgetSlices.LeaseExpired)
        }
        print(f"outcomes {sorted((o, outcomes.count(o)) for o in set(outcomes))}; lease events {counts}")
        for process in (process_a, process_b):
            process.send_signal(signal.SIGTERM)
            assert process.wait(DEADLINE_S) == 0
    events = ledger_events(config)
    assert not open_leases(events) and not unsettled(events)
    verified = replay_verify(config, env())
    assert verified.returncode == 0, verified.stderr


@pytest.mark.slow
def test_kill_9_a_process_holding_a_lease_the_survivor_expires_it_and_the_budget_serves_again(
    tmp_path: Path, backend: str | None
) -> None:
    budget = Decimal("0.5")  # less than two requests' worst case (about $0.3): the first taker leases it all
    with ExitStack() as stack:
        url_up = stack.enter_context(upstream(Behaviour(chunks=400, chunk_delay_s=0.05), flaky=False))
        config = write_config(tmp_path, url_up, backend)
        victim, url_a = stack.enter_context(serve_process(config))
        _b, url_b = stack.enter_context(serve_process(config))
        victim_instance = ready(url_a)["instance"]  # type: ignore[index]
        survivor_instance = ready(url_b)["instance"]  # type: ignore[index]
        key = new_tenant(url_a, str(budget))
        until(lambda: key_works(url_b, key), "the key on B")
        streaming = threading.Event()
        failures: list[BaseException] = []

        def slow_stream() -> None:
            try:
                chunks = client(url_a, key).chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hold"}], max_tokens=20, stream=True
                )
                for _chunk in chunks:
                    streaming.set()
            except (openai.APIError, httpx.HTTPError) as error:  # the victim dies mid-stream
                failures.append(error)

        thread = threading.Thread(target=slow_stream)
        thread.start()
        assert streaming.wait(DEADLINE_S), failures
        events = ledger_events(config)
        (leased,) = [r.event for r in events if isinstance(r.event, BudgetSlices.BudgetLeased)]
        assert (leased.instance, leased.amount_usd) == (victim_instance, budget)
        assert one_request(url_b, key, 0) == "budget_exceeded"  # all of it is leased by A
        victim.send_signal(signal.SIGKILL)
        victim.wait(DEADLINE_S)
        thread.join(DEADLINE_S)

        def expired() -> list[Any]:
            return [r.event for r in ledger_events(config) if isinstance(r.event, BudgetSlices.LeaseExpired)]

        (expiry,) = until(expired, "the survivor to expire the victim's lease")
        assert (expiry.lease, expiry.by_instance) == (leased.lease, survivor_instance)
        # What the victim's requests may have spent: their settled costs, and the reservation of its cut
        # stream (recovered `interrupted`, usage unknown: not $0) — or of any request still open.
        events = ledger_events(config)
        admitted = {
            r.event.originator_id: r.event.reserved_usd
            for r in events
            if isinstance(r.event, Request.Admitted) and r.event.instance == victim_instance
        }
        settled = {r.event.originator_id: r.event for r in events if isinstance(r.event, Request.Settled)}
        victim_used = sum(
            (
                settled[request].cost_usd if request in settled and settled[request].cost_usd is not None else reserved
                for request, reserved in admitted.items()
            ),
            Decimal(0),
        )
        assert expiry.used_usd == min(victim_used, budget) > 0
        # $0.5 − the stream's $0.32 worst case: a request of at most $0.18 (max_tokens 1: $0.13) is served.
        assert one_request(url_b, key, 0) == "budget_exceeded"
        assert one_request(url_b, key, 0, max_tokens=1) == "ok"  # the budget freed serves the survivor
        until(lambda: not open_leases(ledger_events(config)), "the survivor's lease given back")
        events = ledger_events(config)
        assert not unsettled(events)
        assert settled_cost(events) <= budget
        assert_leases_within(events, budget)
    verified = replay_verify(config, env())
    assert verified.returncode == 0, verified.stderr
