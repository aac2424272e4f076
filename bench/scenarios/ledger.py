"""Scenario 3: events per second the ledger's Journal commits, alone (no HTTP).

Many tasks push request-sized entries (an `Admitted` and a `Completed` event each, built beforehand)
through the real Journal — group commit, one worker thread, the real `LedgerStore` — and wait for each
commit, as the request path does. Reported for the SQLite ledger and for eventsourcing's in-memory
store, with commit latency percentiles and the mean batch size the group commit achieved.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from bench.scenario import Context, Outcome, Table, fmt
from bench.stats import percentile

WRITERS = 256


def _entries(count: int) -> list[list[Any]]:
    from events.request import Request

    now = datetime.now(UTC)
    built = []
    for n in range(count):
        request = Request.admit(f"bench-{n}", "bench", "bench-model", False, Decimal("0.000123"), now)
        request.settle(
            Request.Completed,
            provider="up",
            served_model="bench-model",
            prompt_tokens=11,
            completion_tokens=7,
            cached_tokens=0,
            usage_source="provider",
            cost_usd=Decimal("0.000016"),
            price_ref="up/bench-model@t",
            latency_us=1000,
            overhead_us=300,
            outcome="ok",
        )
        built.append(request.collect_events())
    return built


async def _measure(path: str, entries: list[list[Any]], seconds: float) -> dict[str, float]:
    from events.store import LedgerStore
    from runtime.ledger.journal import Journal

    store = LedgerStore(path)
    journal = Journal(store, lambda recorded: None)
    latencies: list[float] = []
    committed = 0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            deadline = trio.current_time() + seconds
            pending = iter(entries)

            async def writer() -> None:
                nonlocal committed
                for events in pending:
                    if trio.current_time() >= deadline:
                        return
                    began = time.perf_counter()
                    await journal.commit(events)
                    latencies.append((time.perf_counter() - began) * 1000)
                    committed += len(events)

            started = time.perf_counter()
            async with trio.open_nursery() as writers:
                for _ in range(WRITERS):
                    writers.start_soon(writer)
            elapsed = time.perf_counter() - started
            stats = journal.statistics()
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    return {
        "events_per_s": committed / elapsed,
        "commit_p50_ms": percentile(latencies, 50),
        "commit_p99_ms": percentile(latencies, 99),
        "mean_batch": stats.committed_events / max(stats.commits, 1),
        "events": committed,
    }


class LedgerScenario:
    name = "ledger"
    title = "3. The ledger alone: events/s the Journal commits"

    def unavailable(self, ctx: Context | None) -> str | None:
        return None

    def run(self, ctx: Context) -> Outcome:
        seconds = 2.0 if ctx.settings.quick else 5.0
        entries = _entries(60_000 if ctx.settings.quick else 150_000)
        figures: dict[str, object] = {"writers": WRITERS, "seconds": seconds}
        rows = []
        with tempfile.TemporaryDirectory(prefix="tollgate-ledger-bench-") as folder:
            for label, path in (
                ("SQLite ledger (file)", str(Path(folder) / "ledger.sqlite3")),
                ("in-memory store", ":memory:"),
            ):
                ctx.log(f"ledger: {label}: {WRITERS} writers for {seconds:g} s")
                result = trio.run(_measure, path, entries, seconds)
                figures[label] = result
                rows.append(
                    [
                        label,
                        fmt(result["events_per_s"], 0),
                        fmt(result["commit_p50_ms"]),
                        fmt(result["commit_p99_ms"]),
                        fmt(result["mean_batch"], 1),
                    ]
                )
        table = Table(
            self.title,
            ["store", "events/s", "commit p50 ms", "commit p99 ms", "mean batch (events)"],
            rows,
            [
                f"{WRITERS} tasks each commit one request's events (Admitted + Completed) and wait for it, as the "
                "request path does; the Journal commits whatever is queued in one save() on one worker thread.",
                "Target: ≥ 20 000 events/s. The SQLite file is fsynced on every commit (eventsourcing's default).",
            ],
        )
        return Outcome(self.name, self.title, tables=[table], figures=figures)
