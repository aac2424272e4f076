"""Request ids and W3C `traceparent` headers: continue the client's trace or start one."""

from __future__ import annotations

import re
import secrets

from runtime.chat.trace import Trace

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def continue_or_start(header: str | None) -> Trace:
    """The client's trace continued with a span of ours when its `traceparent` is valid, else a new trace."""
    match = _TRACEPARENT.match(header.strip().lower()) if header else None
    if match and match[1] != "ff" and match[2] != "0" * 32 and match[3] != "0" * 16:
        return Trace(match[2], secrets.token_hex(8), match[4], match[3])
    return Trace(secrets.token_hex(16), secrets.token_hex(8))


def request_id(header: str | None) -> str:
    """The client's `X-Request-ID` when it is a sane token, else a new one."""
    if header and _REQUEST_ID.match(header):
        return header
    return f"req_{secrets.token_hex(12)}"
