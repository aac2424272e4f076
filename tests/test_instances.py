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
