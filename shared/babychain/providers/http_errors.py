"""The one mapping from a provider's HTTP answer to a step error code and whether to retry."""

from __future__ import annotations

import httpx

from babychain.errors import ProviderError
from babychain.security.urls import is_loopback_address


def provider_error_for_status(status: int, message: str, retry_after: float | None = None) -> ProviderError:
    if status == 429:
        return ProviderError("provider_rate_limited", message, transient=True, retry_after=retry_after)
    if status >= 500:
        return ProviderError("provider_unavailable", message, transient=True, retry_after=retry_after)
    if status in (401, 403):
        return ProviderError("provider_unauthorized", message, transient=False)
    if status == 402:
        return ProviderError("provider_quota_exceeded", message, transient=False)
    if status == 404:
        return ProviderError("provider_not_found", message, transient=False)
    return ProviderError("provider_invalid_request", message, transient=False)


ERROR_EXCERPT_CHARS = 500


def scrub_secret(text: str, secret: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
    """Provider text is quoted in step errors: never with our key in it, never unbounded."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def transport_error(exc: httpx.HTTPError, provider: str) -> ProviderError:
    """A request that got no HTTP answer at all: always worth retrying."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(
            "provider_timeout", f"{provider} did not answer in time ({type(exc).__name__}).", transient=True
        )
    return ProviderError("provider_network_error", f"{provider} unreachable: {type(exc).__name__}.", transient=True)


def is_loopback_stand_in(scheme: str, host: str, allow_loopback: bool) -> bool:
    """Tests and the local runner point adapters at loopback stand-ins; nothing else may bypass an allowlist."""
    return allow_loopback and scheme in ("http", "https") and (host == "localhost" or is_loopback_address(host))
