"""Budget leases in the tenant actor and the gateway (issue #13, docs/leases.md), in virtual time:
a single process takes one lease of the whole remainder, gives it back when quiet for
`lease_idle_s`, at a period change and on stop; a survivor expires a gone instance's lease."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.testing

from events.lease import BudgetSlices
from events.request import Request
from events.store import Instance, LedgerStore
from policies.cost import UNPRICED, Priced
from runtime.chat.record import NOTHING_CONSUMED, USAGE_UNKNOWN, append_terminal
from runtime.ledger.leases import Leases
from tests.harness import ledger_events, make_config, running_gateway, wait_for_events
from tests.test_tenant_policies import FIFTY, chat, new_tenant, virtual_wall

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def lease_events(events: list[Any]) -> list[tuple[str, Decimal]]:
    found = []
    for e in events:
        if isinstance(e, BudgetSlices.BudgetLeased):
            found.append(("leased", e.amount_usd))
        elif isinstance(e, BudgetSlices.LeaseReturned):
            found.append(("returned", e.used_usd))
        elif isinstance(e, BudgetSlices.LeaseExpired):
            found.append(("expired", e.used_usd))
    return found


async def test_one_process_leases_the_whole_remainder_and_gives_it_back_when_quiet(
    mock_clock: trio.testing.MockClock,
) -> None:
    config = make_config(pricing=FIFTY, server={"host": "127.0.0.1", "port": 0, "lease_idle_s": 3})
    async with running_gateway(config, clock=virtual_wall(START)) as gw, gw.http() as http:
        auth = await new_tenant(http, "leased", budget_usd="150")
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        actor = gw.gateway.tenants.find(next(t.id for t in gw.gateway.books.tenants() if t.name == "leased"))
        assert actor is not None
        await actor.wait_settled()
        stats = actor.statistics()
        assert (stats.leases_held, stats.leased_usd) == (1, "50")  # $150 leased, $100 settled under it
        assert lease_events(await ledger_events(gw)) == [("leased", Decimal(150))]
        mock_clock.jump(2)  # not quiet long enough
        await trio.testing.wait_all_tasks_blocked()
        assert lease_events(await ledger_events(gw)) == [("leased", Decimal(150))]
        mock_clock.jump(1.5)
        events = await wait_for_events(gw, lambda ev: len(lease_events(ev)) == 2)
        assert lease_events(events) == [("leased", Decimal(150)), ("returned", Decimal(100))]
        assert actor.statistics().leases_held == 0
        # The next request leases what is left ($50), and the same sums hold: one more, then 402.
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        refused = await chat(http, auth, max_tokens=16)
        assert refused.status_code == 402 and "$0 remains" in refused.json()["error"]["message"]
        events = await ledger_events(gw)
        assert lease_events(events)[2:] == [("leased", Decimal(50))]
        slices = [e for e in events if isinstance(e, BudgetSlices.Opened)]
        assert len(slices) == 1 and slices[0].spent_before_usd == 0


async def test_leases_go_back_at_a_period_change_and_on_stop(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    config = make_config(
        pricing=FIFTY, ledger={"path": str(ledger)}, server={"host": "127.0.0.1", "port": 0, "lease_idle_s": 30}
    )
    wall = virtual_wall(datetime(2026, 1, 31, 23, 59, 50, tzinfo=UTC))
    async with running_gateway(config, clock=wall) as gw, gw.http() as http:
        auth = await new_tenant(http, "monthly", budget_usd="100")
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        mock_clock.jump(15)  # February, before the lease went back for quiet
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        events = await ledger_events(gw)
        assert lease_events(events) == [("leased", Decimal(100)), ("returned", Decimal(50)), ("leased", Decimal(100))]
        periods = [e.period for e in events if isinstance(e, BudgetSlices.BudgetLeased)]
        assert [p.month for p in periods] == [1, 2]
    store = LedgerStore(str(ledger))
    try:
        stopped = [r.event for r in store.read_all()]
    finally:
        store.close()
    assert lease_events(stopped)[3:] == [("returned", Decimal(50))]  # the gateway stopped: given back


async def test_a_survivor_expires_the_lease_of_a_gone_instance(mock_clock: trio.testing.MockClock) -> None:
    """An instance that took a lease and settled $50 under it is gone (no heartbeat): on a heartbeat
    after the lease's expires_at the survivor appends LeaseExpired with what it settled, and the
    rest of the budget serves the survivor's requests."""
    config = make_config(pricing=FIFTY, server={"host": "127.0.0.1", "port": 0, "lease_s": 10})
    wall = virtual_wall(START)
    async with running_gateway(config, clock=wall) as gw, gw.http() as http:
        auth = await new_tenant(http, "shared", budget_usd="100")
        gateway = gw.gateway
        gone = Leases(gateway.aggregates, "gone-instance", wall, lease_s=10)
        period = datetime(2026, 3, 1, tzinfo=UTC)
        lease = await gone.take("shared", period, Decimal(100), Decimal(50), 2, Decimal(0))
        assert lease is not None and lease.amount_usd == Decimal(50)
        request = Request.admit("g-1", "shared", "sim-1", False, Decimal(50), wall(), instance="gone-instance")
        append_terminal(request, Request.Failed, "upstream_error", NOTHING_CONSUMED, Priced(Decimal(30), None), None)
        await gateway.journal.commit(request.collect_events())
        # Only $50 is not leased: a request that could cost $50 fits, the next does not.
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        assert (await chat(http, auth, max_tokens=16)).status_code == 402
        mock_clock.jump(5)  # heartbeats, but the lease has not expired yet
        await trio.testing.wait_all_tasks_blocked()
        assert not [e for e in await ledger_events(gw) if isinstance(e, BudgetSlices.LeaseExpired)]
        mock_clock.jump(6)
        events = await wait_for_events(gw, lambda ev: any(isinstance(e, BudgetSlices.LeaseExpired) for e in ev))
        (expired,) = [e for e in events if isinstance(e, BudgetSlices.LeaseExpired)]
        assert (expired.lease, expired.used_usd, expired.by_instance) == (
            lease.lease,
            Decimal(30),
            gateway.instances.instance,
        )
        # $20 of the gone instance's lease is free again, but a request may cost $50: still refused;
        # the survivor's own lease went back when quiet, so $100 − $30 − $50 = $20 remains.
        mock_clock.jump(3)
        await wait_for_events(gw, lambda ev: len([e for e in ev if isinstance(e, BudgetSlices.LeaseReturned)]) == 1)
        refused = await chat(http, auth, max_tokens=16)
        assert refused.status_code == 402
        assert (await chat(http, auth, max_tokens=1)).status_code == 200  # $3.125 fits in the $20 freed
        assert wall() - START < timedelta(minutes=1)


