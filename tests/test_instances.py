"""Heartbeats: what a process counts of its peers, and how often the orphan recovery wakes."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from events.store import MEMORY, Instance, LedgerStore
from runtime.ledger.instances import HEARTBEAT_S, Instances


async def test_each_heartbeat_counts_the_live_instances_and_wakes_the_recovery_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`live_count` (the rate-limit split) stays what the last heartbeat counted, and `beaten` is a
    fresh event after each beat, so the orphan recovery runs once per heartbeat, not in a busy loop."""
    store = LedgerStore(MEMORY)
    moment = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    store.beat(Instance("other", os.getpid(), "elsewhere", moment, moment))
    me = Instances(store, Instance("me", os.getpid(), "here", moment, moment), trio.CapacityLimiter(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(me.run, lambda: moment)
        assert me.live_count == 2
        first = me.beaten
        await first.wait()
        assert me.live_count == 2  # not reset after the beat
        assert not me.beaten.is_set()  # the next heartbeat's event
        began = trio.current_time()
        await me.beaten.wait()
        assert trio.current_time() - began == pytest.approx(HEARTBEAT_S)
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_heartbeat_that_lands_while_the_recovery_is_busy_wakes_it_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The recovery of one heartbeat (expiring a gone instance's leases) may outlast the next one:
    that beat still wakes it, not the one after (which, in a test's frozen clock, never comes)."""
    store = LedgerStore(MEMORY)
    moment = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    me = Instances(store, Instance("me", os.getpid(), "here", moment, moment), trio.CapacityLimiter(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(me.run, lambda: moment)
        seen = await me.next_beat(me.beats)
        woke = trio.current_time()
        await trio.sleep(HEARTBEAT_S * 1.5)  # busy with it while the next heartbeat lands
        assert await me.next_beat(seen) == seen + 1
        assert trio.current_time() - woke < HEARTBEAT_S * 2  # that beat, not the one after
        nursery.cancel_scope.cancel()
    store.close()
