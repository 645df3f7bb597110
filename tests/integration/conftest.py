"""Fixtures of the tests that run `babychain serve` as a process (tests/integration/serve.py), and the headless
browser of the run inspector's and the docs' pictures' tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CALLBACK_SECRET, KEY_A
from tests.integration.serve import Serve

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (Playwright's own browser download cannot work here); a missing
    chromium fails the test, never skips it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it when it is missing)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def serve_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BABYCHAIN_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=database_url,
        BABYCHAIN_API_KEY=KEY_A,
        BABYCHAIN_CALLBACK_SECRET=CALLBACK_SECRET,
        BABYCHAIN_LOCAL_PROVIDER_DELAY_SECONDS="1.5",
        BABYCHAIN_POLL_INTERVAL_SECONDS="0.1",
    )
    return env


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    """Every `Serve` a test appends is killed at its end, if it still runs."""
    started: list[Serve] = []
    yield started
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
