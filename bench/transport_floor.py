"""Client-side CPU per upstream call: httpx's default transport vs `providers.transport.TrioTransport`.

    .venv/bin/python -m bench.transport_floor [--requests 2000] [--rounds 5] [--concurrency 16]

One fake upstream (`bench.upstream`, its own process, so its CPU is not counted) and, in this process,
one trio run that sends N POSTs of a chat request with each client in turn: sequentially, then from
`--concurrency` tasks. CPU is `time.process_time()` around each loop (this process only). The order of
the clients reverses every other round; each round reports ms/request and the ratio to httpx's default
within that round; the summary is the median over rounds.

Clients:
  httpx        `httpx.AsyncClient` with its default transport (httpcore's pool), as Tollgate uses today
  trio         `httpx.AsyncClient(transport=TrioTransport())`
  trio-direct  `TrioTransport.handle_async_request` without `AsyncClient` (what the client layer costs)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from bench.process import Server
from providers.transport import TrioTransport

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something about ledgers."}]}
).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=30.0)

Call = Callable[[], Awaitable[int]]


def httpx_client(url: str, concurrency: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    http = httpx.AsyncClient(timeout=TIMEOUT, limits=limits, headers=HEADERS)

    async def call() -> int:
        response = await http.post(url, content=BODY)
        return len(response.content)

    return call, http.aclose


def trio_client(url: str, concurrency: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    http = httpx.AsyncClient(timeout=TIMEOUT, headers=HEADERS, transport=TrioTransport(concurrency))

    async def call() -> int:
        response = await http.post(url, content=BODY)
        return len(response.content)

    return call, http.aclose


def trio_direct(url: str, concurrency: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    transport = TrioTransport(concurrency)
    timeout = TIMEOUT.as_dict()

    async def call() -> int:
        request = httpx.Request("POST", url, content=BODY, headers=HEADERS, extensions={"timeout": timeout})
        response = await transport.handle_async_request(request)
        try:
            return len(await response.aread())
        finally:
            await response.aclose()

    return call, transport.aclose


CLIENTS = {"httpx": httpx_client, "trio": trio_client, "trio-direct": trio_direct}


async def run_loop(call: Call, requests: int, concurrency: int) -> float:
    """CPU ms per request for `requests` calls from `concurrency` tasks."""

    async def worker(count: int) -> None:
        for _ in range(count):
            if not await call():
                raise RuntimeError("empty response")

    share = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for count in share:
            nursery.start_soon(worker, count)
    return (time.process_time() - start) * 1000 / requests


async def measure(url: str, requests: int, rounds: int, concurrency: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {"sequential": {}, f"c={concurrency}": {}}
    for round_index in range(rounds):
        names = list(CLIENTS) if round_index % 2 == 0 else list(reversed(CLIENTS))
        for mode, tasks in (("sequential", 1), (f"c={concurrency}", concurrency)):
            for name in names:
                call, close = CLIENTS[name](url, concurrency)
                try:
                    await run_loop(call, min(200, requests), tasks)  # warm up: connections, caches
                    ms = await run_loop(call, requests, tasks)
                finally:
                    await close()
                results[mode].setdefault(name, []).append(ms)
        line = "  ".join(
            f"{mode} " + " ".join(f"{name}={results[mode][name][-1]:.3f}" for name in CLIENTS) for mode in results
        )
        print(f"round {round_index + 1}: {line}  (ms/request)", flush=True)
    return results


def report(results: dict[str, dict[str, list[float]]]) -> None:
    print("\nmedian CPU ms/request (client process), and the ratio to httpx's default in the same round")
    print(f"{'mode':<12} {'client':<12} {'ms/req':>8} {'ratio':>7}")
    for mode, by_client in results.items():
        base = by_client["httpx"]
        for name, values in by_client.items():
            ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
            print(f"{mode:<12} {name:<12} {statistics.median(values):>8.3f} {ratio:>7.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transport_floor", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per loop")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    log = Path(tempfile.mkdtemp(prefix="transport-floor-")) / "upstream.log"
    upstream = Server("upstream", [sys.executable, "-m", "bench.upstream", "--port", "0", "--latency-ms", "0"], log)
    try:
        url = upstream.wait_listening() + "/v1/chat/completions"
        print(f"upstream {url}; {args.requests} POSTs per loop, {args.rounds} rounds", flush=True)
        report(trio.run(measure, url, args.requests, args.rounds, args.concurrency))
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
