"""Start the real gateway on a loopback port, and talk to it with the official openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import attrs
import httpx
import openai
import trio

from runtime.auth import DEMO_KEY, hash_key
from runtime.config import Config, parse_config
from runtime.gateway import Gateway, open_gateway
from runtime.http.server import serve
from tests.postgres import PASSWORD, PASSWORD_ENV

ADMIN_KEY = "tga-test-admin-key"
T = TypeVar("T")


def make_config(*, providers: list[dict[str, Any]] | None = None, **sections: Any) -> Config:
    """A config with the demo tenant and the simulator unless told otherwise."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 2.0},
        "ledger": {"path": ":memory:"},
        "providers": providers
        if providers is not None
        else [{"name": "sim", "kind": "simulator", "models": ["sim-1"]}],
        "tenants": [{"name": "demo", "api_key_sha256": hash_key(DEMO_KEY)}],
    }
    data.update(sections)
    return parse_config(data, {"TEST_ADMIN_KEY": ADMIN_KEY, "FAKE_KEY": "sk-fake-upstream", PASSWORD_ENV: PASSWORD})


@attrs.frozen
class Running:
    gateway: Gateway
    url: str
    clients: list[openai.OpenAI] = attrs.field(factory=list)

    def client(self, key: str = DEMO_KEY, **options: Any) -> openai.OpenAI:
        """An SDK client for this gateway, closed when the gateway stops."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **options)
        self.clients.append(client)
        return client

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)


@asynccontextmanager
async def running_gateway(config: Config, clock: Callable[[], datetime] | None = None) -> AsyncIterator[Running]:
    environ = {"TOLLGATE_ADMIN_KEY": ADMIN_KEY, "FAKE_KEY": "sk-fake-upstream", PASSWORD_ENV: PASSWORD}
    async with open_gateway(config, environ, clock) as gateway, trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, gateway))
        gateway.ready = True
        running = Running(gateway, binds[0])
        try:
            yield running
        finally:
            for client in running.clients:
                client.close()
        nursery.cancel_scope.cancel()  # tests that need a graceful drain do it themselves


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking SDK call without blocking the trio loop that serves it."""
    return await trio.to_thread.run_sync(partial(function, *args, **kwargs))


def openai_provider(
    fake_url: str, name: str = "up", models: tuple[str, ...] = ("gpt-test",), **extra: Any
) -> dict[str, Any]:
    """An OpenAI-compatible provider entry; no retries unless a test asks (fallback tests stay exact)."""
    return {
        "name": name,
        "kind": "openai",
        "base_url": fake_url,
        "api_key_env": "FAKE_KEY",
        "models": list(models),
        "max_retries": 0,
        **extra,
    }


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def ledger_events(running: Running, after: int = 0) -> list[Any]:
    """Every event committed so far (through the same door the Journal uses)."""
    gateway = running.gateway
    await gateway.breakers.wait_idle()  # breaker transitions are committed by their own task
    records = await trio.to_thread.run_sync(
        lambda: list(gateway.store.read_all(after)), limiter=gateway.journal.limiter
    )
    return [record.event for record in records]


async def wait_for_events(running: Running, done: Callable[[list[Any]], bool]) -> list[Any]:
    """Read the ledger until `done(events)`; between reads wait for the Journal's next commit, never
    missing one that lands while the events are read (the commit count is compared before waiting)."""
    journal = running.gateway.journal
    while True:
        commits = journal.statistics().commits
        events = await ledger_events(running)
        if done(events):
            return events
        if journal.statistics().commits == commits:
            await journal.next_commit()


def request_events(events: list[Any]) -> dict[str, list[str]]:
    """Request aggregates' event type names, by request_id, in order."""
    from events.request import Request

    by_aggregate: dict[Any, list[Any]] = {}
    for event in events:
        if isinstance(event, Request.Event):
            by_aggregate.setdefault(event.originator_id, []).append(event)
    return {chain[0].request_id: [type(e).__name__ for e in chain] for chain in by_aggregate.values()}
