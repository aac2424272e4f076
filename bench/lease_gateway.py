"""Lease events per 1 000 requests on the gateway's own path: `python -m bench.lease_gateway`.

Two real `tollgate serve` processes on one SQLite ledger (the simulator upstream, no pacing), a
tenant with a hard budget, `--requests` chat completions (max_tokens 20, worst case ≈ $0.009,
actual ≈ $0.008) sent through both at once with the openai SDK from `--concurrency` threads; then
the processes go quiet for `lease_idle_s` and stop. Reported: lease events by kind, per 1 000
requests, refusals, settled spend against the budget. `--processes 1` for the single-process path.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

from events.lease import BudgetSlices
from events.request import Request
from tests.test_lease_e2e import key_works, new_tenant, one_request, open_leases, serve_drained
from tests.test_workers import DEADLINE_S, ledger_events, until

CONFIG = """
[server]
host = "127.0.0.1"
lease_idle_s = 1.0
[ledger]
path = "LEDGER"
[[providers]]
name = "sim"
kind = "simulator"
models = ["gpt-test"]
[pricing."sim/gpt-test"]
input_per_mtok = "10"
output_per_mtok = "400"
"""


def run(processes: int, requests: int, budget: Decimal, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG.replace("LEDGER", str(Path(tmp) / "var" / "ledger.sqlite3")))
        running = [stack.enter_context(serve_drained(config)) for _ in range(processes)]
        urls = [url for _, url in running]
        key = new_tenant(urls[0], str(budget))
        for url in urls:
            until(lambda url=url: key_works(url, key), "the key on every process")  # type: ignore[misc]
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(lambda i: one_request(urls[i % len(urls)], key, 0), range(requests)))
        until(lambda: not open_leases(ledger_events(config)), "every lease given back", DEADLINE_S)
        for process, _ in running:
            process.send_signal(signal.SIGTERM)
            process.wait(DEADLINE_S)
        events = [r.event for r in ledger_events(config)]
    counts = {
        kind.__name__: sum(isinstance(e, kind) for e in events)
        for kind in (BudgetSlices.BudgetLeased, BudgetSlices.LeaseReturned, BudgetSlices.LeaseExpired)
    }
    settled = sum((e.cost_usd or Decimal(0) for e in events if isinstance(e, Request.Settled)), Decimal(0))
    return {
        "processes": processes,
        "budget_usd": str(budget),
        "requests": requests,
        "ok": outcomes.count("ok"),
        "refused": outcomes.count("budget_exceeded"),
        **counts,
        "lease_events_per_1000": round(sum(counts.values()) * 1000 / requests, 2),
        "settled_usd": str(settled),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    for processes in args.processes:
        for budget in (Decimal(1000), Decimal(3)):
            print(run(processes, args.requests, budget, args.concurrency), flush=True)


if __name__ == "__main__":
    main()
