"""Serve the gateway with Hypercorn's trio worker, in the same `trio.run` as the actors."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from functools import partial
from typing import TextIO

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from events.store import MEMORY
from runtime.auth import new_key
from runtime.config import Config
from runtime.gateway import Gateway, open_gateway
from runtime.http.app import RequestLifetime, create_app
from runtime.http.body_drain import BodyDrain
from runtime.http.observe import configure_logging, live_metrics, metrics_app

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


async def run(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    out: TextIO = sys.stdout,
    workers: int | None = None,
    listen_fd: int | None = None,
    config_path: str | None = None,
) -> None:
    """`tollgate serve`: bind the port, start everything, print `listening on URL`, run until a
    signal. Raises `CannotStart` (before touching the ledger) when the port is taken.

    Several processes may serve one SQLite ledger (each follows the log the others write). With
    `workers` > 1 this process binds the port, starts that many worker processes sharing the
    socket (`--listen-fd`), restarts one that dies and forwards SIGTERM/SIGINT to all (each drains).
    A worker serves the inherited socket `listen_fd`."""
    server = config.server
    if listen_fd is not None:
        hyper = hypercorn_config(config, host or server.host, 0)
        hyper.bind = [f"fd://{listen_fd}"]
        await _run(config, hyper, sys.stderr, parent=os.getppid())
        return
    count = server.workers if workers is None else workers
    if count < 1:
        raise CannotStart("--workers must be at least 1")
    if count > 1 and config.ledger.location == MEMORY:
        raise CannotStart("--workers needs a ledger file: an in-memory ledger belongs to one process")
    hyper = listen(config, host or server.host, server.port if port is None else port)
    if count == 1:
        await _run(config, hyper, out)
        return
    await _supervise(config, hyper, count, out, config_path)


async def _orphaned(gateway: Gateway, parent: int) -> None:
    """A worker whose supervising parent died (kill -9) drains and stops instead of serving on."""
    while True:
        if os.getppid() != parent:
            break
        await trio.sleep(1.0)  # a polling interval: Linux tells a child nothing when its parent dies
    log.warning("the supervising process %d is gone: draining", parent)
    gateway.begin_drain()


RESTARTS = 5
RESTART_WINDOW_S = 60.0


async def _supervise(config: Config, hyper: HypercornConfig, count: int, out: TextIO, config_path: str | None) -> None:
    configure_logging(config.logging)
    fd = int(hyper.bind[0].removeprefix("fd://"))
    environ = dict(os.environ)
    if not environ.get(config.admin.api_key_env):  # one admin key for every worker
        environ[config.admin.api_key_env] = generated = new_key("tga-")
        print(
            f"admin key (generated because {config.admin.api_key_env} is unset; shown once): {generated}",
            file=sys.stderr,
            flush=True,
        )
    argv = [sys.executable, "-m", "runtime.cli", "serve", "--listen-fd", str(fd)]
    if config_path is not None:
        argv += ["--config", config_path]
    stopping = trio.Event()
    processes: dict[int, trio.Process] = {}
    restarts: list[float] = []
    watching = trio.CancelScope()
    address = socket.socket(fileno=os.dup(fd))
    try:
        bound_host, bound_port = address.getsockname()[:2]
    finally:
        address.close()
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host

    async def worker(number: int, env: Mapping[str, str]) -> None:
        while not stopping.is_set():
            # Its own session: a signal to the parent's group (Ctrl-C, killpg) reaches the parent alone,
            # which forwards it once; a parent that dies (kill -9) is noticed by its workers (`_orphaned`).
            process = await trio.lowlevel.open_process(argv, pass_fds=(fd,), env=env, start_new_session=True)
            processes[number] = process
            code = await process.wait()
            if stopping.is_set():
                return
            now = trio.current_time()
            restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(restarts) > RESTARTS:
                log.error("workers keep dying (%d restarts in %ss): stopping", len(restarts), RESTART_WINDOW_S)
                stopping.set()
                for other in processes.values():
                    if other.returncode is None:
                        other.send_signal(signal.SIGTERM)
                watching.cancel()
                return
            log.warning("worker %d (pid %d) exited with %s: restarting it", number, process.pid, code)

    async with trio.open_nursery() as nursery:
        for number in range(count):
            nursery.start_soon(worker, number, environ)
        log.info("%d workers on one port", count)
        print(f"listening on http://{shown}:{bound_port}", file=out, flush=True)
        with watching, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: stopping %d workers", signal.Signals(signum).name, count)
                stopping.set()
                for process in processes.values():
                    if process.returncode is None:
                        process.send_signal(signum)
                break
    os.close(fd)
    log.info("stopped")


async def _run(config: Config, hyper: HypercornConfig, out: TextIO, parent: int | None = None) -> None:
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
            if parent is not None:
                nursery.start_soon(_orphaned, gateway, parent)
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
