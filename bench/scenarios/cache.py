"""Scenario 6: what a response-cache hit costs the gateway in CPU, against a miss, in the same run.

One Tollgate twin whose bench tenant has `cache = "all"` (its own process and ledger). Each round sends
`REQUESTS` sequential misses (every body different: a counter in the prompt, so each goes upstream and
is then stored) and `REQUESTS` sequential hits (one body, stored before the round), alternating which
goes first; the CPU of the gateway's process tree (utime+stime) over each batch, divided by its requests,
is the CPU per request. Every answer's `x-tollgate-cache` is checked, so a batch is what it says.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from bench import gateway, procstat
from bench.scenario import Context, Outcome, Table, fmt
from bench.stats import median

REQUESTS = 300


class CacheScenario:
    name = "cache"
    title = "6. Response cache: CPU per request of a hit vs a miss (same run, sequential)"

    def unavailable(self, ctx: Context | None) -> str | None:
        return gateway.unavailable(gateway.DEFAULT_CMD)

    def run(self, ctx: Context) -> Outcome:
        requests = 60 if ctx.settings.quick else REQUESTS
        workdir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
        target = gateway.start(gateway.DEFAULT_CMD, workdir, ctx.upstream, gateway.CACHE)
        try:
            pid = target.pid
            headers = {"Authorization": f"Bearer {target.bearer}"}
            hit_body = {"model": "bench-model", "messages": [{"role": "user", "content": "cached question"}]}
            hits, misses = [], []
            with httpx.Client(timeout=30, headers=headers) as client:
                first = client.post(target.url, json=hit_body)
                assert first.status_code == 200, first.text

                def batch(bodies: list[dict[str, object]], want: str) -> float:
                    before = procstat.cpu_seconds(pid)
                    for body in bodies:
                        answer = client.post(target.url, json=body)
                        if answer.status_code != 200 or answer.headers.get("x-tollgate-cache") != want:
                            raise RuntimeError(f"expected a {want}: {answer.status_code} {answer.headers}")
                    return (procstat.cpu_seconds(pid) - before) * 1000 / len(bodies)

                serial = time.time_ns()
                for round_ in range(ctx.settings.rounds):
                    fresh = [
                        {"model": "bench-model", "messages": [{"role": "user", "content": f"q {serial} {round_} {n}"}]}
                        for n in range(requests)
                    ]
                    order = [("hit", [hit_body] * requests), ("miss", fresh)]
                    for want, bodies in order if round_ % 2 == 0 else reversed(order):
                        (hits if want == "hit" else misses).append(batch(bodies, want))
                    ctx.log(f"cache round {round_ + 1}: hit {hits[-1]:.3f} ms, miss {misses[-1]:.3f} ms CPU/request")
        finally:
            target.server.stop()
        hit_ms, miss_ms = median(hits) or 0.0, median(misses) or 0.0
        figures = {
            "requests_per_batch": requests,
            "rounds": ctx.settings.rounds,
            "hit_cpu_ms_per_request": hit_ms,
            "miss_cpu_ms_per_request": miss_ms,
            "hit_to_miss_ratio": hit_ms / miss_ms if miss_ms else None,
            "hit_rounds": hits,
            "miss_rounds": misses,
        }
        table = Table(
            self.title,
            ["requests per batch", "hit CPU ms/req", "miss CPU ms/req", "hit / miss"],
            [[str(requests), fmt(hit_ms), fmt(miss_ms), fmt(figures["hit_to_miss_ratio"])]],
            [
                "Medians of the rounds; gateway process tree only (the fake upstream's CPU is not counted).",
                gateway.CACHE.note,
            ],
        )
        return Outcome(self.name, self.title, tables=[table], figures=figures)
