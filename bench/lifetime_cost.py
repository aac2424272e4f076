"""What `RequestLifetime` (the guard around every HTTP request) costs per request, in process: a
trivial ASGI app behind it, the access log off, CPU µs per request, 1 and 16 requests at a time.
`python -m bench.lifetime_cost`.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import trio

from runtime.config import LoggingConfig
from runtime.http.app import RequestLifetime

REQUESTS = 20_000


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def sink(message: Any) -> None:
    await trio.lowlevel.checkpoint()


async def receive() -> Any:
    return {"type": "http.request", "body": b""}


async def measure(concurrency: int) -> float:
    gateway: Any = SimpleNamespace(
        config=SimpleNamespace(server=SimpleNamespace(write_timeout_s=60.0), logging=LoggingConfig(access=False)),
        http_in_flight=0,
        draining=trio.Event(),
        metrics=None,
    )
    guarded = RequestLifetime(app, gateway)

    async def worker(count: int) -> None:
        for _ in range(count):
            await guarded({"type": "http", "method": "GET", "path": "/healthz"}, receive, sink)

    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, REQUESTS // concurrency)
    return (time.process_time() - start) / REQUESTS * 1e6


def main() -> None:
    for concurrency in (1, 16):
        best = min(trio.run(measure, concurrency) for _ in range(3))
        print(f"RequestLifetime, {concurrency:>2} at a time: {best:6.2f} µs/request")


if __name__ == "__main__":
    main()
