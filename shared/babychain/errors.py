"""The one error vocabulary of the engine.

API-facing failures are raised as `ApiError` anywhere in the shared package and turned into the single JSON error
shape by `babychain.api.http` (the only place that maps errors to responses). Provider failures are `ProviderError`;
the executor turns them into step error codes.
"""

from __future__ import annotations

from typing import Any

_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 409: "conflict_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """A failure the caller should see: HTTP status, stable code, human message, and the offending field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status >= 500:
            return "api_error"
        return _TYPE_BY_STATUS.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid_input(message: str, field: str | None = None, code: str = "invalid_chain_input") -> ApiError:
    return ApiError(400, code, message, field=field)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


class ConfigurationError(Exception):
    """The server is misconfigured (missing secret, unknown mode). Surfaces as a 500 without details."""


class ProviderError(Exception):
    """A provider call failed.

    `transient` errors (429, 5xx, timeouts, connection errors) are retried within the step's budget; the rest fail
    the step at once with `code`.
    """

    def __init__(self, code: str, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient
        self.retry_after = retry_after


class UnsafeUrlError(ValueError):
    """A URL the engine was asked to fetch or post to is not allowed (scheme, credentials, private address)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
