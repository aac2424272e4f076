"""How long a write through one `tollgate serve` takes to apply on another on the same SQLite ledger.

    .venv/bin/python -m bench.propagation [--tenants 50]

Starts two `serve` processes on one fresh ledger, creates tenants through A's admin API, and times
from each 201 to the first 200 of the new key on B (polled every 5 ms; B follows the log every 50 ms).
Prints p50/p99/max and B's own `follow_delay_p99_s` (commit on A → folded on B, from /admin/statistics).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.test_workers import ADMIN, serving, write_config


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation")
    parser.add_argument("--tenants", type=int, default=50)
    args = parser.parse_args()
    delays = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        config = write_config(Path(tmp))
        _a, url_a = stack.enter_context(serving(config))
        _b, url_b = stack.enter_context(serving(config))
        for i in range(args.tenants):
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
    print(
        f"tenant created on A → key accepted on B, {len(delays)} tenants:"
        f" p50 {statistics.median(delays) * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms; B's follow delay p99"
        f" {(journal['follow_delay_p99_s'] or 0) * 1000:.0f} ms over {journal['foreign_events']} foreign events"
    )


if __name__ == "__main__":
    main()
