"""A stand-in gateway for testing the harness itself: a bare quart-trio + httpx proxy.

It speaks the part of Tollgate's contract the bench relies on (the same config TOML, ``listening on``,
``/readyz``, bearer check, ``x-tollgate-overhead-ms`` and ``x_gateway.overhead_ms``) and nothing
else: no ledger, no budgets. Use it to check the bench without the real gateway::

    python -m bench --quick --gateway-cmd "{python} -m bench.standin --config {config}"

Its figures are a floor for what any quart-trio + httpx gateway can do on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import tomllib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio


def build_app(upstream: str, upstream_key: str, tenant_key: str, client: httpx.AsyncClient) -> QuartTrio:
    app = QuartTrio("standin")
    app.config["RESPONSE_TIMEOUT"] = None

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response('{"status":"ready"}', content_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        start = time.perf_counter()
        if request.headers.get("authorization", "") != f"Bearer {tenant_key}":
            return Response(
                '{"error":{"message":"bad key","type":"invalid_request_error"}}', 401, content_type="application/json"
            )
        body = await request.get_json()
        headers = {"authorization": f"Bearer {upstream_key}"}
        if body.get("stream"):
            body["stream_options"] = {"include_usage": True}
            upstream_request = client.build_request("POST", f"{upstream}/chat/completions", json=body, headers=headers)
            sent = time.perf_counter()
            reply = await client.send(upstream_request, stream=True)
            overhead_ms = (sent - start) * 1000

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for piece in reply.aiter_raw():
                        yield piece
                finally:
                    await reply.aclose()

            return Response(
                relay(),
                reply.status_code,
                content_type="text/event-stream",
                headers={"x-tollgate-overhead-ms": f"{overhead_ms:.3f}"},
            )
        sent = time.perf_counter()
        reply = await client.post(f"{upstream}/chat/completions", json=body, headers=headers)
        received = time.perf_counter()
        data = reply.json()
        data["x_gateway"] = {"overhead_ms": 0.0}
        overhead_ms = ((sent - start) + (time.perf_counter() - received)) * 1000
        data["x_gateway"]["overhead_ms"] = round(overhead_ms, 3)
        return Response(
            json.dumps(data),
            reply.status_code,
            content_type="application/json",
            headers={"x-tollgate-overhead-ms": f"{overhead_ms:.3f}"},
        )

    return app


async def run(config: dict[str, Any], host: str | None, port: int | None) -> None:
    provider = config["providers"][0]
    tenant = config["tenants"][0]
    hc = HypercornConfig()
    hc.bind = [f"{host or config['server']['host']}:{port if port is not None else config['server']['port']}"]
    hc.accesslog = None
    limits = httpx.Limits(max_connections=provider.get("max_concurrency", 100), max_keepalive_connections=100)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        app = build_app(
            provider["base_url"].rstrip("/"),
            os.environ[provider["api_key_env"]],
            os.environ[tenant["api_key_env"]],
            client,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def on_signal() -> None:
                async for _ in signals:
                    return

            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(serve, app, hc, shutdown_trigger=on_signal))
                print(f"listening on {binds[0]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.standin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    config = tomllib.loads(args.config.read_text())
    trio.run(run, config, args.host, args.port)  # SIGINT and SIGTERM shut it down gracefully


if __name__ == "__main__":
    main()
