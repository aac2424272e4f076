"""Scenario 1: non-stream chat at fixed concurrencies, direct vs through each gateway, alternating.

Per (target, concurrency, round): req/s and p50/p90/p99 latency from the load generator; the target's
CPU time per request (utime+stime of its process tree from /proc, before and after); the upstream's CPU
use during the run (to show it is not the bottleneck). Rounds alternate the order of the targets
(direct first, then last) so drift in the machine's load hits both sides. Figures are medians over
rounds; "added" latency is the median of the per-round differences gateway − direct.
The floors of Tollgate's own stack (bench/floors.py) run in the same rounds, and table 1d puts Tollgate's
CPU per request over theirs and over each peer's (bench/ratios.py).
Then a separate pass with an httpx client collects each gateway's own overhead figure per response.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from bench import probe, procstat
from bench.gateway import TWIN_NAMES
from bench.ratios import cpu_ratios, one_line, ratio_table
from bench.scenario import Context, Outcome, Table, fmt
from bench.stats import median
from bench.target import Target

TWIN_CONCURRENCY = 16  # where the twins (bench/gateway.py TWINS) run beside the default Tollgate


def chat_targets(ctx: Context) -> list[Target]:
    """Direct, the gateways, then the floors: the order of a round in scenario 1."""
    return [*ctx.targets, *ctx.floors]


@dataclass(frozen=True)
class Run:
    target: str
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_ms_per_request: float | None
    target_cpu_pct: float
    upstream_cpu_pct: float
    loadgen_cpu_pct: float


class ChatScenario:
    name = "chat"
    title = "1. Non-stream chat completions"

    def unavailable(self, ctx: Context | None) -> str | None:
        return None

    def run(self, ctx: Context) -> Outcome:
        s = ctx.settings
        body = probe.chat_body()
        targets = chat_targets(ctx)
        for target in targets:
            if s.warmup_s > 0:
                ctx.log(f"chat: warm-up {target.name} ({s.warmup_s:g} s at c=16)")
                ctx.load.run(target.url, target.bearer, body, 16, s.warmup_s, target.headers)
        runs: list[Run] = []
        for round_no in range(s.rounds):
            order = targets if round_no % 2 == 0 else targets[::-1]
            for concurrency in s.concurrency:
                for target in order:
                    twin = target.name in TWIN_NAMES and TWIN_CONCURRENCY in s.concurrency
                    if twin and concurrency != TWIN_CONCURRENCY:
                        continue  # a twin prices the one thing it changes at one concurrency
                    run = self._measure(ctx, target, body, concurrency, round_no)
                    runs.append(run)
                    ctx.log(
                        f"chat: round {round_no + 1}/{s.rounds} c={concurrency:<3} {target.name:<15} "
                        f"{run.rps:9.1f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
                        f"cpu {fmt(run.cpu_ms_per_request, 3)} ms/req"
                        + (f"  ERRORS {run.errors}" if run.errors else "")
                    )
        peak_rss = {t.name: procstat.peak_rss_mib(t.pid) for t in targets}
        overhead: dict[str, dict[str, object]] = {}
        for target in ctx.gateways:
            ctx.log(f"chat: overhead pass, {s.overhead_requests} sequential requests to {target.name}")
            overhead[target.name] = probe.overhead(target, s.overhead_requests)
        figures = self._figures(ctx, runs, peak_rss)
        ratios = cpu_ratios(figures)
        for line in one_line(ratios):
            ctx.log(f"chat: Tollgate CPU per request {line}")
        ratio = ratio_table(ratios, "Tollgate") if ctx.gateways and ctx.gateways[0].name == "tollgate" else None
        return Outcome(
            self.name,
            self.title,
            tables=[self._table(ctx, figures)]
            + ([ratio] if ratio else [])
            + [_overhead_table(ctx, overhead, figures)]
            + ([twins] if (twins := twin_table(ctx, figures)) else []),
            figures={
                "summary": figures,
                "ratios": ratios,
                "runs": [asdict(r) for r in runs],
                "peak_rss_mib": peak_rss,
                "overhead": overhead,
            },
        )

    def _measure(self, ctx: Context, target: Target, body: bytes, concurrency: int, round_no: int) -> Run:
        upstream_pid = ctx.upstream.pid
        cpu0, up0, wall0 = procstat.cpu_seconds(target.pid), procstat.cpu_seconds(upstream_pid), time.monotonic()
        result = ctx.load.run(target.url, target.bearer, body, concurrency, ctx.settings.duration_s, target.headers)
        cpu1, up1, wall = procstat.cpu_seconds(target.pid), procstat.cpu_seconds(upstream_pid), time.monotonic() - wall0
        cpu = cpu1 - cpu0
        return Run(
            target=target.name,
            concurrency=concurrency,
            round=round_no,
            rps=result.rps,
            p50_ms=result.p50_ms,
            p90_ms=result.p90_ms,
            p99_ms=result.p99_ms,
            requests=result.requests,
            errors=result.error_count,
            cpu_ms_per_request=1000 * cpu / result.requests if result.requests else None,
            target_cpu_pct=100 * cpu / wall,
            upstream_cpu_pct=100 * (up1 - up0) / wall,
            loadgen_cpu_pct=result.loadgen_cpu_pct,
        )

    def _figures(self, ctx: Context, runs: list[Run], peak_rss: dict[str, float]) -> list[dict[str, object]]:
        """Medians over rounds per (target, concurrency), with added latency against direct."""
        rows: list[dict[str, object]] = []
        for concurrency in ctx.settings.concurrency:
            direct = {r.round: r for r in runs if r.target == "direct" and r.concurrency == concurrency}
            for target in chat_targets(ctx):
                mine = [r for r in runs if r.target == target.name and r.concurrency == concurrency]
                if not mine and target.name in TWIN_NAMES:
                    continue  # a twin runs at TWIN_CONCURRENCY only: no empty rows for it
                row: dict[str, object] = {
                    "target": target.name,
                    "concurrency": concurrency,
                    "rounds": len(mine),
                    "rps": median(r.rps for r in mine),
                    "p50_ms": median(r.p50_ms for r in mine),
                    "p90_ms": median(r.p90_ms for r in mine),
                    "p99_ms": median(r.p99_ms for r in mine),
                    "cpu_ms_per_request": median(r.cpu_ms_per_request for r in mine),
                    "target_cpu_pct": median(r.target_cpu_pct for r in mine),
                    "upstream_cpu_pct": median(r.upstream_cpu_pct for r in mine),
                    "loadgen_cpu_pct": median(r.loadgen_cpu_pct for r in mine),
                    "errors": sum(r.errors for r in mine),
                    "peak_rss_mib": peak_rss.get(target.name),
                }
                if target.name != "direct":
                    row["added_p50_ms"] = median(r.p50_ms - direct[r.round].p50_ms for r in mine if r.round in direct)
                    row["added_p99_ms"] = median(r.p99_ms - direct[r.round].p99_ms for r in mine if r.round in direct)
                cpu = row["cpu_ms_per_request"]
                row["rps_per_core"] = 1000 / cpu if isinstance(cpu, float) and cpu > 0 else None
                rows.append(row)
        return rows

    def _table(self, ctx: Context, figures: list[dict[str, object]]) -> Table:
        labels = {t.name: t.label for t in chat_targets(ctx)}
        rows = []
        for f in figures:

            def num(key: str, f: dict[str, object] = f) -> float | None:
                value = f.get(key)
                return float(value) if isinstance(value, int | float) else None

            rows.append(
                [
                    labels[str(f["target"])],
                    str(f["concurrency"]),
                    fmt(num("rps"), 0),
                    fmt(num("p50_ms")),
                    fmt(num("p90_ms")),
                    fmt(num("p99_ms")),
                    fmt(num("added_p50_ms"), 2, sign=True),
                    fmt(num("added_p99_ms"), 2, sign=True),
                    fmt(num("cpu_ms_per_request"), 3),
                    fmt(num("rps_per_core"), 0),
                    fmt(num("upstream_cpu_pct"), 0),
                    fmt(num("peak_rss_mib"), 0),
                    str(f["errors"]),
                ]
            )
        s = ctx.settings
        notes = [
            f"{ctx.load.note}; {s.rounds} round(s) of {s.duration_s:g} s per row, medians; targets alternate "
            "within each round (order reversed every other round).",
            "added = median over rounds of (gateway − direct) in the same round. CPU ms/req = utime+stime of "
            "the target's processes per request (from /proc); req/s per core = 1000 / CPU ms/req. "
            "upstream CPU % = the fake upstream's CPU use during that row (it is not the bottleneck while "
            "well under 100 %). Peak RSS = VmHWM over the whole scenario.",
        ]
        for target in [*ctx.gateways, *ctx.floors]:
            notes += [f"{target.label}: {n}" for n in target.notes]
        if any(f["errors"] for f in figures):
            notes.append(
                "ERRORS: some rows had failed requests (non-2xx, timeouts or socket errors); "
                "their req/s is not meaningful."
            )
        return Table(
            self.title,
            [
                "target",
                "conc",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "added p50",
                "added p99",
                "CPU ms/req",
                "req/s/core",
                "upstream CPU %",
                "peak RSS MiB",
                "errors",
            ],
            rows,
            notes,
        )


def _overhead_table(ctx: Context, overhead: dict[str, dict[str, object]], figures: list[dict[str, object]]) -> Table:
    rows = []
    labels = {t.name: t.label for t in ctx.gateways}
    lowest = min(ctx.settings.concurrency)
    measured = {f["target"]: f.get("added_p50_ms") for f in figures if f["concurrency"] == lowest}
    for name, data in overhead.items():
        added = measured.get(name)
        for source, key in (("header " + str(data["header"]), "header_ms"), ("body x_gateway.overhead_ms", "body_ms")):
            dist = data[key]
            assert isinstance(dist, dict)
            if dist["n"]:
                rows.append(
                    [
                        labels[name],
                        source,
                        str(dist["n"]),
                        fmt(dist["p50"], 3),
                        fmt(dist["p90"], 3),
                        fmt(dist["p99"], 3),
                        fmt(dist["max"], 3),
                        fmt(added if isinstance(added, float) else None, 3),
                    ]
                )
        if not rows or rows[-1][0] != labels[name]:
            rows.append(
                [
                    labels[name],
                    "not reported",
                    "0",
                    "–",
                    "–",
                    "–",
                    "–",
                    fmt(added if isinstance(added, float) else None, 3),
                ]
            )
    return Table(
        "1b. Overhead reported by the gateway itself (sequential requests, ms)",
        ["target", "source", "n", "p50", "p90", "p99", "max", f"measured added p50, c={lowest}"],
        rows,
        [
            "Each gateway's own figure for the time it spends outside the upstream call, "
            "collected from every response of a separate sequential pass with an httpx client. The last "
            "column is the added latency the load generator measured (table 1): the gap between the two is "
            "time the gateway's own clock does not see (HTTP server, framework, HTTP client, kernel)."
        ],
    )


def twin_table(ctx: Context, figures: list[dict[str, object]]) -> Table | None:
    """Tollgate against each twin at the twins' concurrency: CPU ms/request and its ratio default / twin."""
    at = {f["target"]: f for f in figures if f["concurrency"] == TWIN_CONCURRENCY}
    base = at.get("tollgate")
    twins = [t for t in ctx.gateways if t.name in TWIN_NAMES and t.name in at]
    if base is None or not twins:
        return None

    def cpu(f: dict[str, object]) -> float | None:
        value = f.get("cpu_ms_per_request")
        return float(value) if isinstance(value, int | float) else None

    def rps(f: dict[str, object]) -> float | None:
        value = f.get("rps")
        return float(value) if isinstance(value, int | float) else None

    base_cpu, base_rps = cpu(base), rps(base)
    labels = {t.name: t.label for t in ctx.gateways}
    rows = [[labels["tollgate"], fmt(base_rps, 0), fmt(base_cpu, 3), "1.000", "–"]]
    for twin in twins:
        twin_cpu, twin_rps = cpu(at[twin.name]), rps(at[twin.name])
        ratio = base_cpu / twin_cpu if base_cpu and twin_cpu else None
        rows.append(
            [
                labels[twin.name],
                fmt(twin_rps, 0),
                fmt(twin_cpu, 3),
                fmt(ratio, 3),
                fmt(100 * (ratio - 1), 1, sign=True) + " %" if ratio is not None else "–",
            ]
        )
    return Table(
        f"1c. What the ledger and observability cost (CPU per request, c={TWIN_CONCURRENCY}, same run)",
        ["target", "req/s", "CPU ms/req", "ratio default / this", "default costs"],
        rows,
        [
            "Each twin is the default Tollgate with one thing changed, measured in the same rounds (medians). "
            "'default costs' = how much more CPU per request the default configuration spends than the twin: "
            "for the no-metrics-no-access-log twin it is what observability costs (#15's goal: ≤ 3 %). "
            "A difference of a few per cent is within this machine's noise."
        ],
    )
