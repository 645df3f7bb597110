"""The store's error vocabulary from the psycopg adapter: the driver's errors never leave `PostgresStore.call`.

A real Postgres each time: a closed port, a wrong password, a role without the grant, a connection the server
dropped, bad input. (The Supabase adapter's mapping is in test_store_contract.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import psycopg_pool
import pytest

from babychain.store.errors import StoreAuthError, StoreError, StoreUnavailable
from babychain.store.postgres import PostgresStore, _translate
from tests.conftest import free_port


@pytest.fixture
def closing() -> Iterator[list[PostgresStore]]:
    stores: list[PostgresStore] = []
    yield stores
    for store in stores:
        store.close()


def _store(closing: list[PostgresStore], dsn: str, timeout: float = 30.0) -> PostgresStore:
    store = PostgresStore(dsn, max_size=1, timeout=timeout)
    closing.append(store)
    return store


def test_a_closed_port_is_unavailable(closing: list[PostgresStore]) -> None:
    store = _store(closing, f"postgresql://babychain:secret-pw-123@127.0.0.1:{free_port()}/babychain", timeout=1.0)
    with pytest.raises(StoreUnavailable) as caught:
        store.health()
    error = caught.value
    assert type(error) is StoreUnavailable and error.function == "bc_health"
    assert "Connection refused" in error.message and error.sqlstate is None
    assert isinstance(error.__cause__, psycopg_pool.PoolTimeout)  # the pool's wait, then one direct attempt
    assert "secret-pw-123" not in str(error)


def test_a_wrong_password_is_an_auth_error(password_role: dict[str, str], closing: list[PostgresStore]) -> None:
    store = _store(closing, password_role["dsn_wrong"], timeout=1.0)
    with pytest.raises(StoreAuthError) as caught:
        store.health()
    assert "password authentication failed" in caught.value.message
    assert password_role["password"] not in str(caught.value)


def test_a_role_without_the_grant_is_an_auth_error(password_role: dict[str, str], closing: list[PostgresStore]) -> None:
    # The right password this time: the login works, but only service_role may execute the RPC functions.
    store = _store(closing, password_role["dsn_right"], timeout=5.0)
    with pytest.raises(StoreAuthError) as caught:
        store.health()
    assert caught.value.sqlstate == "42501"
    assert isinstance(caught.value.__cause__, psycopg.errors.InsufficientPrivilege)


def test_a_dropped_connection_is_unavailable_and_the_next_call_reconnects(
    closing: list[PostgresStore], database_url: str
) -> None:
    store = _store(closing, database_url)
    assert store.health() == {"database": "ok"}
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
        )
    with pytest.raises(StoreUnavailable) as caught:
        store.health()
    assert caught.value.sqlstate in (None, "57P01")  # admin_shutdown, or just a closed socket
    assert store.health() == {"database": "ok"}  # the pool threw the broken connection away


def test_bad_input_is_a_plain_store_error(closing: list[PostgresStore], database_url: str) -> None:
    with pytest.raises(StoreError) as caught:
        _store(closing, database_url).get_run("not-a-uuid")
    assert type(caught.value) is StoreError
    assert (caught.value.sqlstate, caught.value.function) == ("22P02", "bc_get_run")
    assert "invalid input syntax for type uuid" in caught.value.message


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08006", StoreUnavailable),  # connection_failure
        ("40001", StoreUnavailable),  # serialization_failure
        ("40P01", StoreUnavailable),  # deadlock_detected
        ("53300", StoreUnavailable),  # too_many_connections
        ("57014", StoreUnavailable),  # query_canceled (statement timeout)
        ("57P01", StoreUnavailable),  # admin_shutdown
        ("28P01", StoreAuthError),  # invalid_password
        ("28000", StoreAuthError),  # invalid_authorization_specification
        ("42501", StoreAuthError),  # insufficient_privilege
        ("22P02", StoreError),  # invalid_text_representation
        ("23505", StoreError),  # unique_violation
        ("XX000", StoreError),  # internal_error
    ],
)
def test_sqlstates_map_to_store_errors(sqlstate: str, kind: type[StoreError]) -> None:
    error = _translate("bc_x", psycopg.errors.lookup(sqlstate)("from the server"))
    assert type(error) is kind
    assert (error.sqlstate, error.function) == (sqlstate, "bc_x")


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('connection failed: FATAL:  password authentication failed for user "babychain"', StoreAuthError),
        ('connection failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "x"', StoreAuthError),
        ('connection failed: FATAL:  role "babychain" does not exist', StoreAuthError),
        ('connection failed: FATAL:  role "babychain" is not permitted to log in', StoreAuthError),
        ("connection failed: fe_sendauth: no password supplied", StoreAuthError),
        ("connection failed: FATAL:  Tenant or user not found", StoreAuthError),
        ("connection failed: Connection refused", StoreUnavailable),
        ("connection failed: FATAL:  sorry, too many clients already", StoreUnavailable),
        ("server closed the connection unexpectedly", StoreUnavailable),
    ],
)
def test_connect_failures_without_a_sqlstate(message: str, kind: type[StoreError]) -> None:
    assert type(_translate("bc_x", psycopg.OperationalError(message))) is kind
