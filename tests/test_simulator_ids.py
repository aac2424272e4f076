"""Simulator completion ids never repeat, not even across restarts of the process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_PROCESS = """
import trio
from providers.simulator import Simulator, SimulatorSettings
from providers.upstream import Call

async def main():
    sim = Simulator("sim", SimulatorSettings())
    call = Call({"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}, "sim-1", False)
    print((await sim.complete(call)).body["id"])
    stream = await sim.open_stream(Call(call.body, "sim-1", True))
    print((await stream.next_batch())[0].data["id"])
    await stream.aclose()

trio.run(main)
"""


def ids_of_a_fresh_process() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def test_ids_are_unique_across_restarts() -> None:
    first, second = ids_of_a_fresh_process(), ids_of_a_fresh_process()
    assert len(first) == len(second) == 2
    assert all(found.startswith("chatcmpl-sim-") for found in first + second)
    assert len(set(first + second)) == 4
