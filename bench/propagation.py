"""How long a write through one `tollgate serve` takes to apply on another on the same ledger.

    .venv/bin/python -m bench.propagation [--tenants 50] [--ledger sqlite|postgres|both] [--poll-s S]

Starts two `serve` processes on one fresh ledger (SQLite, or a throwaway PostgreSQL started here:
tests/postgres.py), creates tenants through A's admin API, and times from each 201 to the first 200
of the new key on B (polled every 5 ms). B follows the log every `[ledger] poll_s` (50 ms by default);
on PostgreSQL it is also woken by NOTIFY at once. Prints p50/p99/max and B's own
`follow_delay_p99_s` (commit on A → folded on B, from /admin/statistics) and how often NOTIFY woke it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.postgres import PASSWORD, PASSWORD_ENV, PostgresServer
from tests.test_workers import ADMIN, serving, write_config


def measure(config: Path, tenants: int) -> str:
    delays = []
    with ExitStack() as stack:
        _a, url_a = stack.enter_context(serving(config))
        _b, url_b = stack.enter_context(serving(config))
        for i in range(tenants):
            created = httpx.post(url_a + "/admin/tenants", json={"name": f"t{i}"}, headers=ADMIN)
            created.raise_for_status()
            began = time.monotonic()
            auth = {"Authorization": f"Bearer {created.json()['api_key']}"}
            deadline = began + 30
            while httpx.get(url_b + "/v1/models", headers=auth).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("B never accepted the key")
                time.sleep(0.005)  # the probe's polling interval
            delays.append(time.monotonic() - began)
        journal = httpx.get(url_b + "/admin/statistics", headers=ADMIN).json()["journal"]
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    return (
        f"tenant created on A → key accepted on B, {len(delays)} tenants:"
        f" p50 {statistics.median(delays) * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms; B's follow delay p99"
        f" {(journal['follow_delay_p99_s'] or 0) * 1000:.0f} ms over {journal['foreign_events']} foreign events,"
        f" woken by NOTIFY {journal['woken']} times"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--ledger", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--poll-s", type=float, default=None, help="[ledger] poll_s (default 0.05)")
    args = parser.parse_args()
    with ExitStack() as stack:
        if args.ledger in ("sqlite", "both"):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            print("sqlite:", measure(write_config(tmp, poll_s=args.poll_s), args.tenants), flush=True)
        if args.ledger in ("postgres", "both"):
            server = PostgresServer().start()
            stack.callback(server.stop)
            os.environ[PASSWORD_ENV] = PASSWORD
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            config = write_config(tmp, server.database(), poll_s=args.poll_s)
            print("postgres:", measure(config, args.tenants), flush=True)


if __name__ == "__main__":
    main()
