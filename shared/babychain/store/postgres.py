"""The direct Postgres adapter (psycopg), used on one machine, in tests, and with any DATABASE_URL.

psycopg's and psycopg_pool's errors never leave `call`: they become the store's own (`babychain.store.errors`),
keyed on the SQLSTATE where the server sent one. Errors raised while connecting carry no SQLSTATE (libpq keeps only
the message), and the pool hides them behind a `PoolTimeout`: when the pool times out, one direct connection attempt
tells a refused login (`StoreAuthError`) from a database that is down or saturated (`StoreUnavailable`).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from babychain.store.base import Store
from babychain.store.errors import (
    StoreError,
    StoreUnavailable,
    error_class_for_connect_failure,
    error_class_for_sqlstate,
)

_FUNCTION_NAME = re.compile(r"^bc_[a-z_]+$")
# The diagnostic connection after a pool timeout: long enough for a slow TLS handshake, short next to the wait.
_PROBE_CONNECT_TIMEOUT_SECONDS = 5


class PostgresStore(Store):
    def __init__(self, dsn: str, *, max_size: int = 8, timeout: float = 30.0) -> None:
        """`timeout`: how long a call waits for a pooled connection before the store is declared unavailable."""
        # Autocommit: each SQL function is its own transaction, which is what makes it atomic. No server-side
        # prepared statements, so transaction poolers (Supabase's port 6543, PgBouncer) work too.
        self._dsn = dsn
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "prepare_threshold": None},
            timeout=timeout,
            open=True,
        )

    def call(self, function: str, params: dict[str, Any]) -> Any:
        if not _FUNCTION_NAME.fullmatch(function):
            raise ValueError(f"not a store function: {function!r}")
        try:
            with self._pool.connection() as conn:
                row = conn.execute(f"select {function}(%s)", (Jsonb(params),)).fetchone()
        except PoolTimeout as exc:
            raise self._pool_timeout(function, exc) from exc
        except psycopg.Error as exc:
            raise _translate(function, exc) from exc
        return row[0] if row else None

    def _pool_timeout(self, function: str, timeout: PoolTimeout) -> StoreError:
        """Why the pool had no connection to give: it cannot connect (and why), or every connection is busy."""
        try:
            psycopg.connect(self._dsn, connect_timeout=_PROBE_CONNECT_TIMEOUT_SECONDS, autocommit=True).close()
        except psycopg.Error as exc:
            return _translate(function, exc)
        return StoreUnavailable(f"{function}: no free database connection ({timeout})", function=function)

    def close(self) -> None:
        self._pool.close()


def _translate(function: str, exc: psycopg.Error) -> StoreError:
    sqlstate = exc.sqlstate
    diag = exc.diag
    message = (diag.message_primary if sqlstate else None) or str(exc).strip() or type(exc).__name__
    if sqlstate:
        kind = error_class_for_sqlstate(sqlstate)
    elif isinstance(exc, psycopg.OperationalError):
        kind = error_class_for_connect_failure(message)  # no answer from the server: connecting failed or it is gone
    else:
        kind = StoreError  # a driver-side error (an interface misuse, an unloadable value)
    return kind(
        f"{function}: {sqlstate or type(exc).__name__}: {message}",
        function=function,
        code=sqlstate,
        details=diag.message_detail if sqlstate else None,
        hint=diag.message_hint if sqlstate else None,
    )
