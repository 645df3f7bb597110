"""Bearer API keys: bootstrap keys from BABYCHAIN_API_KEY and keys stored hashed in the database."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from babychain.errors import ApiError
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


def authenticate(svc: Services, headers: Mapping[str, str], scope: str) -> Principal:
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
    for key in svc.settings.api_keys:
        # Compare fixed-length digests so the time taken says nothing about the key.
        if hmac.compare_digest(digest, hash_key(key)):
            principal = Principal(owner_id="env:" + hash_key(key)[:24], name="env-api-key", scopes=ALL_SCOPES)
    if principal is None and len(token) >= KEY_PREFIX_LENGTH:
        row = svc.store.authenticate_key(digest)
        if row is not None:
            principal = Principal(owner_id=f"key:{row['id']}", name=row["name"], scopes=frozenset(row["scopes"]))
    if principal is None:
        raise ApiError(401, "invalid_api_key", "The API key is not valid.", headers={"WWW-Authenticate": "Bearer"})
    if scope not in principal.scopes:
        raise ApiError(403, "insufficient_scope", f"The API key is missing the scope {scope}.")
    return principal
