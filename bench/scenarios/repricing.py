"""Scenario 4: re-pricing throughput and gateway start-up time with a large ledger.

1. Generate a SQLite ledger of N completed requests (an `Admitted` and a `Completed` event each; N = 1 M,
   100 k with --quick) with a bulk writer: rows in eventsourcing's own stored form, inserted with
   `executemany` (the Journal's path, ≈ 20–30 k events/s, would take minutes for 2 M events). The
   bench's test checks these rows read back through eventsourcing as the real events.
2. Re-price it: a dry run of `runtime.ledger.reprice.dry_run` under a flat price set that changes every cost
   (the same scan the admin API runs), reported as events/s (both events of a request count) and
   requests/s, in a fresh process whose peak RSS is reported (it does not grow with the ledger).
3. Start `tollgate serve` on that ledger until it prints `listening on`: cold (its projections are
   built from the whole log) and warm (they are up to date).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bench.scenario import Context, Outcome, Table, fmt

REPO = Path(__file__).resolve().parent.parent.parent
REQUESTS = 1_000_000
QUICK_REQUESTS = 100_000
INSERT_BATCH = 50_000
TENANTS = 20
START_DEADLINE_S = 600


def _wrapped(kind: str, data: str) -> str:
    return f'{{"_type_":"{kind}","_data_":"{data}"}}'


def generate(path: str, requests: int, seed: int = 7) -> float:
    """Append `requests` Admitted+Completed pairs to the ledger at `path`; return the seconds taken."""
    import sqlite3

    from events.money import usd, usd_str
    from events.store import LedgerStore

    started = time.perf_counter()
    LedgerStore(path).close()  # eventsourcing creates its table
    rng = random.Random(seed)
    base = datetime(2026, 10, 1, tzinfo=UTC)
    now = _wrapped("datetime_iso", datetime.now(UTC).isoformat())
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    try:
        rows: list[tuple[str, int, str, bytes]] = []
        for n in range(requests):
            aggregate = f"{rng.getrandbits(128):032x}"
            received = (base + timedelta(seconds=n * 2)).isoformat()
            prompt, completion = rng.randint(10, 4000), rng.randint(1, 1000)
            cost = usd_str(usd(Decimal(prompt * 1 + completion * 2) / 1_000_000))
            admitted = (
                f'{{"timestamp":{now},"originator_topic":"events.request:Request","request_id":"bench-{n}",'
                f'"tenant":"tenant-{n % TENANTS}","model":"sim-1","stream":false,'
                f'"reserved_usd":{_wrapped("decimal_str", "0.01")},"received_at":{_wrapped("datetime_iso", received)}}}'
            )
            completed = (
                f'{{"timestamp":{now},"provider":"sim","served_model":"sim-1","prompt_tokens":{prompt},'
                f'"completion_tokens":{completion},"cached_tokens":0,"usage_source":"provider",'
                f'"cost_usd":{_wrapped("decimal_str", cost)},"price_ref":"sim/sim-1@2026-10-01T00:00:00+00:00",'
                f'"latency_us":1000,"overhead_us":300,"outcome":"ok"}}'
            )
            rows.append((aggregate, 1, "events.request:Request.Admitted", admitted.encode()))
            rows.append((aggregate, 2, "events.request:Request.Completed", completed.encode()))
            if len(rows) >= INSERT_BATCH:
                with connection:
                    connection.executemany("insert into stored_events values (?, ?, ?, ?)", rows)
                rows = []
        if rows:
            with connection:
                connection.executemany("insert into stored_events values (?, ?, ?, ?)", rows)
    finally:
        connection.close()
    return time.perf_counter() - started


def reprice_dry_run(path: str) -> dict[str, float]:
    """The dry run, timed inside a fresh process so its peak RSS is the run's own."""
    script = (
        "import json, sys; from bench.scenarios.repricing import _dry_run; print(json.dumps(_dry_run(sys.argv[1])))"
    )
    done = subprocess.run([sys.executable, "-c", script, path], cwd=REPO, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def _dry_run(path: str) -> dict[str, float]:
    from events.store import LedgerStore
    from policies.cost import Price
    from policies.repricing import Filters, flat_prices
    from runtime.ledger.reprice import dry_run

    store = LedgerStore(path)
    try:
        prices = flat_prices({"sim/sim-1": Price(Decimal("2"), Decimal("4"))})
        started = time.perf_counter()
        report = dry_run(store, prices, Filters())
        seconds = time.perf_counter() - started
        events = store.position()
    finally:
        store.close()
    return {
        "seconds": seconds,
        "events": events,
        "events_per_s": events / seconds,
        "requests_per_s": report.totals["requests"] / seconds,
        "restated": report.totals["restated"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def start_up(path: str, folder: Path) -> float:
    """Seconds from `tollgate serve` to `listening on` with the ledger at `path`."""
    config = folder / "config.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\n[ledger]\npath = "{path}"\n'
        '[[providers]]\nname = "sim"\nkind = "simulator"\nmodels = ["sim-1"]\n'
        '[pricing."sim/sim-1"]\ninput_per_mtok = "1"\noutput_per_mtok = "2"\n'
    )
    env = {**os.environ, "TOLLGATE_ADMIN_KEY": "tga-bench"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        seconds = time.perf_counter() - started
        if not line.startswith("listening on"):
            raise RuntimeError(f"tollgate serve did not start: {line!r}")
        return seconds
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


class RepricingScenario:
    name = "repricing"
    title = "4. Re-pricing throughput and start-up time with a large ledger"

    def unavailable(self, ctx: Context | None) -> str | None:
        if not (REPO / "runtime" / "ledger" / "reprice.py").exists():
            return "re-pricing does not exist yet (no runtime/ledger/reprice.py)"
        return None

    def run(self, ctx: Context) -> Outcome:
        requests = QUICK_REQUESTS if ctx.settings.quick else REQUESTS
        with tempfile.TemporaryDirectory(prefix="tollgate-reprice-") as tmp:
            folder = Path(tmp)
            path = str(folder / "ledger.sqlite3")
            ctx.log(f"repricing: generating a ledger of {requests:,} completed requests")
            generated_s = generate(path, requests)
            ctx.log(f"repricing: generated {2 * requests:,} events in {generated_s:.1f}s; dry run")
            dry = reprice_dry_run(path)
            ctx.log(f"repricing: {dry['events_per_s']:,.0f} events/s; starting the gateway (cold)")
            cold_s = start_up(path, folder)
            ctx.log(f"repricing: cold start {cold_s:.1f}s; warm start")
            warm_s = start_up(path, folder)
        rows = [
            ["ledger generated (bulk rows)", f"{2 * requests:,} events", f"{fmt(generated_s, 1)} s"],
            [
                "re-pricing dry run",
                f"{fmt(dry['events_per_s'], 0)} events/s ({fmt(dry['requests_per_s'], 0)} requests/s)",
                f"{fmt(dry['seconds'], 1)} s",
            ],
            ["re-pricing dry run, peak RSS of its process", f"{fmt(dry['peak_rss_mib'], 0)} MiB", "–"],
            ["start-up to ready, cold (projections built)", "–", f"{fmt(cold_s, 1)} s"],
            ["start-up to ready, warm (projections current)", "–", f"{fmt(warm_s, 1)} s"],
        ]
        table = Table(
            f"Re-pricing and start-up with a ledger of {requests:,} completed requests",
            ["measure", "rate", "time"],
            rows,
            notes=[
                "Dry run: every request re-priced under a flat price set that changes each cost (SQLite scan "
                "through a read-only connection, json_extract, policies.cost). Target ≥ 50 000 events/s.",
                "Memory: the scan holds one page (20 000 events), the requests admitted and not yet settled, those "
                "already restated, and one row per tenant × model × provider: compare the RSS with --quick.",
                "Cold start folds the whole log into new projections; warm start finds them current.",
            ],
        )
        return Outcome(
            self.name,
            self.title,
            tables=[table],
            figures={
                "requests": requests,
                "generate_s": generated_s,
                "dry_run": dry,
                "start_cold_s": cold_s,
                "start_warm_s": warm_s,
            },
        )
