"""Bearer API keys on a request: bootstrap keys from BABYCHAIN_API_KEY and keys stored hashed in the database."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from babychain.auth import ALL_SCOPES, KEY_PREFIX_LENGTH, Principal, hash_key
from babychain.errors import ApiError
from babychain.services import Services


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
