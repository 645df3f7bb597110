"""`PostgresStore.call` sends its statement straight through libpq: the same statement, parameter and answer as
psycopg's cursor (`conn.execute("select f(%s)", (Jsonb(params),)).fetchone()[0]`), on a real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from babychain.store.postgres import PostgresStore

# Answers of every shape a function can give, in json and jsonb, and in other types (no bc_ function returns one
# of those, but the call must still decode them as psycopg does).
ANSWERS = {
    "bc_test_jsonb_object": ("jsonb", "p_params || jsonb_build_object('ü', 'três €', 'n', 1.5, 'big', 12345678901234)"),
    "bc_test_json_array": ("json", "json_build_array(p_params, null, true, 'x')"),
    "bc_test_jsonb_null": ("jsonb", "'null'::jsonb"),
    "bc_test_sql_null": ("jsonb", "null::jsonb"),
    "bc_test_jsonb_scalar": ("jsonb", "to_jsonb(42)"),
    "bc_test_text": ("text", "p_params->>'text'"),
    "bc_test_integer": ("integer", "7"),
    "bc_test_boolean": ("boolean", "true"),
    "bc_test_timestamptz": ("timestamptz", "'2026-12-01 12:00:00+00'::timestamptz"),
}
PARAMS: dict[str, Any] = {"text": "héllo\nwörld", "nested": {"list": [1, 2.5, None, False]}, "emoji": "🌊"}


@pytest.fixture
def store(database_url: str) -> Iterator[PostgresStore]:
    with psycopg.connect(database_url, autocommit=True) as admin:
        for name, (returns, body) in ANSWERS.items():
            admin.execute(
                f"create function public.{name}(p_params jsonb) returns {returns} language sql as $$ select {body} $$"
            )
    store = PostgresStore(database_url, max_size=1)
    yield store
    store.close()


def cursor_answer(dsn: str, function: str, params: dict[str, Any]) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"select {function}(%s)", (Jsonb(params),)).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize("function", sorted(ANSWERS))
def test_the_answer_is_psycopgs(store: PostgresStore, database_url: str, function: str) -> None:
    expected = cursor_answer(database_url, function, PARAMS)
    answer = store.call(function, PARAMS)
    assert answer == expected and type(answer) is type(expected)
    assert store.call(function, PARAMS) == expected  # again, with the statement text cached


def test_a_run_reads_back_as_psycopg_reads_it(store: PostgresStore, database_url: str) -> None:
    assert store.call("bc_health", {}) == cursor_answer(database_url, "bc_health", {}) == {"database": "ok"}
    params = {"owner_id": "test:store-call", "limit": 5, "status": None, "chain_slug": None}
    params |= {"cursor_created_at": None, "cursor_id": None}
    assert store.call("bc_list_runs", params) == cursor_answer(database_url, "bc_list_runs", params)


def test_the_server_sees_the_statement_psycopg_sent(store: PostgresStore, database_url: str) -> None:
    """The benchmark harness counts statements by their text in the server's log: it must not change."""
    conn = store._pool.getconn()
    pid = conn.info.backend_pid
    store._pool.putconn(conn)
    store.call("bc_health", {})
    with psycopg.connect(database_url, autocommit=True) as admin:
        row = admin.execute("select query from pg_stat_activity where pid = %s", (pid,)).fetchone()
    assert row == ("select bc_health($1)",)


def test_only_store_function_names_are_called(store: PostgresStore) -> None:
    for name in ("pg_sleep", "bc_health; drop table chain_runs", "BC_HEALTH", "bc_health()"):
        with pytest.raises(ValueError, match="not a store function"):
            store.call(name, {})
