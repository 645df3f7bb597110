"""`PostgresStore.call` sends its statement straight through libpq: the same statement, parameter and answer as
psycopg's cursor (`conn.execute("select f(%s)", (Jsonb(params),)).fetchone()[0]`), on a real Postgres."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from babychain.store import postgres
from babychain.store.errors import StoreError
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
# For the kept connection's tests: the backend that answered, and a call that fails on the server.
PROBES = {
    "bc_test_backend": ("jsonb", "to_jsonb(pg_backend_pid())"),
    "bc_test_fails": ("jsonb", "(1 / 0)::text::jsonb"),
}
PARAMS: dict[str, Any] = {"text": "héllo\nwörld", "nested": {"list": [1, 2.5, None, False]}, "emoji": "🌊"}


@pytest.fixture
def store(database_url: str) -> Iterator[PostgresStore]:
    with psycopg.connect(database_url, autocommit=True) as admin:
        for name, (returns, body) in (ANSWERS | PROBES).items():
            admin.execute(
                f"create function public.{name}(p_params jsonb) returns {returns} language sql as $$ select {body} $$"
            )
    store = PostgresStore(database_url, max_size=1)
    yield store
    store.close()


@pytest.fixture
def two(store: PostgresStore, database_url: str) -> Iterator[PostgresStore]:
    """A store whose pool holds two connections (the functions made by `store`)."""
    two = PostgresStore(database_url, max_size=2)
    yield two
    two.close()


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


def _pool_requests(store: PostgresStore) -> int:
    return store._pool.get_stats().get("requests_num", 0)


def test_one_connection_is_kept_between_calls(two: PostgresStore) -> None:
    """The pool's getconn/putconn once, not per call: the next call runs on the same backend."""
    first = two.call("bc_test_backend", {})
    requests = _pool_requests(two)
    assert [two.call("bc_test_backend", {}) for _ in range(5)] == [first] * 5
    assert _pool_requests(two) == requests
    # A second connection taken from the pool meanwhile (another thread) leaves the kept one alone.
    with two._pool.connection() as other:
        assert other.info.backend_pid != first
        assert two.call("bc_test_backend", {}) == first
    two.release()  # handed back: the pool has both again, and a call takes one from it
    assert two._pool.get_stats()["pool_available"] == 2
    two.call("bc_test_backend", {})
    assert _pool_requests(two) == requests + 2


def test_a_failed_call_hands_its_connection_back(two: PostgresStore) -> None:
    two.call("bc_test_backend", {})
    requests = _pool_requests(two)
    with pytest.raises(StoreError, match="22012"):  # division_by_zero
        two.call("bc_test_fails", {})
    assert two._kept == []
    # Back in the pool, not lost. The pool may still be opening a second connection it began when the first call
    # found none ready (it counts in pool_size at once): wait for that, not for a connection that never comes back.
    deadline = time.monotonic() + 5.0
    while (stats := two._pool.get_stats())["pool_available"] != stats["pool_size"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stats["pool_available"] == stats["pool_size"], stats
    assert isinstance(two.call("bc_test_backend", {}), int)
    assert _pool_requests(two) == requests + 1  # the next call takes a connection from the pool again


def test_the_kept_connection_goes_back_after_its_time(two: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "KEEP_SECONDS", 0.0)  # its time is up at once: back to the pool before each call
    requests = _pool_requests(two)
    for _ in range(3):
        two.call("bc_test_backend", {})
    assert _pool_requests(two) == requests + 3 and len(two._kept) == 1
    monkeypatch.setattr(postgres, "KEEP_SECONDS", 60.0)
    for _ in range(3):  # the first call hands the old one back and takes one for 60 s; the next two keep it
        two.call("bc_test_backend", {})
    assert _pool_requests(two) == requests + 4


def test_a_forked_child_does_not_use_its_parents_kept_connection(two: PostgresStore) -> None:
    backend = two.call("bc_test_backend", {})
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: the kept connection is forgotten (not closed: its socket is the parent's)
        try:
            import gc

            kept = len(two._kept)
            gc.collect()
            os.write(write, str(kept).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    assert os.read(read, 16) == b"0" and status == 0
    os.close(read)
    assert two.call("bc_test_backend", {}) == backend  # the parent's session survived the child
