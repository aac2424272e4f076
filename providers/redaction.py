"""Redact secrets from text an upstream wrote, before any of it reaches a client, a log or the ledger.

An upstream may echo what it received (a 400 that quotes the request's headers), so every piece of
upstream text the gateway repeats goes through `redact` first. It removes:

- every configured secret of that provider (its API key, the values of its configured headers);
- anything shaped like a credential: `Bearer <token>`, OpenAI-style `sk-…` and Anthropic `sk-ant-…` keys.

Each is replaced by `[redacted]`; the rest of the message (what the client should fix) stays.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_CREDENTIAL_SHAPES = re.compile(
    r"(?i)(?:\bbearer\s+[A-Za-z0-9._~+/=*-]+|\bsk-[A-Za-z0-9_*-]{4,}|\bx-api-key\s*[:=]\s*\S+)"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without any of `secrets` and without anything shaped like a credential."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _CREDENTIAL_SHAPES.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    found = match[0]
    lowered = found.lower()
    if lowered.startswith("bearer"):
        return found[: len("bearer")] + " " + REDACTED
    if lowered.startswith("x-api-key"):
        return "x-api-key: " + REDACTED
    return REDACTED
