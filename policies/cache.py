"""The response cache's decisions: whether a request may use it, and the key it is stored under.

Pure: no I/O, no clock. The key is scoped to the tenant *by construction*: it is the SHA-256 of the
canonical JSON of the tenant's id, the operation (the route: "chat", later "messages", "responses"),
the public model and every request field that can change the answer — the whole body except the
fields that only shape the delivery (`stream`, `stream_options`). Everything else (messages, tools,
temperature, seed, max_tokens as sent upstream, n, response_format, user, fields the gateway does
not know) is in the key, so two requests share an entry only when they ask the same thing of the
same model for the same tenant. An entry also stores its tenant id, checked again on every read.

Tenant policy `cache`: "off" (the default), "deterministic" (only requests with `temperature` 0 or a
`seed`) or "all". The client's `Cache-Control: no-cache` skips the lookup (the fresh answer is still
stored), `no-store` skips storing it. `status` is what `x-tollgate-cache` says when no entry is found:
"bypass" when the cache was not consulted (off, filtered out, no-cache), "miss" when it was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs

CacheMode = Literal["off", "deterministic", "all"]
CACHE_MODES: tuple[CacheMode, ...] = ("off", "deterministic", "all")
DELIVERY_FIELDS = frozenset({"stream", "stream_options"})
KEY_VERSION = 1  # bump when what goes into the key changes: old entries then simply miss


def cache_key(tenant_id: str, operation: str, model: str, body: Mapping[str, Any]) -> str:
    """The entry's key (hex SHA-256): tenant, operation, public model and the answer-shaping body."""
    asked = {name: value for name, value in body.items() if name not in DELIVERY_FIELDS}
    canonical = json.dumps(
        [KEY_VERSION, tenant_id, operation, model, asked], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """`temperature` exactly 0 (a number, not a bool) or a `seed` given."""
    temperature = body.get("temperature")
    zero = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    return zero or body.get("seed") is not None


def cache_directives(header: str | None) -> frozenset[str]:
    """The directives of a `Cache-Control` header, lowercased, without arguments."""
    if not header:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip())


@attrs.frozen
class CachePlan:
    """What one request does with the cache: look up `key` (`read`), store its answer (`write`)."""

    key: str | None
    read: bool
    write: bool
    ttl_s: int

    @property
    def status(self) -> Literal["miss", "bypass"]:
        """`x-tollgate-cache` when no entry answered."""
        return "miss" if self.read else "bypass"


BYPASS = CachePlan(None, read=False, write=False, ttl_s=0)


def plan(
    mode: CacheMode,
    ttl_s: int,
    tenant_id: str,
    operation: str,
    model: str,
    body: Mapping[str, Any],
    cache_control: str | None,
) -> CachePlan:
    if mode == "off" or ttl_s <= 0 or (mode == "deterministic" and not is_deterministic(body)):
        return BYPASS
    directives = cache_directives(cache_control)
    read = "no-cache" not in directives
    write = "no-store" not in directives
    if not (read or write):
        return BYPASS
    return CachePlan(cache_key(tenant_id, operation, model, body), read, write, ttl_s)
