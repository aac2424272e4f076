"""Why a request is refused before it reaches a provider. Never retryable.

RequestRefused
└── InvalidRequest     the body is not a request we can serve (names the field in `param`)
"""

from __future__ import annotations

from collections.abc import Mapping

from policies.ratelimit import Quota


class RequestRefused(Exception):
    code: str = "refused"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(RequestRefused):
    code = "invalid_request"


class TenantDisabled(RequestRefused):
    code = "tenant_disabled"


class ModelNotAllowed(RequestRefused):
    code = "model_not_allowed"


class ModelUnpriced(RequestRefused):
    code = "model_unpriced"


class CostUnbounded(RequestRefused):
    """Under a hard budget: the request carries inputs the provider bills that no reservation can
    bound (a passed-through Responses body's files by id, built-in tools)."""

    code = "cost_unbounded"


class BudgetExceeded(RequestRefused):
    code = "budget_exceeded"


class RateLimited(RequestRefused):
    """`retry_after` is None when waiting cannot help (the request alone exceeds the limit);
    `quotas` are the levels of the tenant's limits by kind ("requests", "tokens"), for the HTTP
    edge to turn into `x-ratelimit-*` headers."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None, quotas: Mapping[str, Quota]) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.quotas = quotas
