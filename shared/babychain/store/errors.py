"""The store's error vocabulary: what any adapter raises when a store call fails, whatever its driver.

- `StoreUnavailable`: the database cannot be reached now, and retrying later can succeed (connection refused or
  lost, a timeout, a pool with no free connection, PostgREST or its gateway down, SQLSTATE classes 08 connection
  exception, 40 transaction rollback, 53 insufficient resources, 57 operator intervention). The API answers 503
  `database_unreachable`.
- `StoreAuthError`: the credentials were refused or the role lacks a right (a wrong password, an unknown role,
  no pg_hba.conf entry: SQLSTATE class 28; a missing grant: 42501; PostgREST's JWT errors, HTTP 401/403). A
  configuration problem: the API answers 500 `configuration_error`.
- `StoreError`: anything else (bad input to a function, a missing function, an unexpected answer).

This module imports no driver, so the API layer can depend on it without loading psycopg or supabase-py.
"""

from __future__ import annotations

import re

_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")

# SQLSTATE classes after which a later retry can succeed: connection exception, transaction rollback (deadlock,
# serialization failure), insufficient resources, operator intervention (shutdown, statement timeout).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
# Invalid authorization specification (28000, 28P01 invalid_password) and insufficient_privilege.
_AUTH_SQLSTATE_CLASSES = frozenset({"28"})
_AUTH_SQLSTATES = frozenset({"42501"})

# A connection attempt that the server refused for its credentials. libpq gives no SQLSTATE for errors raised while
# connecting, only the server's message (English on the managed hosts we target), so these are matched as text:
# Postgres's own authentication failures (password, peer, ident, cert, ...: "... authentication failed for user"),
# pg_hba.conf rejections, an unknown or NOLOGIN role, libpq's "no password supplied", and Supabase's pooler
# (Supavisor) for an unknown tenant or user.
_AUTH_FAILURE = re.compile(
    r"authentication failed for user|pg_hba\.conf|role \S+ does not exist|is not permitted to log in"
    r"|no password supplied|password is required|tenant or user not found",
    re.IGNORECASE,
)


class StoreError(Exception):
    """A store call failed. `code` is PostgREST's (`PGRSTxxx`), Postgres's SQLSTATE, or the HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        function: str,
        code: str | None = None,
        status: int | None = None,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.function = function
        self.code = code
        self.status = status
        self.details = details
        self.hint = hint

    @property
    def sqlstate(self) -> str | None:
        """The Postgres error code when the database raised the error (like `psycopg.Error.sqlstate`)."""
        if self.code and is_sqlstate(self.code):
            return self.code
        return None


class StoreUnavailable(StoreError):
    """The database (or the PostgREST in front of it) cannot be reached right now; retrying later can succeed."""


class StoreAuthError(StoreError):
    """The credentials were refused, or the role they map to lacks a grant: a configuration problem."""


def is_sqlstate(code: str) -> bool:
    return bool(_SQLSTATE.match(code))


def error_class_for_sqlstate(sqlstate: str) -> type[StoreError]:
    """The store error for an error the database raised, keyed on its SQLSTATE (and class, its first two chars)."""
    if sqlstate in _AUTH_SQLSTATES or sqlstate[:2] in _AUTH_SQLSTATE_CLASSES:
        return StoreAuthError
    if sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES:
        return StoreUnavailable
    return StoreError


def error_class_for_connect_failure(message: str) -> type[StoreError]:
    """The store error for a failed connection attempt, from the driver's message (it carries no SQLSTATE)."""
    return StoreAuthError if _AUTH_FAILURE.search(message) else StoreUnavailable
