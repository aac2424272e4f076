"""Why a request is refused before it reaches a provider. Never retryable.

RequestRefused
└── InvalidRequest     the body is not a request we can serve (names the field in `param`)
"""

from __future__ import annotations


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
