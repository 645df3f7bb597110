"""Bearer API keys on a request: bootstrap keys from BABYCHAIN_API_KEY and keys stored hashed in the database; and
the per-key rate limit, counted once the key is known."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from functools import lru_cache

from babychain.auth import ALL_SCOPES, KEY_PREFIX_LENGTH, Principal, hash_key
from babychain.errors import ApiError
from babychain.observability import count
from babychain.services import Services


@lru_cache(maxsize=8)
def _bootstrap_keys(keys: tuple[str, ...]) -> tuple[tuple[str, Principal], ...]:
    """The configured keys' digests and the caller each names, built once per key set rather than on every request
    (a Principal is frozen: one can be shared)."""
    digests = [hash_key(key) for key in keys]
    return tuple(
        (digest, Principal(owner_id="env:" + digest[:24], name="env-api-key", scopes=ALL_SCOPES)) for digest in digests
    )


def identify(svc: Services, headers: Mapping[str, str]) -> Principal:
    """The caller a request's bearer key names; 401 without a valid key."""
    # API Gateway's v2 events (and the edge's) name headers in lower case: one lookup, the scan only when it misses.
    header = headers.get("authorization")
    if header is None:
        header = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise ApiError(
            401,
            "missing_api_key",
            "Send your API key as 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = header[7:].strip()
    digest = hash_key(token)
    principal = None
    for key_digest, bootstrap in _bootstrap_keys(tuple(svc.settings.api_keys)):
        # Compare fixed-length digests so the time taken says nothing about the key.
        if hmac.compare_digest(digest, key_digest):
            principal = bootstrap
    if principal is None and len(token) >= KEY_PREFIX_LENGTH:
        row = svc.store.authenticate_key(digest)
        if row is not None:
            principal = Principal(
                owner_id=f"key:{row['id']}",
                name=row["name"],
                scopes=frozenset(row["scopes"]),
                rate_limit_per_minute=row.get("rate_limit_per_minute"),
            )
    if principal is None:
        raise ApiError(401, "invalid_api_key", "The API key is not valid.", headers={"WWW-Authenticate": "Bearer"})
    return principal


def admit(svc: Services, principal: Principal) -> dict[str, str]:
    """Counts the request against the key's sliding window and returns the budget's response headers (none when rate
    limiting is off or Upstash could not answer); over the limit, a 429 with Retry-After."""
    if svc.rate_limiter is None:
        return {}
    # owner_id names the key (its id, or a bootstrap key's fingerprint), never the key itself.
    decision = svc.rate_limiter.check(principal.owner_id, principal.rate_limit_per_minute)
    if decision is None:
        return {}
    headers = decision.headers()
    if not decision.allowed:
        count("RateLimited")
        raise ApiError(
            429,
            "rate_limited",
            "Rate limit exceeded.",
            details={"limit": decision.limit, "remaining": decision.remaining, "reset": decision.reset_seconds},
            headers={**headers, "Retry-After": str(decision.reset_seconds)},
        )
    return headers


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise ApiError(403, "insufficient_scope", f"The API key is missing the scope {scope}.")
