"""API callers: who a request acts for (`Principal`), and the API keys themselves (made, hashed, stored).

The engine scopes runs by `Principal.owner_id`; reading a key from a request is the HTTP edge's job
(`babychain.api.auth`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from babychain.services import Services

ALL_SCOPES = frozenset({"chains:run", "chains:read", "runs:cancel"})
KEY_PREFIX_LENGTH = 12


@dataclass(frozen=True)
class Principal:
    owner_id: str  # what runs are scoped by; never the key itself
    name: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a plain SHA-256 is a safe at-rest form (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "bc_" + secrets.token_urlsafe(32)


def create_key(svc: Services, name: str) -> str:
    """Creates a database key and returns it; this is the only time the key itself is seen."""
    key = generate_key()
    svc.store.create_api_key(key[:KEY_PREFIX_LENGTH], hash_key(key), name)
    return key
