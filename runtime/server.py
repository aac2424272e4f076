"""Serve the gateway with Hypercorn's trio worker, in the same `trio.run` as the actors."""

from __future__ import annotations

import logging
import signal
import sys
from functools import partial
from typing import TextIO

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from runtime.config import Config
from runtime.gateway import Gateway, open_gateway
from runtime.web import RequestLifetime, create_app

log = logging.getLogger("tollgate")


def hypercorn_config(config: Config, host: str, port: int) -> HypercornConfig:
    hyper = HypercornConfig()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.graceful_timeout = config.server.grace_period_s
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")
    hyper.keep_alive_timeout = 75
    hyper.include_server_header = False
    return hyper


async def serve(
    gateway: Gateway,
    *,
    host: str | None = None,
    port: int | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP until `gateway.begin_drain()`; then stop accepting, give in-flight requests the
    grace period, and cancel what is left. Reports the bound URLs (the real port when 0 was asked)."""
    server = gateway.config.server
    hyper = hypercorn_config(gateway.config, host or server.host, server.port if port is None else port)
    app = RequestLifetime(create_app(gateway), gateway)
    await hypercorn.trio.serve(
        app,  # type: ignore[arg-type]
        hyper,
        shutdown_trigger=gateway.draining.wait,
        task_status=task_status,
    )


async def _watch_signals(gateway: Gateway, cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if gateway.draining.is_set():
                log.warning("second signal: stopping now")
                cancel_scope.cancel()
                return
            log.info(
                "%s: draining (grace period %ss)", signal.Signals(signum).name, gateway.config.server.grace_period_s
            )
            gateway.begin_drain()


async def run(config: Config, *, host: str | None = None, port: int | None = None, out: TextIO = sys.stdout) -> None:
    """`tollgate serve`: start everything, print `listening on URL`, run until a signal."""
    async with open_gateway(config) as gateway:
        if gateway.generated_admin_key:
            print(
                f"admin key (generated because {config.admin.api_key_env} is unset; shown once): "
                f"{gateway.generated_admin_key}",
                file=sys.stderr,
                flush=True,
            )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, gateway, nursery.cancel_scope)
            binds = await nursery.start(partial(_serve_then_stop, gateway, nursery.cancel_scope, host, port))
            gateway.ready = True
            print(f"listening on {binds[0]}", file=out, flush=True)
        log.info("stopped")


async def _serve_then_stop(
    gateway: Gateway,
    cancel_scope: trio.CancelScope,
    host: str | None,
    port: int | None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(gateway, host=host, port=port, task_status=task_status)
    cancel_scope.cancel()  # drained: stop the signal watcher too
