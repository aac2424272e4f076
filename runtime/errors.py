"""Errors the runtime raises while serving a request. `runtime.http.app` maps each to a status.

GatewayError
├── Unauthenticated       401  missing or unknown key
├── NotFound              404  no such tenant (or other admin resource)
├── Conflict              409  it exists already
├── ModelNotFound         404  no route for the requested model
├── ActorUnavailable      503  an actor crashed or was given up by its supervisor
├── Overloaded            503  a queue the gateway will not drop from is full
├── ProviderUnavailable   503  every candidate provider refuses work right now
└── UpstreamFailed        502  every attempt failed (says what happened at each provider tried, never their bodies)
    └── UpstreamsRateLimited  429  ... and every one of them because the provider was rate limiting
"""

from __future__ import annotations

from collections.abc import Sequence

import trio


class GatewayError(Exception):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Unauthenticated(GatewayError):
    pass


class ModelNotFound(GatewayError):
    pass


class NotFound(GatewayError):
    pass


class Conflict(GatewayError):
    pass


class ActorUnavailable(GatewayError):
    pass


class Overloaded(GatewayError):
    pass


class ProviderRefused(GatewayError):
    """A provider's breaker refuses work until `retry_at` (trio time; None: when a probe ends)."""

    def __init__(self, message: str, *, retry_at: float | None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class ProviderUnavailable(GatewayError):
    pass


class UpstreamFailed(GatewayError):
    """Every candidate failed. `failures` is (provider, what happened in the gateway's words) for each
    provider tried or skipped, in order; the message repeats them and never an upstream's body."""

    def __init__(self, failures: Sequence[tuple[str, str]], *, retry_after: float | None = None) -> None:
        super().__init__(f"All upstream attempts failed ({_summary(failures)}).", retry_after=retry_after)
        self.failures = tuple(failures)
        self.tried = tuple(dict.fromkeys(provider for provider, _ in failures))


class UpstreamsRateLimited(UpstreamFailed):
    """Every attempt was answered 429: waiting `retry_after` seconds may help (the client gets a 429)."""

    def __init__(self, model: str, failures: Sequence[tuple[str, str]], *, retry_after: float) -> None:
        super().__init__(failures, retry_after=retry_after)
        self.message = (
            f"Every provider for '{model}' is rate limiting this gateway ({_summary(failures)}); "
            f"retry in {max(1, round(retry_after))}s."
        )
        self.args = (self.message,)


def _summary(failures: Sequence[tuple[str, str]]) -> str:
    """`provider 'a': upstream answered 500; provider 'b': connection refused` (repeats collapsed)."""
    said = dict.fromkeys(f"provider {provider!r}: {what}" for provider, what in failures)
    return "; ".join(said) or "no provider was tried"


def is_cancellation(error: BaseException) -> bool:
    """Whether `error` is a trio cancellation, bare or inside (nested) exception groups.

    trio wraps a `Cancelled` raised inside a nursery (e.g. `open_tcp_stream`'s happy eyeballs,
    while an upstream connect is in progress) in an exception group, which `isinstance` misses.
    A group holding a `Cancelled` beside other errors is a cancellation too: the other errors are
    what the cancelled tasks left behind.
    """
    if isinstance(error, trio.Cancelled):
        return True
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(trio.Cancelled) is not None
    return False
