"""Shared fixtures: one embedded Postgres per test process, a local engine per test, loopback HTTP clients."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from babychain.store.migrations import apply_migrations

KEY_A = "bc_test_key_alpha_0001"
KEY_B = "bc_test_key_bravo_0002"
CALLBACK_SECRET = "whsec_" + "dGVzdC1jYWxsYmFjay1zZWNyZXQtMzItYnl0ZXMhISE="
TERMINAL = ("succeeded", "failed", "canceled")

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
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Postgres: DATABASE_URL when given, else an embedded server for this test process."""
    if os.environ.get("DATABASE_URL"):
        dsn = os.environ["DATABASE_URL"]
        apply_migrations(dsn)
        yield dsn
        return
    from babychain.store.embedded import start_embedded_postgres

    dsn, server = start_embedded_postgres(tmp_path_factory.mktemp("pg"))
    apply_migrations(dsn)
    yield dsn
    del server


@pytest.fixture
def make_engine(database_url: str, tmp_path: Path) -> Iterator[Callable[..., LocalEngine]]:
    engines: list[LocalEngine] = []

    def make(workers: bool = True, **overrides: Any) -> LocalEngine:
        settings = {**FAST, "database_url": database_url, **overrides}
        engine = LocalEngine(
            tmp_path / f"engine{len(engines)}", overrides=settings, workers=workers, sweep_interval_seconds=0.5
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


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()
