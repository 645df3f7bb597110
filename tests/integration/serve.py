"""`babychain serve` in a subprocess, as an operator runs it (for kill -9 and SIGTERM tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import wait_until


class Serve:
    def __init__(self, home: Path, port: int, env: dict[str, str]) -> None:
        self.home, self.port, self.env = home, port, env
        self.process: subprocess.Popen[str] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> Serve:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "babychain.local.cli", "--home", str(self.home), "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert wait_until(self.healthy, timeout=60), "serve did not come up"
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """kill -9, and wait until nothing answers on its port any more (its workers die with it)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        assert wait_until(lambda: not self.healthy(), timeout=10)

    def output(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        return self.process.stdout.read()
