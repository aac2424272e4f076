"""The streaming client: raw asyncio sockets, timestamps every SSE content chunk on arrival.

Run as its own process so its CPU never competes with the orchestrator's, and so its own CPU use can be
reported (``client_cpu_pct``; a client near 100 % of a core would be the bottleneck)::

    python -m bench.stream_client --url URL --key KEY --mode sequential --count 200 --chunks 20
    python -m bench.stream_client --url URL --key KEY --mode concurrent --count 200 --chunks 150 \\
        --interval-ms 20 --ramp-s 1

The upstream names content chunk ``k`` ``"w<k> "``, so the client knows each chunk's index whatever
the gateway does to the JSON around it, and can say how late chunk ``k`` is against its schedule:
``delay_k = (t_k - k * interval) - min_j (t_j - j * interval)`` for each stream, i.e. lateness relative
to that stream's best-kept chunk. Jitter and falling behind both show up in it. It prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from collections.abc import Callable

from bench.http1 import ResponseParser, host_port, parse_header, raise_fd_limit, request_bytes
from bench.stats import summary

CONTENT = re.compile(rb'"content": ?"w(\d+) ')


def stream_body(model: str, chunks: int, interval_ms: float) -> bytes:
    return json.dumps(
        {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {
                    "role": "user",
                    "content": f"Stream to the benchmark. [bench chunks={chunks} interval_ms={interval_ms:g}]",
                }
            ],
        }
    ).encode()


class StreamConn(asyncio.Protocol):
    """One keep-alive connection; one streaming request at a time."""

    def __init__(self, request: bytes, on_done: Callable[[StreamConn], None]) -> None:
        self.request = request
        self.on_done = on_done
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.begin()

    def begin(self) -> None:
        self.sent = 0.0
        self.head_at = 0.0
        self.arrivals: list[tuple[int, float]] = []
        self.last = -1
        self.tail = b""
        self.saw_done = False
        self.finished_at = 0.0
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.begin()
        self.parser.reset()
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        parser = self.parser
        had_head = parser.status != 0
        body = parser.feed(data)
        if not had_head and parser.status:
            self.head_at = now
        if body:
            scan = self.tail + body
            for match in CONTENT.finditer(scan):
                k = int(match.group(1))
                if k > self.last:
                    self.last = k
                    self.arrivals.append((k, now))
            if b"[DONE]" in scan:
                self.saw_done = True
            self.tail = scan[-64:]
        if parser.complete:
            self._finish(now)

    def _finish(self, now: float) -> None:
        self.finished_at = now
        if self.parser.status != 200:
            self.error = f"status {self.parser.status}"
        elif not self.saw_done:
            self.error = "no [DONE]"
        self.on_done(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.finished_at == 0.0 and self.sent:
            if self.parser.state != 0 and self.saw_done:  # a read-until-close body ended cleanly
                self._finish(time.perf_counter())
            else:
                self.error = f"connection lost ({type(exc).__name__ if exc else 'closed'})"
                self.finished_at = time.perf_counter()
                self.on_done(self)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sequential(url: str, request: bytes, count: int) -> dict[str, object]:
    """count streams one after another on a keep-alive connection: first chunk and total time."""
    loop = asyncio.get_running_loop()
    host, port = host_port(url)
    first_ms: list[float] = []
    total_ms: list[float] = []
    head_ms: list[float] = []
    errors: list[str] = []
    conn: StreamConn | None = None
    for _ in range(count):
        done: asyncio.Future[StreamConn] = loop.create_future()

        def on_done(c: StreamConn, done: asyncio.Future[StreamConn] = done) -> None:
            if not done.done():
                done.set_result(c)

        if conn is None or conn.lost:
            _, conn = await loop.create_connection(lambda: StreamConn(request, on_done), host, port)
        else:
            conn.on_done = on_done
            conn.send()
        finished = await asyncio.wait_for(done, 60)
        if finished.error:
            errors.append(finished.error)
            continue
        if finished.arrivals:
            first_ms.append((finished.arrivals[0][1] - finished.sent) * 1000)
        head_ms.append((finished.head_at - finished.sent) * 1000)
        total_ms.append((finished.finished_at - finished.sent) * 1000)
    if conn is not None and conn.transport is not None:
        conn.transport.close()
    return {
        "first_chunk_ms": summary(first_ms),
        "headers_ms": summary(head_ms),
        "total_ms": summary(total_ms),
        "errors": errors[:5],
        "error_count": len(errors),
    }


async def concurrent(
    url: str, request: bytes, count: int, chunks: int, interval_s: float, ramp_s: float
) -> dict[str, object]:
    """count paced streams at once (starts spread over ramp_s): how late each chunk arrives."""
    loop = asyncio.get_running_loop()
    host, port = host_port(url)
    finished: list[StreamConn] = []
    all_done = loop.create_future()
    errors: list[str] = []

    def on_done(c: StreamConn) -> None:
        finished.append(c)
        if c.transport is not None:
            c.transport.close()
        if len(finished) + len(errors) >= count and not all_done.done():
            all_done.set_result(None)

    cpu0, wall0 = _cpu_s(), time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, wall0 + i * ramp_s / count - time.perf_counter()))
        try:
            await loop.create_connection(lambda: StreamConn(request, on_done), host, port)
        except OSError as exc:
            errors.append(f"connect: {exc}")
    if len(errors) >= count:
        all_done.set_result(None)
    try:
        await asyncio.wait_for(all_done, ramp_s + chunks * interval_s + 30)
    except TimeoutError:
        errors.append(f"timeout: {count - len(finished) - len(errors)} streams unfinished")
    wall = time.perf_counter() - wall0
    cpu = _cpu_s() - cpu0
    delays: list[float] = []
    first_ms: list[float] = []
    for c in finished:
        if c.error:
            errors.append(c.error)
            continue
        if len(c.arrivals) < chunks:
            errors.append(f"{len(c.arrivals)} of {chunks} chunks")
        if not c.arrivals:
            continue
        first_ms.append((c.arrivals[0][1] - c.sent) * 1000)
        base = min(t - k * interval_s for k, t in c.arrivals)
        delays += [(t - k * interval_s - base) * 1000 for k, t in c.arrivals]
    return {
        "streams": count,
        "chunks": chunks,
        "interval_ms": interval_s * 1000,
        "delay_ms": summary(delays),
        "first_chunk_ms": summary(first_ms),
        "error_count": len(errors),
        "errors": sorted(set(errors))[:5],
        "client_cpu_pct": 100 * cpu / wall if wall else 0.0,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="the chat completions URL")
    parser.add_argument("--key", default="bench", help="bearer key")
    parser.add_argument(
        "--header", action="append", default=[], type=parse_header, help="'Name: value', sent with every request"
    )
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--mode", choices=["sequential", "concurrent"], required=True)
    parser.add_argument("--count", type=int, required=True, help="streams (sequential or at once)")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--ramp-s", type=float, default=1.0, help="spread concurrent starts over this")
    args = parser.parse_args(argv)
    raise_fd_limit()
    request = request_bytes(
        args.url, stream_body(args.model, args.chunks, args.interval_ms), args.key, dict(args.header)
    )
    if args.mode == "sequential":
        result = asyncio.run(sequential(args.url, request, args.count))
    else:
        result = asyncio.run(
            concurrent(args.url, request, args.count, args.chunks, args.interval_ms / 1000, args.ramp_s)
        )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
