"""The fallback load generator, used only when wrk cannot be had: closed-loop keep-alive POSTs.

Raw asyncio sockets with the bench's own HTTP/1.1 parser, one process, one core. It is slower than
wrk (roughly 5-10k requests/s here) and its latencies include more client time, so its figures are
not comparable with wrk's; the report says which generator produced each run. It prints one line in
the same shape as the wrk script's (``BENCH_WRK {...}``)::

    python -m bench.pyload --url URL --key KEY --body-file body.json --connections 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench.http1 import ResponseParser, host_port, parse_header, raise_fd_limit, request_bytes
from bench.stats import percentile


class LoadConn(asyncio.Protocol):
    """Sends the request, waits for the whole response, records its latency, repeats until the end."""

    def __init__(
        self,
        request: bytes,
        deadline: float,
        latencies: list[float],
        errors: dict[str, int],
        closed: asyncio.Future[None],
    ) -> None:
        self.request = request
        self.deadline = deadline
        self.latencies = latencies
        self.errors = errors
        self.closed = closed
        self.parser = ResponseParser()
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.parser.reset()
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if not self.parser.complete:
            return
        now = time.perf_counter()
        self.latencies.append(now - self.sent)
        if not 200 <= self.parser.status < 300:
            self.errors["status"] += 1
        if now < self.deadline:
            self._send()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.deadline:
            self.errors["read"] += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def run(url: str, request: bytes, connections: int, duration_s: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    host, port = host_port(url)
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    start = time.perf_counter()
    deadline = start + duration_s
    waits: list[asyncio.Future[None]] = []
    for _ in range(connections):
        closed: asyncio.Future[None] = loop.create_future()

        def connection(closed: asyncio.Future[None] = closed) -> LoadConn:
            return LoadConn(request, deadline, latencies, errors, closed)

        try:
            await loop.create_connection(connection, host, port)
            waits.append(closed)
        except OSError:
            errors["connect"] += 1
    if waits:
        await asyncio.wait(waits, timeout=duration_s + 30)
    elapsed = time.perf_counter() - start
    us = sorted(x * 1e6 for x in latencies)
    return {
        "requests": len(us),
        "duration_us": int(elapsed * 1e6),
        "bytes": 0,
        "errors": errors,
        "latency_us": {
            "p50": percentile(us, 50),
            "p90": percentile(us, 90),
            "p99": percentile(us, 99),
            "max": us[-1] if us else 0,
            "mean": sum(us) / len(us) if us else 0,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pyload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="bench")
    parser.add_argument(
        "--header", action="append", default=[], type=parse_header, help="'Name: value', sent with every request"
    )
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args(argv)
    raise_fd_limit()
    request = request_bytes(args.url, args.body_file.read_bytes(), args.key, dict(args.header))
    result = asyncio.run(run(args.url, request, args.connections, args.duration))
    print("BENCH_WRK " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
