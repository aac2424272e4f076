"""Request ids and W3C `traceparent`: continue the client's trace or start one, and pass it on."""

from __future__ import annotations

import re
import secrets

import attrs

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


@attrs.frozen
class Trace:
    """Our span in a trace: `trace_id` is shared with the caller, `span_id` is ours."""

    trace_id: str
    span_id: str
    flags: str = "01"

    @classmethod
    def continue_or_start(cls, header: str | None) -> Trace:
        match = _TRACEPARENT.match(header.strip().lower()) if header else None
        if match and match[1] != "ff" and match[2] != "0" * 32 and match[3] != "0" * 16:
            return cls(match[2], secrets.token_hex(8), match[4])
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    @property
    def traceparent(self) -> str:
        """The header naming our span as parent: sent upstream and returned to the client."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def request_id(header: str | None) -> str:
    """The client's `X-Request-ID` when it is a sane token, else a new one."""
    if header and _REQUEST_ID.match(header):
        return header
    return f"req_{secrets.token_hex(12)}"
