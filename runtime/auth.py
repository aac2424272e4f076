"""Bearer keys → tenants. Keys are hashed with SHA-256 on arrival and never stored or logged."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

import attrs

from runtime.errors import Unauthenticated

DEMO_KEY = "tg-demo-key-published-in-the-readme"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str = "tg-") -> str:
    return prefix + secrets.token_urlsafe(32)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@attrs.frozen
class Tenant:
    name: str


class TenantIndex:
    """Key hash → tenant.

    Lookup is by the SHA-256 of the presented key, so timing can reveal at most how a hash of the
    attacker's own input compares with stored hashes, never anything about a stored key.
    """

    def __init__(self, entries: Iterable[tuple[str, Tenant]] = ()) -> None:
        self._by_hash: dict[str, Tenant] = dict(entries)

    def authenticate(self, header: str | None) -> Tenant:
        key = bearer(header)
        if key is None:
            raise Unauthenticated("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        digest = hash_key(key)
        tenant = self._by_hash.get(digest)
        if tenant is None:
            raise Unauthenticated("Incorrect API key provided.")
        return tenant

    def __len__(self) -> int:
        return len(self._by_hash)


class AdminKey:
    def __init__(self, key: str) -> None:
        self._digest = hash_key(key)

    def check(self, header: str | None) -> None:
        key = bearer(header)
        if key is None or not hmac.compare_digest(hash_key(key), self._digest):
            raise Unauthenticated("This endpoint needs the admin key: 'Authorization: Bearer <admin key>'.")
