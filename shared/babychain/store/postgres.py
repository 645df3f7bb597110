"""The direct Postgres adapter (psycopg), used on one machine, in tests, and with any DATABASE_URL."""

from __future__ import annotations

import re
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from babychain.store.base import Store

_FUNCTION_NAME = re.compile(r"^bc_[a-z_]+$")


class PostgresStore(Store):
    def __init__(self, dsn: str, *, max_size: int = 8) -> None:
        # Autocommit: each SQL function is its own transaction, which is what makes it atomic. No server-side
        # prepared statements, so transaction poolers (Supabase's port 6543, PgBouncer) work too.
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=max_size, kwargs={"autocommit": True, "prepare_threshold": None}, open=True
        )

    def call(self, function: str, params: dict[str, Any]) -> Any:
        if not _FUNCTION_NAME.fullmatch(function):
            raise ValueError(f"not a store function: {function!r}")
        with self._pool.connection() as conn:
            row = conn.execute(f"select {function}(%s)", (Jsonb(params),)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._pool.close()