async def test_an_interrupted_request_of_a_gone_instance_counts_its_reservation_as_used(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The gone instance's request was recovered as `interrupted` with its usage unknown (cost None):
    it may have spent up to its reservation upstream, so the expired lease counts that reservation
    ($40) as used, not $0 — the survivor then has $60 of the $100, one $50 request and no second."""
    config = make_config(pricing=FIFTY, server={"host": "127.0.0.1", "port": 0, "lease_s": 10})
    wall = virtual_wall(START)
    async with running_gateway(config, clock=wall) as gw, gw.http() as http:
        auth = await new_tenant(http, "unknown", budget_usd="100")
        gateway = gw.gateway
        gone = Leases(gateway.aggregates, "gone-instance", wall, lease_s=10)
        period = datetime(2026, 3, 1, tzinfo=UTC)
        lease = await gone.take("unknown", period, Decimal(100), Decimal(50), 2, Decimal(0))
        assert lease is not None and lease.amount_usd == Decimal(50)
        request = Request.admit("u-1", "unknown", "sim-1", True, Decimal(40), wall(), instance="gone-instance")
        append_terminal(request, Request.Failed, "interrupted", USAGE_UNKNOWN, UNPRICED, None)
        await gateway.journal.commit(request.collect_events())
        mock_clock.jump(11)
        events = await wait_for_events(gw, lambda ev: any(isinstance(e, BudgetSlices.LeaseExpired) for e in ev))
        assert [e.used_usd for e in events if isinstance(e, BudgetSlices.LeaseExpired)] == [Decimal(40)]
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        refused = await chat(http, auth, max_tokens=16)
        assert refused.status_code == 402, refused.text


async def test_a_lease_of_a_process_gone_from_this_host_expires_without_waiting(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A restart after kill -9 of the only process: its heartbeat row names this host and a pid that
    no longer exists, so the new process expires its lease (the whole budget) on its first heartbeat
    instead of refusing the tenant until `expires_at` (60 s by default)."""
    wall = virtual_wall(START)
    async with running_gateway(make_config(pricing=FIFTY), clock=wall) as gw, gw.http() as http:
        auth = await new_tenant(http, "restarted", budget_usd="100")
        gateway = gw.gateway
        me = gateway.instances.me
        dead = Instance("dead-instance", _dead_pid(), me.host, wall(), wall())
        await trio.to_thread.run_sync(gateway.store.beat, dead, limiter=gateway.journal.limiter)
        gone = Leases(gateway.aggregates, "dead-instance", wall)  # the default lease_s: 60 s
        assert await gone.take("restarted", datetime(2026, 3, 1, tzinfo=UTC), Decimal(100), Decimal(50), 1, Decimal(0))
        assert (await chat(http, auth, max_tokens=16)).status_code == 402  # all of it is held by the dead one
        mock_clock.jump(1.5)  # one heartbeat
        events = await wait_for_events(gw, lambda ev: any(isinstance(e, BudgetSlices.LeaseExpired) for e in ev))
        assert [e.used_usd for e in events if isinstance(e, BudgetSlices.LeaseExpired)] == [Decimal(0)]
        assert (await chat(http, auth, max_tokens=16)).status_code == 200


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_an_actor_its_supervisor_gave_up_on_gives_its_lease_back(mock_clock: trio.testing.MockClock) -> None:
    """The only live instance leases the whole remainder; its actor crashes past the restart limit
    (six malformed messages in its mailbox) and the supervisor gives up. The lease goes back as the
    actor ends (what settled under it used), so its successor leases the rest instead of a 402."""
    config = make_config(pricing=FIFTY, server={"host": "127.0.0.1", "port": 0, "lease_idle_s": 30})
    async with running_gateway(config, clock=virtual_wall(START)) as gw, gw.http() as http:
        auth = await new_tenant(http, "crashy", budget_usd="150")
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        actor = gw.gateway.tenants.find(next(t.id for t in gw.gateway.books.tenants() if t.name == "crashy"))
        assert actor is not None
        await actor.wait_settled()
        for _ in range(6):
            actor.send.send_nowait(object())  # type: ignore[arg-type]  # each one crashes an incarnation
        await actor.stopped.wait()
        events = await ledger_events(gw)
        assert lease_events(events) == [("leased", Decimal(150)), ("returned", Decimal(50))]
        assert (await chat(http, auth, max_tokens=16)).status_code == 200  # the successor's lease: $100
        assert lease_events(await ledger_events(gw))[2:] == [("leased", Decimal(100))]


async def test_a_lease_another_instance_expired_is_no_longer_admitted_against(
    mock_clock: trio.testing.MockClock,
) -> None:
    """This instance leased the whole $100 and settled $50 under it; a survivor that thought it gone
    (late heartbeats) expires that lease counting $50 used, and leases the $50 left. The holder hears
    of the `LeaseExpired`, drops the lease and asks for a new one: refused, so 402 — not a $50
    request admitted against a lease that no longer holds anything (which would spend $150 of $100)."""
    config = make_config(pricing=FIFTY, server={"host": "127.0.0.1", "port": 0, "lease_idle_s": 30})
    wall = virtual_wall(START)
    async with running_gateway(config, clock=wall) as gw, gw.http() as http:
        auth = await new_tenant(http, "expired", budget_usd="100")
        gateway = gw.gateway
        assert (await chat(http, auth, max_tokens=16)).status_code == 200
        actor = gateway.tenants.find(next(t.id for t in gateway.books.tenants() if t.name == "expired"))
        assert actor is not None
        await actor.wait_settled()
        period = datetime(2026, 3, 1, tzinfo=UTC)
        slices = await gateway.leases.held("expired", period)
        assert slices is not None
        (lease,) = slices.open
        survivor = Leases(gateway.aggregates, "survivor", wall)
        await survivor.expire("expired", period, lease, Decimal(50))
        taken = await survivor.take("expired", period, Decimal(100), Decimal(50), 2, Decimal(0))
        assert taken is not None and taken.amount_usd == Decimal(50)
        refused = await chat(http, auth, max_tokens=16)
        assert refused.status_code == 402, refused.text
        await actor.wait_settled()
        assert actor.statistics().leases_held == 0
        assert lease_events(await ledger_events(gw)) == [
            ("leased", Decimal(100)),
            ("expired", Decimal(50)),
            ("leased", Decimal(50)),
        ]
