"""The Supabase adapter: the same `bc_*` SQL functions, called through PostgREST RPC with supabase-py.

`call("bc_x", params)` is `POST /rest/v1/rpc/bc_x` with the body `{"p": params}`, authenticated with the service role
key (which bypasses Row Level Security; the anon and authenticated roles can neither read the tables nor execute the
functions, see `supabase/migrations/*_row_level_security.sql`).

What comes back matches the psycopg adapter value for value. PostgREST answers a function that returns a scalar
(`jsonb` is one) with that value serialised as the whole JSON body, `null` for SQL NULL (it builds the body in SQL,
`coalesce(string_agg(to_json(pgrst_scalar)::text, ','), 'null')`), and postgrest-py decodes it with
`response.json()` into `data`: objects, arrays, strings, numbers, booleans and `None`, exactly as psycopg's jsonb
loader gives them. Only bodiless answers need normalising (a 204, or an empty 2xx body, which postgrest-py turns
into `[]`): they become `None`. A 2xx answer that is not JSON at all (a proxy's page) is an error, not a result.

Failures are the store's own errors (`babychain.store.errors`), carrying PostgREST's or Postgres's code (`sqlstate`
for the latter, like the psycopg adapter's):

- `StoreUnavailable`: the database cannot be reached now (network failure or timeout, a 5xx from the gateway,
  PostgREST's connection errors PGRST000-003, or a SQLSTATE of class 08/40/53/57). The API layer answers 503
  `database_unreachable`.
- `StoreAuthError`: the key was refused (401/403, PostgREST's JWT errors) or the role lacks a grant (42501, class 28).
- `StoreError`: anything else (bad input to a function, a missing function, an unexpected answer).

The service role key never appears in an exception or a log line: messages are built from the answer's code and
text, with any echo of the key removed.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx

from babychain.store.base import Store
from babychain.store.errors import StoreAuthError, StoreError, StoreUnavailable, error_class_for_sqlstate, is_sqlstate

_FUNCTION_NAME = re.compile(r"bc_[a-z_]+")

# PostgREST could not reach or use the database: connection failed, pool error, schema cache not loaded, timeout
# waiting for a pooled connection.
_UNAVAILABLE_PGRST = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})
# PostgREST refused the credentials: JWT secret missing, invalid JWT, anonymous access disabled, invalid claims.
_AUTH_PGRST = frozenset({"PGRST300", "PGRST301", "PGRST302", "PGRST303"})


class SupabaseStore(Store):
    def __init__(self, url: str, service_role_key: str, *, client: Any | None = None, timeout: float = 30.0) -> None:
        """`url` is the project URL (`https://<ref>.supabase.co`); `client` replaces the supabase-py client."""
        self._url = url.rstrip("/")
        self._secret = service_role_key
        self._local = threading.local()  # the HTTP status and headers of this thread's last answer
        self._http: httpx.Client | None = None
        if client is not None:
            self._client = client
            return
        # Imported here: only deployments on Supabase pay for supabase-py's import.
        from supabase import ClientOptions, create_client

        self._http = httpx.Client(timeout=timeout, event_hooks={"response": [self._remember_answer]})
        options = ClientOptions(
            httpx_client=self._http,
            auto_refresh_token=False,
            persist_session=False,
        )
        self._client = create_client(self._url, service_role_key, options=options)
        _ = self._client.postgrest  # built lazily by supabase-py; build it now, before threads share the client

    def __repr__(self) -> str:
        return f"SupabaseStore({self._url!r})"

    def _remember_answer(self, response: httpx.Response) -> None:
        self._local.answer = (
            response.status_code,
            response.headers.get("content-type", ""),
            response.headers.get("content-length"),
        )

    def call(self, function: str, params: dict[str, Any]) -> Any:
        if not _FUNCTION_NAME.fullmatch(function):
            raise ValueError(f"not a store function: {function!r}")
        from postgrest.exceptions import APIError  # a dependency of supabase-py, loaded by the constructor

        self._local.answer = None
        try:
            response = self._client.rpc(function, {"p": params}).execute()
        except APIError as exc:
            raise self._api_error(function, exc) from None
        except httpx.TransportError as exc:  # connect/read/write failures and timeouts
            raise StoreUnavailable(
                f"{function}: Supabase is unreachable ({type(exc).__name__}: {self._redact(str(exc))})",
                function=function,
            ) from None
        except httpx.HTTPError as exc:
            raise StoreError(
                f"{function}: unusable answer from Supabase ({type(exc).__name__}: {self._redact(str(exc))})",
                function=function,
            ) from None
        return self._result(function, response.data)

    def _result(self, function: str, data: Any) -> Any:
        answer: tuple[int, str, str | None] | None = getattr(self._local, "answer", None)
        if answer is None:  # an injected client without our response hook: take postgrest-py's value as it is
            return data
        status, content_type, length = answer
        if status == 204 or length == "0":
            return None  # no body at all: the function gave nothing, which psycopg reports as NULL
        if "json" not in content_type.lower():
            raise StoreError(
                f"{function}: Supabase answered HTTP {status} with {content_type or 'no content type'}, not JSON",
                function=function,
                status=status,
            )
        return data

    def _api_error(self, function: str, exc: Any) -> StoreError:
        answer: tuple[int, str, str | None] | None = getattr(self._local, "answer", None)
        status = answer[0] if answer else None
        code = self._redact_opt(_text(getattr(exc, "code", None)))
        message = self._redact_opt(_text(getattr(exc, "message", None))) or "request failed"
        details = self._redact_opt(_text(getattr(exc, "details", None)))
        hint = self._redact_opt(_text(getattr(exc, "hint", None)))
        if status is None and code and code.isdigit():
            status = int(code)  # postgrest-py puts the HTTP status in `code` when the body is not PostgREST JSON
        kind = _classify(code, status)
        where = f" (HTTP {status})" if status else ""
        return kind(
            f"{function}: {code or 'error'}{where}: {message}",
            function=function,
            code=code,
            status=status,
            details=details,
            hint=hint,
        )

    def _redact(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "[redacted]")
        return text

    def _redact_opt(self, text: str | None) -> str | None:
        return None if text is None else self._redact(text)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _classify(code: str | None, status: int | None) -> type[StoreError]:
    if code in _UNAVAILABLE_PGRST:
        return StoreUnavailable
    if code in _AUTH_PGRST or status in (401, 403):
        return StoreAuthError
    if code and is_sqlstate(code):  # the database raised it: as in the psycopg adapter, keyed on the SQLSTATE
        return error_class_for_sqlstate(code)
    if status is not None and status >= 500:
        # A 5xx without a database code: PostgREST or the gateway in front of it (Kong, Cloudflare) is down.
        return StoreUnavailable
    return StoreError
