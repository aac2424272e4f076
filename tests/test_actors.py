"""ProviderActor leases, asking an actor, and the supervisor, in virtual time."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from providers.simulator import Simulator, SimulatorSettings
from runtime.actors.mailbox import ask
from runtime.actors.provider import CANCELLED, SUCCESS, ProviderHandle
from runtime.actors.supervisor import RestartPolicy, supervise
from runtime.config import ProviderConfig
from runtime.errors import ActorUnavailable


def handle(max_concurrency: int = 2) -> ProviderHandle:
    return ProviderHandle(
        ProviderConfig("sim", "simulator", max_concurrency=max_concurrency), Simulator("sim", SimulatorSettings())
    )


async def test_leases_respect_the_concurrency_cap_and_queue_fifo(autojump_clock: trio.testing.MockClock) -> None:
    provider = handle(max_concurrency=2)
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(provider.run)
        first, second = await provider.lease(), await provider.lease()
        assert provider.statistics().in_flight == 2

        async def waiter(n: int) -> None:
            lease = await provider.lease()
            order.append(n)
            await trio.sleep(1)
            await lease.release(SUCCESS)

        for n in range(3):
            nursery.start_soon(waiter, n)
            await trio.sleep(0.1)
        assert provider.statistics().waiting == 3
        await first.release(SUCCESS)
        await second.release(CANCELLED)
        await trio.sleep(5)
        assert order == [0, 1, 2]
        stats = provider.statistics()
        assert (stats.in_flight, stats.waiting, stats.successes, stats.cancellations) == (0, 0, 4, 1)
        nursery.cancel_scope.cancel()


async def test_a_caller_that_gives_up_waiting_does_not_leak_a_slot(autojump_clock: trio.testing.MockClock) -> None:
    provider = handle(max_concurrency=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(provider.run)
        held = await provider.lease()
        with trio.move_on_after(1):
            await provider.lease()
        await held.release(SUCCESS)
        await trio.sleep(0.1)
        assert provider.statistics().in_flight == 0
        again = await provider.lease()
        await again.release(SUCCESS)
        await trio.sleep(0.1)
        assert provider.statistics().in_flight == 0
        nursery.cancel_scope.cancel()


async def test_supervisor_restarts_then_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    runs: list[float] = []
    gave_up: list[BaseException] = []

    async def crashing(task_status: trio.TaskStatus[str]) -> None:
        task_status.started("up")
        runs.append(trio.current_time())
        await trio.sleep(1)
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        value = await nursery.start(
            supervise, "crasher", crashing, gave_up.append, RestartPolicy(max_restarts=3, window_s=60)
        )
        assert value == "up"
    assert len(runs) == 4
    assert len(gave_up) == 1 and isinstance(gave_up[0], RuntimeError)


async def test_supervisor_forgives_crashes_outside_the_window(autojump_clock: trio.testing.MockClock) -> None:
    runs = 0

    async def rarely_crashing(task_status: trio.TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs == 10:
            return
        await trio.sleep(100)
        raise RuntimeError("once in a while")

    async with trio.open_nursery() as nursery:
        await nursery.start(
            supervise, "rare", rarely_crashing, lambda e: None, RestartPolicy(max_restarts=1, window_s=60)
        )
    assert runs == 10


async def test_crashed_provider_actor_is_restarted_and_a_given_up_one_fails_fast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = handle()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            supervise, "provider:sim", provider.run, provider.give_up, RestartPolicy(max_restarts=1, window_s=60)
        )
        provider._send.send_nowait("not a message")  # type: ignore[arg-type]  # makes the actor crash
        await trio.sleep(0.1)
        assert provider.statistics().restarts == 1
        lease = await provider.lease()
        await lease.release(SUCCESS)
        provider._send.send_nowait("not a message")  # type: ignore[arg-type]
        await trio.sleep(0.1)
        assert provider.statistics().state == "down"
        with trio.fail_after(1):
            try:
                await provider.lease()
            except ActorUnavailable:
                pass
            else:
                raise AssertionError("a down provider must refuse leases")


@attrs.frozen
class Ping:
    reply: trio.MemorySendChannel[str]


async def test_ask_hands_back_an_answer_that_arrived_as_its_caller_was_cancelled() -> None:
    """The caller is cancelled while it waits, and the answer lands in the reply's buffer before it
    runs again: the answer is handed back (a lease released, a reservation settled), never lost."""
    mailbox, inbox = trio.open_memory_channel[Ping](1)
    handed_back: list[str] = []
    caller = trio.CancelScope()

    async def actor() -> None:
        message = await inbox.receive()
        await trio.testing.wait_all_tasks_blocked()  # the caller waits for the answer
        caller.cancel()
        message.reply.send_nowait("granted")
        message.reply.close()

    async def hand_back(answer: str) -> None:
        handed_back.append(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        with caller:
            await ask(mailbox, Ping, hand_back)
    assert caller.cancelled_caught and handed_back == ["granted"]


async def test_ask_says_how_an_actor_failed_to_answer() -> None:
    mailbox, inbox = trio.open_memory_channel[Ping](1)

    async def nothing(answer: str) -> None:
        raise AssertionError("nothing to hand back")

    async def silent() -> None:
        (await inbox.receive()).reply.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent)
        with pytest.raises(trio.EndOfChannel):
            await ask(mailbox, Ping, nothing)
    inbox.close()
    with pytest.raises(trio.BrokenResourceError):
        await ask(mailbox, Ping, nothing)
