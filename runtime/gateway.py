"""`open_gateway(config)`: the root nursery, its supervised actors, and the `Gateway` handle.

Everything long-lived runs under the nursery this opens; callers get a `Gateway` handle to pass
around (never the nursery itself).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

from policies.routing import RoutingIndex
from providers.openai import OpenAIUpstream
from providers.simulator import Simulator
from providers.upstream import Upstream
from runtime.auth import DEMO_KEY, AdminKey, Tenant, TenantIndex, hash_key, new_key
from runtime.config import Config, ProviderConfig
from runtime.provider_actor import ProviderHandle, ProviderStatistics
from runtime.supervisor import supervise

log = logging.getLogger("tollgate")


def build_upstream(provider: ProviderConfig, environ: Mapping[str, str]) -> Upstream:
    if provider.kind == "simulator":
        return Simulator(provider.name, provider.simulator)
    assert provider.base_url is not None  # checked by check_config
    api_key = environ.get(provider.api_key_env) if provider.api_key_env else None
    return OpenAIUpstream(
        provider.name, provider.base_url, api_key, provider.timeouts, provider.max_concurrency, provider.headers
    )


def build_tenant_index(config: Config, environ: Mapping[str, str]) -> TenantIndex:
    entries = []
    for tenant in config.tenants:
        if tenant.api_key_sha256 is not None:
            digest = tenant.api_key_sha256
        else:
            assert tenant.api_key_env is not None
            digest = hash_key(environ[tenant.api_key_env])
        if digest == hash_key(DEMO_KEY):
            log.warning(
                "tenant %r uses the demo key published in the README: anyone can use it; "
                "replace it before exposing this gateway",
                tenant.name,
            )
        entries.append((digest, Tenant(tenant.name)))
    return TenantIndex(entries)


@attrs.frozen
class GatewayStatistics:
    ready: bool
    draining: bool
    providers: tuple[ProviderStatistics, ...]


@attrs.define
class Gateway:
    config: Config
    providers: dict[str, ProviderHandle]
    routes: RoutingIndex
    tenants: TenantIndex
    admin: AdminKey
    generated_admin_key: str | None = None
    ready: bool = False
    draining: trio.Event = attrs.field(factory=trio.Event)

    def begin_drain(self) -> None:
        self.ready = False
        self.draining.set()

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            ready=self.ready,
            draining=self.draining.is_set(),
            providers=tuple(handle.statistics() for handle in self.providers.values()),
        )


@asynccontextmanager
async def open_gateway(config: Config, environ: Mapping[str, str] | None = None) -> AsyncIterator[Gateway]:
    environ = os.environ if environ is None else environ
    admin_key = environ.get(config.admin.api_key_env)
    generated = None
    if not admin_key:
        admin_key = generated = new_key("tga-")
    handles = {
        provider.name: ProviderHandle(
            provider.name, provider.kind, build_upstream(provider, environ), provider.max_concurrency
        )
        for provider in config.providers
    }
    gateway = Gateway(
        config=config,
        providers=handles,
        routes=RoutingIndex.build(
            [(p.name, p.models) for p in config.providers],
            {name: alias.deployments for name, alias in config.models.items()},
        ),
        tenants=build_tenant_index(config, environ),
        admin=AdminKey(admin_key),
        generated_admin_key=generated,
    )
    try:
        async with trio.open_nursery() as nursery:
            for handle in handles.values():
                await nursery.start(partial(supervise, f"provider:{handle.name}", handle.run, handle.give_up))
            yield gateway
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for handle in handles.values():
                await handle.upstream.aclose()
