"""Keys: hashing, generating, reading bearer tokens, and the admin key check. Keys are hashed with
SHA-256 on arrival and never stored or logged (tenant lookup by hash lives in `runtime.ledger.books`)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

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


class AdminKey:
    def __init__(self, key: str) -> None:
        self._digest = hash_key(key)

    def check(self, header: str | None) -> None:
        key = bearer(header)
        if key is None or not hmac.compare_digest(hash_key(key), self._digest):
            raise Unauthenticated("This endpoint needs the admin key: 'Authorization: Bearer <admin key>'.")

    def derive(self, purpose: str) -> bytes:
        """A secret for `purpose` derived from the admin key: processes sharing the key agree on it, and
        changing the key invalidates everything signed with it (the dashboard's session cookies)."""
        return hmac.new(bytes.fromhex(self._digest), purpose.encode(), hashlib.sha256).digest()
