"""Identifiers callers send back to us (run ids, step ids): accepted only in the one form we hand out."""

from __future__ import annotations

import uuid


def is_canonical_uuid(value: str) -> bool:
    """True for `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex; Python also parses urn:uuid:, braces and bare hex,
    which Postgres refuses, so those are not ids here."""
    if len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
