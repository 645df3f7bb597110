"""A loopback stand-in for Supabase's PostgREST, just wide enough for supabase-py's `rpc()`, for store tests.

It answers `POST /rest/v1/rpc/<function>` the way PostgREST does for a function returning a scalar: the function's
value serialised as the whole JSON body (`null` for SQL NULL), built by Postgres itself with PostgREST's own
expression, `coalesce(string_agg(to_json(pgrst_scalar)::text, ','), 'null')`, as `application/json;
charset=utf-8`.
Arguments are matched by name, like PostgREST: the body must be `{"p": ...}`, run as
`"<schema>"."bc_x"(p => $1::jsonb)`, where the schema is the first exposed one (`public`, as on Supabase) or the one
a `Content-Profile` header selects among the exposed ones (406 PGRST106 for any other, like PostgREST).

It checks the `apikey` header and `Authorization: Bearer <key>` against the service role key (401 with PostgREST's
error JSON otherwise) and maps database errors to PostgREST's statuses and `{code, message, details, hint}` bodies.
Like PostgREST it runs each call in a transaction as the key's role (`set local role service_role`), so the
database's grants decide what the service role may call; when the connecting user may not assume that role (a
`DATABASE_URL` user without membership), it runs as that user.

    with PostgrestStandIn(database_url) as gateway:
        store = SupabaseStore(gateway.url, gateway.service_role_key)

Control API: `fail_next(status, body, ...)` scripts the next answers (a 503 from PostgREST, a proxy's HTML page),
`stall_next(seconds)` delays the next answers; every request is recorded in `requests`.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlsplit

import psycopg
import psycopg_pool
from psycopg import sql

from babychain.local.loopback import LoopbackServer, QuietHandler

RPC_PREFIX = "/rest/v1/rpc/"
_FUNCTION_NAME = re.compile(r"bc_[a-z_]+")


@dataclass
class _Fault:
    status: int
    body: bytes
    content_type: str
    times: int


def _pgrst_status(sqlstate: str) -> int:
    """PostgREST's HTTP status for a Postgres error (its `pgErrorStatus` table)."""
    exact = {
        "23503": 409,
        "23505": 409,
        "25006": 405,
        "42883": 404,
        "42P01": 404,
        "42P17": 500,
        "42501": 403,  # 401 for an anonymous request; the stand-in only serves authenticated ones
        "53400": 500,
        "57P01": 503,
        "P0001": 400,
    }
    if sqlstate in exact:
        return exact[sqlstate]
    by_class = {
        "08": 503,
        "09": 500,
        "0L": 403,
        "0P": 403,
        "25": 500,
        "28": 403,
        "2D": 500,
        "38": 500,
        "39": 500,
        "3B": 500,
        "40": 500,
        "53": 503,
        "54": 500,
        "55": 500,
        "57": 500,
        "58": 500,
        "F0": 500,
        "HV": 500,
        "P0": 500,
        "XX": 500,
    }
    return by_class.get(sqlstate[:2], 400)


