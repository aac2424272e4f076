"""The provider error tree. Every failure of an upstream call leaves `providers/` as one of these.

    ProviderError                      retryable: may the router try again / elsewhere?
    ├── UpstreamUnavailable            yes  the network let us down
    │   ├── ConnectFailed              yes  could not connect (refused, DNS, TLS)
    │   ├── UpstreamTimeout            yes  connect, first byte, idle or total deadline passed
    │   └── StreamBroken               yes  the body ended or reset before it was complete
    ├── UpstreamRateLimited            yes  429, with the provider's Retry-After when it sent one
    ├── UpstreamServerError            yes  5xx (and Anthropic's 529 overloaded)
    ├── UpstreamAuthFailed             yes  401/403: the gateway's key for that provider is wrong
    ├── MalformedResponse              yes  the body is not the wire format we speak
    └── UpstreamRejected               no   another 4xx: the request itself is wrong

A retryable error counts against the provider's circuit breaker and may fall back to the next
candidate; a non-retryable one is the client's problem and goes straight back to it. Messages are
the gateway's own words: upstream bodies are never copied into them, except the short `message`
of an `UpstreamRejected`, which tells the client what to fix — and that only through
`providers.redaction.redact` (no configured secret, nothing shaped like a key or bearer token).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from providers.redaction import redact


class ProviderError(Exception):
    retryable: ClassVar[bool] = True
    kind: ClassVar[str] = "provider_error"

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message
        self.status = status
        self.retry_after = retry_after


class UpstreamUnavailable(ProviderError):
    kind = "unavailable"


class ConnectFailed(UpstreamUnavailable):
    kind = "connect_failed"

    def __init__(self, provider: str, message: str, *, refused: bool = False) -> None:
        super().__init__(provider, message)
        self.refused = refused  # the peer actively refused the connection (nothing listens there)


class UpstreamTimeout(UpstreamUnavailable):
    kind = "timeout"


class StreamBroken(UpstreamUnavailable):
    kind = "stream_broken"


class UpstreamRateLimited(ProviderError):
    kind = "rate_limited"


class UpstreamServerError(ProviderError):
    kind = "server_error"


class UpstreamAuthFailed(ProviderError):
    kind = "auth_failed"


class MalformedResponse(ProviderError):
    kind = "malformed_response"


def json_answer(provider: str, content: bytes, is_valid: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """A provider's JSON answer body, an object `is_valid` accepts; else `MalformedResponse` saying it
    was not JSON, or not `what` (e.g. "a chat completion")."""
    try:
        body = json.loads(content)
    except ValueError:
        raise MalformedResponse(provider, f"provider {provider!r} sent a body that is not JSON") from None
    if not isinstance(body, dict) or not is_valid(body):
        raise MalformedResponse(provider, f"provider {provider!r} sent JSON that is not {what}")
    return body


class UpstreamRejected(ProviderError):
    retryable = False
    kind = "rejected"


def error_for_status(
    provider: str,
    status: int,
    detail: str = "",
    retry_after: float | None = None,
    secrets: Iterable[str] = (),
) -> ProviderError:
    """The error for a non-2xx upstream status. `detail` (upstream text) is used only for
    `UpstreamRejected`, redacted of `secrets` and of anything shaped like a credential, then cut."""
    if status == 429:
        return UpstreamRateLimited(
            provider, f"provider {provider!r} is rate limiting (429)", status=429, retry_after=retry_after
        )
    if status >= 500:
        return UpstreamServerError(
            provider, f"provider {provider!r} failed with status {status}", status=status, retry_after=retry_after
        )
    if status in (401, 403):
        return UpstreamAuthFailed(
            provider, f"provider {provider!r} refused the gateway's credentials ({status})", status=status
        )
    message = f"provider {provider!r} rejected the request ({status})"
    if detail:
        message = f"{message}: {redact(detail, secrets)[:500]}"
    return UpstreamRejected(provider, message, status=status)


def describe(error: ProviderError) -> str:
    """What happened to an attempt, in the gateway's own words (never the upstream's text): for a
    message naming each provider tried, e.g. "upstream answered 500", "connection refused"."""
    if isinstance(error, UpstreamRateLimited):
        return "rate limited (429)"
    if isinstance(error, UpstreamServerError):
        return f"upstream answered {error.status}" if error.status else "upstream reported an error"
    if isinstance(error, UpstreamAuthFailed):
        return f"refused the gateway's credentials ({error.status})"
    if isinstance(error, ConnectFailed):
        return "connection refused" if error.refused else "could not connect"
    if isinstance(error, UpstreamTimeout):
        return "timed out"
    if isinstance(error, StreamBroken):
        return "closed the connection mid-response"
    if isinstance(error, MalformedResponse):
        return "sent a response the gateway cannot read"
    if isinstance(error, UpstreamRejected):
        return f"rejected the request ({error.status})" if error.status else "rejected the request"
    return "failed"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
