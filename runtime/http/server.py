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
from runtime.http.app import RequestLifetime, create_app
from runtime.http.body_drain import BodyDrain
from runtime.http.observe import configure_logging, live_metrics, metrics_app
from runtime.ledger.lock import LedgerBusy, ledger_lock

log = logging.getLogger("tollgate")


def hypercorn_config(config: Config, host: str, port: int) -> HypercornConfig:
    hyper = HypercornConfig()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.graceful_timeout = config.server.grace_period_s
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")
    # Hypercorn's keep-alive timer runs from the moment a connection opens (or finished its last
    # answer) until a complete request head has arrived: exactly a header timeout. So one setting
    # bounds a client that never sends a byte, one that drips header lines, and an idle keep-alive
    # connection. (`read_timeout` would only bound the gap between two reads, which a drip defeats.)
    hyper.keep_alive_timeout = config.server.header_timeout_s
    hyper.include_server_header = False
    return hyper


class CannotStart(Exception):
    """`tollgate serve` cannot start (port taken, ledger in use); the message is one line for the
    operator, printed as `tollgate: MESSAGE` with exit code 2."""


def listen(config: Config, host: str, port: int) -> HypercornConfig:
    """Bind the listening socket now, before anything else is touched (no ledger created, no admin
    key printed, when the port is taken), and hand it to Hypercorn as an `fd://` bind."""
    hyper = hypercorn_config(config, host, port)
    try:
        sockets = hyper.create_sockets()
    except OSError as error:
        reason = error.strerror or str(error)
        raise CannotStart(f"cannot listen on {hyper.bind[0]}: {reason[:1].lower()}{reason[1:]}") from None
    hyper.bind = [f"fd://{sock.detach()}" for sock in sockets.insecure_sockets]
    return hyper


async def serve(
    gateway: Gateway,
    *,
    host: str | None = None,
    port: int | None = None,
    hyper: HypercornConfig | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP until `gateway.begin_drain()`; then stop accepting, give in-flight requests the
    grace period, and cancel what is left. Reports the bound URLs (the real port when 0 was asked).
    `hyper` is a config from `listen` (already bound); without it, `host`/`port` are bound here."""
    server = gateway.config.server
    if hyper is None:
        hyper = hypercorn_config(gateway.config, host or server.host, server.port if port is None else port)
    app = RequestLifetime(BodyDrain(create_app(gateway), server.max_body_bytes, server.body_timeout_s), gateway)
    metrics = gateway.config.metrics
    async with trio.open_nursery() as nursery:
        if metrics.enabled and metrics.port is not None:  # `GET /metrics` on its own port
            gateway.metrics.add_collector(lambda: live_metrics(gateway))
            metrics_hyper = hypercorn_config(gateway.config, host or server.host, metrics.port)
            binds = await nursery.start(
                partial(
                    hypercorn.trio.serve, metrics_app(gateway), metrics_hyper, shutdown_trigger=gateway.draining.wait
                )
            )
            gateway.metrics.url = binds[0]
            log.info("metrics on %s/metrics", binds[0])
        await hypercorn.trio.serve(
            app,  # type: ignore[arg-type]
            hyper,
            shutdown_trigger=gateway.draining.wait,
            task_status=task_status,
        )
        nursery.cancel_scope.cancel()


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
    """`tollgate serve`: bind the port, lock the ledger, start everything, print `listening on URL`,
    run until a signal. Raises `CannotStart` (before touching the ledger) when the port is taken or
    another process serves the same ledger."""
    server = config.server
    hyper = listen(config, host or server.host, server.port if port is None else port)
    try:
        with ledger_lock(config.ledger.location):
            await _run(config, hyper, out)
    except LedgerBusy as error:
        raise CannotStart(str(error)) from None


async def _run(config: Config, hyper: HypercornConfig, out: TextIO) -> None:
    configure_logging(config.logging)
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
            binds = await nursery.start(partial(_serve_then_stop, gateway, nursery.cancel_scope, hyper))
            gateway.ready = True
            print(f"listening on {binds[0]}", file=out, flush=True)
        log.info("stopped")


async def _serve_then_stop(
    gateway: Gateway,
    cancel_scope: trio.CancelScope,
    hyper: HypercornConfig,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(gateway, hyper=hyper, task_status=task_status)
    cancel_scope.cancel()  # drained: stop the signal watcher too
