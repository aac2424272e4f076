"""Scenario 2c: how fast a client's disconnect closes the upstream stream, through Tollgate.

Clients open paced streams through the gateway (each with its own X-Request-ID, which the gateway
passes upstream), read three content chunks, and hang up. The fake upstream notes (monotonic clock,
system-wide) when each stream's connection is lost; the latency is that minus the hang-up moment.
"""

from __future__ import annotations

import json
import time
import urllib.request

import httpx
import trio

from bench.scenario import Context, Outcome, Table, fmt
from bench.stats import percentile

STREAMS = 100
AT_ONCE = 10


async def _hang_ups(url: str, key: str, run: str) -> dict[str, float]:
    hung_up: dict[str, float] = {}
    limiter = trio.CapacityLimiter(AT_ONCE)
    body = {
        "model": "bench-model",
        "stream": True,
        "messages": [{"role": "user", "content": "[bench chunks=200 interval_ms=20] hang up soon"}],
    }

    async def one(n: int) -> None:
        request_id = f"{run}-{n}"
        async with limiter, httpx.AsyncClient(timeout=30) as client:
            headers = {"Authorization": f"Bearer {key}", "X-Request-ID": request_id}
            async with client.stream("POST", url, json=body, headers=headers) as response:
                seen = 0
                async for line in response.aiter_lines():
                    if '"content":"w' in line.replace(" ", ""):
                        seen += 1
                    if seen >= 3:
                        break
            hung_up[request_id] = time.monotonic()  # leaving the blocks closed the connection

    async with trio.open_nursery() as nursery:
        for n in range(STREAMS):
            nursery.start_soon(one, n)
    return hung_up


class DisconnectScenario:
    name = "disconnect"
    title = "2c. Client disconnect → upstream stream closed (through Tollgate)"

    def unavailable(self, ctx: Context | None) -> str | None:
        if ctx is not None and not any(g.name == "tollgate" for g in ctx.gateways):
            return "Tollgate is not running"
        return None

    def run(self, ctx: Context) -> Outcome:
        gateway = next(g for g in ctx.gateways if g.name == "tollgate")
        run = f"disc{int(time.time())}"
        ctx.log(f"disconnect: {STREAMS} streams, {AT_ONCE} at a time, each hung up after 3 chunks")
        hung_up = trio.run(_hang_ups, gateway.url, gateway.bearer, run)
        closed_url = ctx.upstream.url.split("/v1/")[0] + "/bench/closed"
        deadline = time.monotonic() + 2
        closed: dict[str, float] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(closed_url, timeout=5) as reply:
                closed = {k: v for k, v in json.loads(reply.read()).items() if k.startswith(run)}
            if len(closed) >= len(hung_up):
                break
            time.sleep(0.1)  # a report poll, not a test: the upstream notes closes as they happen
        latencies = [(closed[k] - t) * 1000 for k, t in hung_up.items() if k in closed]
        missing = len(hung_up) - len(latencies)
        figures = {
            "streams": len(hung_up),
            "closed_upstream": len(latencies),
            "not_closed_within_2s": missing,
            "p50_ms": percentile(latencies, 50) if latencies else None,
            "p99_ms": percentile(latencies, 99) if latencies else None,
            "max_ms": max(latencies) if latencies else None,
        }
        table = Table(
            self.title,
            ["streams", "upstream closed", "p50 ms", "p99 ms", "max ms", "not closed within 2 s"],
            [
                [
                    str(len(hung_up)),
                    str(len(latencies)),
                    fmt(figures["p50_ms"]),
                    fmt(figures["p99_ms"]),
                    fmt(figures["max_ms"]),
                    str(missing),
                ]
            ],
            ["Target: p99 ≤ 50 ms. Monotonic clock shared by the client (this process) and the fake upstream."],
        )
        return Outcome(self.name, self.title, tables=[table], figures=figures)
