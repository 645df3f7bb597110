"""The one mapping from a provider's HTTP answer to a step error code and whether to retry."""

from __future__ import annotations

from babychain.errors import ProviderError


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
