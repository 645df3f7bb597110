"""Identifiers callers send back to us (run ids, step ids): accepted only in the one form we hand out."""

from __future__ import annotations

import re

# What `str(uuid.UUID(value)) == value.lower()` accepts (tests compare the two): 8-4-4-4-12 hex digits, either case.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_canonical_uuid(value: str) -> bool:
    """True for `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex; Python also parses urn:uuid:, braces and bare hex,
    which Postgres refuses, so those are not ids here."""
    return _CANONICAL_UUID.fullmatch(value) is not None
