"""What the access log and the request metrics cost per request, in process: `request_ended` and
`Metrics.settled` called on a settled exchange, CPU time per call, the access log written through the
handler `tollgate serve` installs (to /dev/null). A micro-measure beside scenario 1's no-obs twin, which
the shared machine's noise can swamp: `python -m bench.obs_cost`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from runtime.chat.exchange import Account, Exchange
from runtime.chat.trace import Trace
from runtime.config import LoggingConfig
from runtime.http.observe import access_log, configure_logging, request_ended
from runtime.metrics import Metrics

CALLS = 20_000


def per_call_us(run: Any, calls: int = CALLS) -> float:
    run()
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            run()
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


def main() -> None:
    metrics = Metrics(tenants=["bench"], models=["bench-model"])
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
    exchange = Exchange("req-0123456789abcdef", Trace("0" * 31 + "1", "0" * 15 + "1", "01", None))
    exchange.account = Account(
        "bench", "bench-model", False, "ok", "upstream", (), 12, 34, "0.000057000000000000000000"
    )
    with open(os.devnull, "w") as sink:
        for fmt in ("json", "text"):
            for access in (True, False):
                settings = LoggingConfig(format=fmt, access=access)
                configure_logging(settings, stream=sink)
                gateway: Any = SimpleNamespace(metrics=metrics, config=SimpleNamespace(logging=settings))
                us = per_call_us(functools.partial(request_ended, gateway, scope, exchange, 200, None))
                print(f"request_ended  format={fmt:<4} access={str(access).lower():<5} {us:7.2f} µs/call")
        settled = per_call_us(
            lambda: metrics.settled("bench", "bench-model", "upstream", "ok", 12, 34, Decimal("0.000057"), 0.01, 0.001)
        )
        print(f"Metrics.settled                          {settled:7.2f} µs/call")
    access_log.handlers.clear()
    logging.shutdown()


if __name__ == "__main__":
    main()
