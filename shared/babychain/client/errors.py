"""The client's exceptions. An answer other than 2xx becomes an `APIError` subclass chosen by status, carrying the
API's one error shape (`{"error": {"type", "code", "message", "field", "details"}}`) and, when the answer says so,
`Retry-After` and the key's rate-limit budget."""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from babychain.client.models import RateLimit

if TYPE_CHECKING:
    import httpx

    from babychain.client.models import Run


class BabyChainError(Exception):
    """Base class of everything this client raises."""


class MissingSettingError(BabyChainError, ValueError):
    """A setting the client needs was neither passed nor in the environment."""

    def __init__(self, variable: str, how: str) -> None:
        super().__init__(f"{variable} is not set: {how}")
        self.variable = variable


class APIConnectionError(BabyChainError):
    """The API could not be reached, or the connection broke before an answer (after the client's retries)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.message = message
        self.url = url


class APITimeoutError(APIConnectionError):
    """The request timed out (after the client's retries)."""


class APIError(BabyChainError):
    """The API answered with an error. `code` is stable and machine-readable; `field` names the offending input."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type: str | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type
        self.field = field
        self.details = details
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.retry_after = parse_retry_after(self.headers.get("retry-after"))
        self.rate_limit = RateLimit.from_headers(self.headers)

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequestError(APIError):
    """400: the request is invalid (see `field`)."""


class AuthenticationError(APIError):
    """401: the API key is missing, unknown, revoked or expired."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope this call needs."""


class NotFoundError(APIError):
    """404: no such run for this key (other keys' runs are 404 too)."""


class ConflictError(APIError):
    """409: e.g. `idempotency_conflict`, the Idempotency-Key was used with another body."""


class PayloadTooLargeError(APIError):
    """413: the body is over the API's limit."""


class UnprocessableEntityError(APIError):
    """422."""


class RateLimitError(APIError):
    """429 `rate_limited`: `retry_after` says when to try again, `rate_limit` the key's budget."""


class ServerError(APIError):
    """5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


class WaitTimeoutError(BabyChainError, TimeoutError):
    """`wait` ran out of time before the run ended; `run` is the run as last seen (it goes on running)."""

    def __init__(self, run: Run, timeout: float) -> None:
        super().__init__(f"run {run.id} is still {run.status} after {timeout:g} s")
        self.run = run
        self.timeout = timeout


class WebhookVerificationError(BabyChainError):
    """The delivery is not a genuine, fresh BabyChain callback for this secret (the message says why)."""


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for a non-2xx answer. A body that is not the API's error shape (a proxy's HTML page, say) gives
    `code="http_<status>"` and the start of the body as the message."""
    status = response.status_code
    error: Any = None
    with contextlib.suppress(ValueError, AttributeError):
        error = response.json().get("error")
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        details = error.get("details")
        return cls(
            status,
            error["code"],
            str(error.get("message") or ""),
            type=error.get("type"),
            field=error.get("field"),
            details=details if isinstance(details, dict) else None,
            headers=response.headers,
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return cls(status, f"http_{status}", text, headers=response.headers)