class PostgrestStandIn(LoopbackServer):
    def __init__(
        self,
        dsn: str,
        service_role_key: str = "sb_secret_standin_service_role_0001",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        exposed_schemas: tuple[str, ...] = ("public",),
        role: str = "service_role",
    ) -> None:
        """`exposed_schemas` is PostgREST's `db-schemas` (Supabase exposes `public`); `role` the key's role."""
        self.service_role_key = service_role_key
        self.exposed_schemas = exposed_schemas
        self.role: str | None = role
        self.requests: list[dict[str, Any]] = []  # method, path, headers (lower-case names), json
        self._faults: list[_Fault] = []
        self._stalls: list[float] = []
        self._lock = threading.Lock()
        self._pool = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False, timeout=10.0
        )
        super().__init__(self._handler_class(), host=host, port=port, name="postgrest-standin")

    # ------------------------------------------------------------------------------------------ lifecycle
    # `url` is the project URL to hand to supabase-py (which appends `/rest/v1`).

    def start(self) -> Self:
        self._pool.open(wait=True)
        if self.role is not None:
            with self._pool.connection() as conn:
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(self.role)))
                except psycopg.errors.InsufficientPrivilege:
                    self.role = None  # run as the connecting user
        return super().start()

    def stop(self) -> None:
        super().stop()
        self._pool.close()

    # ------------------------------------------------------------------------------------------ control API

    def fail_next(
        self, status: int, body: Any = None, *, times: int = 1, content_type: str = "application/json"
    ) -> None:
        """The next `times` authorised calls answer `status` with `body` (JSON-encoded unless it is str/bytes)."""
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        with self._lock:
            self._faults.append(_Fault(status, data, content_type, times))

    def stall_next(self, seconds: float, times: int = 1) -> None:
        """The next `times` requests wait `seconds` before they are answered."""
        with self._lock:
            self._stalls.extend([seconds] * times)

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.times -= 1
            if fault.times <= 0:
                self._faults.pop(0)
            return fault

    def _take_stall(self) -> float:
        with self._lock:
            return self._stalls.pop(0) if self._stalls else 0.0

    # ------------------------------------------------------------------------------------------ PostgREST

    def _rpc(self, schema: str, function: str, body: Any) -> tuple[int, bytes]:
        """Runs the function; returns PostgREST's status and JSON body."""
        if not _FUNCTION_NAME.fullmatch(function) or not isinstance(body, dict) or set(body) != {"p"}:
            names = ", ".join(sorted(body)) if isinstance(body, dict) else ""
            return 404, _error(
                "PGRST202",
                f"Could not find the function {schema}.{function}({names}) in the schema cache",
                f"Searched for the function {schema}.{function} with parameters {names or '(none)'} or with a single "
                "unnamed json/jsonb parameter, but no matches were found in the schema cache.",
                None,
            )
        query = sql.SQL(
            "select coalesce(string_agg(to_json(r.pgrst_scalar)::text, ','), 'null') "
            "from (select {}.{}(p => %s::jsonb) as pgrst_scalar) r"
        ).format(sql.Identifier(schema), sql.Identifier(function))
        try:
            with self._pool.connection() as conn, conn.transaction():
                if self.role is not None:
                    conn.execute(sql.SQL("set local role {}").format(sql.Identifier(self.role)))
                row = conn.execute(query, (json.dumps(body["p"]),)).fetchone()
        except psycopg_pool.PoolTimeout:
            return 504, _error("PGRST003", "Timed out acquiring connection from connection pool.", None, None)
        except psycopg.Error as exc:
            if exc.sqlstate is None:  # no answer from the server at all
                return 503, _error("PGRST001", "Database client error. Retrying the connection.", str(exc), None)
            if exc.sqlstate == "42883":
                return 404, _error("PGRST202", f"Could not find the function {schema}.{function}(p)", None, None)
            diag = exc.diag
            return _pgrst_status(exc.sqlstate), _error(
                exc.sqlstate, diag.message_primary or str(exc), diag.message_detail, diag.message_hint
            )
        text: str = row[0] if row else "null"
        return 200, text.encode()

    def _handler_class(self) -> type[QuietHandler]:
        server = self

        class Handler(QuietHandler, keep_alive=True):  # keep-alive, like PostgREST behind Supabase's gateway
            def _send(self, status: int, data: bytes, content_type: str = "application/json; charset=utf-8") -> None:
                self.send_bytes(status, data, content_type)

            def _authorized(self) -> bool:
                key = server.service_role_key.encode()
                apikey = (self.headers.get("apikey") or "").encode()
                bearer = (self.headers.get("authorization") or "").encode()
                if not apikey:
                    self._send(401, _error("PGRST301", "No API key found in request", None, None))
                    return False
                if not (hmac.compare_digest(apikey, key) and hmac.compare_digest(bearer, b"Bearer " + key)):
                    self._send(401, _error("PGRST301", "Invalid API key", None, None))
                    return False
                return True

            def do_POST(self) -> None:
                raw = self.read_body()
                try:
                    body: Any = json.loads(raw) if raw else {}
                    parsed_ok = True
                except ValueError:
                    body, parsed_ok = None, False
                with server._lock:
                    server.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "json": body,
                        }
                    )
                time.sleep(server._take_stall())
                path = urlsplit(self.path).path
                if not path.startswith(RPC_PREFIX):
                    return self._send(404, _error("PGRST125", "Invalid path specified in request URL", None, None))
                if not self._authorized():
                    return None
                fault = server._take_fault()
                if fault is not None:
                    return self._send(fault.status, fault.body, fault.content_type)
                if not parsed_ok:
                    return self._send(400, _error("PGRST102", "Empty or invalid json", None, None))
                schema = self.headers.get("content-profile") or server.exposed_schemas[0]
                if schema not in server.exposed_schemas:
                    message = "The schema must be one of the following: " + ", ".join(server.exposed_schemas)
                    return self._send(406, _error("PGRST106", message, None, None))
                status, data = server._rpc(schema, path.removeprefix(RPC_PREFIX), body)
                return self._send(status, data)

            def do_GET(self) -> None:
                self._send(405, _error("PGRST117", "Unsupported HTTP method: the stand-in serves POST rpc", None, None))

        return Handler


def _error(code: str, message: str, details: str | None, hint: str | None) -> bytes:
    return json.dumps({"code": code, "details": details, "hint": hint, "message": message}).encode()
