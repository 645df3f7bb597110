"""The direct Postgres adapter (psycopg), used on one machine, in tests, and with any DATABASE_URL.

psycopg's and psycopg_pool's errors never leave `call`: they become the store's own (`babychain.store.errors`),
keyed on the SQLSTATE where the server sent one. Errors raised while connecting carry no SQLSTATE (libpq keeps only
the message), and the pool hides them behind a `PoolTimeout`: when the pool times out, one direct connection attempt
tells a refused login (`StoreAuthError`) from a database that is down or saturated (`StoreUnavailable`).
"""

from __future__ import annotations

import json
import os
import re
import time
import weakref
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.generators import execute
from psycopg.pq.abc import PGresult
from psycopg_pool import ConnectionPool, PoolTimeout

from babychain.json_encoding import one_shot_encoder
from babychain.store.base import Store
from babychain.store.errors import (
    StoreError,
    StoreUnavailable,
    error_class_for_connect_failure,
    error_class_for_sqlstate,
)

_FUNCTION_NAME = re.compile(r"^bc_[a-z_]+$")
_ENCODE = one_shot_encoder()  # json.dumps(params), the same text
_JSONB_OID = 3802
_JSON_OIDS = frozenset({114, _JSONB_OID})  # json, jsonb: answers decoded with json.loads, as psycopg's loaders do
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_CONNECTION_OK = pq.ConnStatus.OK
_IDLE = pq.TransactionStatus.IDLE
# The diagnostic connection after a pool timeout: long enough for a slow TLS handshake, short next to the wait.
_PROBE_CONNECT_TIMEOUT_SECONDS = 5
# How long a store keeps one connection out of its pool: the first call after that hands it back before taking one
# again, so that the pool's own upkeep (its lifetime limit, idle limit, a drain) still reaches it.
KEEP_SECONDS = 60.0


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
        self._queries: dict[str, bytes] = {}  # function -> its statement
        # One connection kept between calls (a container runs one invocation at a time): the pool's getconn/putconn
        # (its lock, stats, three logger calls and a reset check each way) cost more Python than the statement. A
        # list, because pop and append are atomic: a second thread meanwhile takes one from the pool.
        self._kept: list[tuple[psycopg.Connection[Any], float]] = []  # (the connection, when it goes back)
        _STORES.add(self)

    def call(self, function: str, params: dict[str, Any]) -> Any:
        query = self._queries.get(function)
        if query is None:
            if not _FUNCTION_NAME.fullmatch(function):
                raise ValueError(f"not a store function: {function!r}")
            query = self._queries[function] = f"select {function}($1)".encode()
        # The statement psycopg's `execute("select f(%s)", (Jsonb(params),))` sent (same text, a text jsonb
        # parameter from one json.dumps), sent straight through libpq: the cursor, the query conversion and the
        # adapters cost more Python than the call itself.
        argument = _ENCODE(params).encode()
        pool = self._pool
        try:
            conn, until = self._take()
            try:
                result = _execute(conn, query, argument)
            except BaseException:
                pool.putconn(conn)  # a broken connection is discarded there, an open transaction rolled back
                raise
            kept = self._kept
            # Kept when it is idle (autocommit: after any answer); else back to the pool.
            if conn.pgconn.transaction_status == _IDLE and not kept:
                kept.append((conn, until))
            else:
                pool.putconn(conn)
        except PoolTimeout as exc:
            raise self._pool_timeout(function, exc) from exc
        except psycopg.Error as exc:
            raise _translate(function, exc) from exc
        if not result.ntuples:
            return None
        value = result.get_value(0, 0)
        if value is None:
            return None
        if result.ftype(0) in _JSON_OIDS:
            return json.loads(value)
        loader = Transformer()  # an answer of another type (no bc_ function has one): psycopg's own loader
        loader.set_pgresult(result)
        row = loader.load_row(0, tuple)
        return row[0] if row else None

    def _take(self) -> tuple[psycopg.Connection[Any], float]:
        """The kept connection while its time lasts; else one from the pool (handing the kept one back first)."""
        if self._kept:
            try:
                conn, until = self._kept.pop()
            except IndexError:  # another thread took it meanwhile
                pass
            else:
                if time.monotonic() < until:
                    return conn, until
                self._pool.putconn(conn)  # kept long enough: the pool's upkeep decides what becomes of it
        return self._pool.getconn(), time.monotonic() + KEEP_SECONDS

    def _pool_timeout(self, function: str, timeout: PoolTimeout) -> StoreError:
        """Why the pool had no connection to give: it cannot connect (and why), or every connection is busy."""
        try:
            psycopg.connect(self._dsn, connect_timeout=_PROBE_CONNECT_TIMEOUT_SECONDS, autocommit=True).close()
        except psycopg.Error as exc:
            return _translate(function, exc)
        return StoreUnavailable(f"{function}: no free database connection ({timeout})", function=function)

    def release(self) -> None:
        """Hands the kept connection back to the pool (before the pool is used directly, or closed)."""
        while self._kept:
            try:
                conn, _ = self._kept.pop()
            except IndexError:
                break
            self._pool.putconn(conn)

    def close(self) -> None:
        self.release()
        self._pool.close()


# Every store of this process, so that a forked child forgets the connections its parent kept (their sockets are the
# parent's; psycopg does not close a connection made in another process when it is collected).
_STORES: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


def _forget_kept_after_fork() -> None:
    for store in list(_STORES):
        store._kept = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_kept_after_fork)


def _execute(conn: psycopg.Connection[Any], query: bytes, argument: bytes) -> PGresult:
    """One statement with one jsonb parameter, text in and out, through psycopg's own non-blocking generator: the
    same wait (interruptible, a query canceled on Ctrl-C) and the same errors as `Cursor.execute`."""
    pgconn = conn.pgconn
    if pgconn.status != _CONNECTION_OK:  # what `conn.cursor()` raises
        if pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError("the connection is closed")
        raise psycopg.InterfaceError(f"cannot execute operations: the connection is in status {pgconn.status}")
    pgconn.send_query_params(query, (argument,), param_types=(_JSONB_OID,))
    results = conn.wait(execute(pgconn))
    if not results:
        raise psycopg.InternalError("got no result from the query")
    for result in results:
        if result.status != _TUPLES_OK:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
            raise psycopg.InternalError(f"unexpected result status from query: {pq.ExecStatus(result.status).name}")
    return results[0]


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
