"""API callers: who a request acts for (`Principal`), and the API keys themselves (made, hashed, stored).

The engine scopes runs by `Principal.owner_id`; reading a key from a request is the HTTP edge's job
(`babychain.api.auth`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from babychain.store.base import Store

ALL_SCOPES = frozenset({"chains:run", "chains:read", "runs:cancel"})
KEY_PREFIX_LENGTH = 12
MAX_RATE_LIMIT_PER_MINUTE = 1_000_000  # the same bound as BABYCHAIN_RATE_LIMIT_PER_MINUTE


@dataclass(frozen=True)
class Principal:
    owner_id: str  # what runs are scoped by; never the key itself
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None  # the key's own limit; None: BABYCHAIN_RATE_LIMIT_PER_MINUTE


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a plain SHA-256 is a safe at-rest form (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "bc_" + secrets.token_urlsafe(32)


def create_key(
    store: Store,
    name: str,
    *,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
) -> str:
    """Creates a database key and returns it; this is the only time the key itself is seen. `rate_limit_per_minute`
    None: the key follows BABYCHAIN_RATE_LIMIT_PER_MINUTE."""
    unknown = sorted(set(scopes or ()) - ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; scopes are {', '.join(sorted(ALL_SCOPES))}")
    check_rate_limit(rate_limit_per_minute)
    key = generate_key()
    store.create_api_key(
        key[:KEY_PREFIX_LENGTH],
        hash_key(key),
        name,
        scopes,
        expires_at.isoformat() if expires_at else None,
        rate_limit_per_minute,
    )
    return key


def check_rate_limit(rate_limit_per_minute: int | None) -> None:
    if rate_limit_per_minute is not None and not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT_PER_MINUTE:
        raise ValueError(f"a rate limit is a whole number of requests per minute from 1 to {MAX_RATE_LIMIT_PER_MINUTE}")


def rotate_key(store: Store, reference: str) -> str | None:
    """Replaces the key named by `reference` (id or prefix) with a new one of the same name, scopes and expiry, and
    revokes the old one at once; returns the new key, or None when the reference names no single active key."""
    key = generate_key()
    return key if store.rotate_api_key(reference, key[:KEY_PREFIX_LENGTH], hash_key(key)) else None
