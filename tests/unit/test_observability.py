"""Telemetry never carries secrets: Sentry events are scrubbed before they leave, checked against a real receiver."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk

from babychain import observability

BFL_KEY = "bfl_live_5f0c1d2e3a4b5c6d7e8f"


@pytest.fixture
def sentry_receiver() -> Iterator[list[bytes]]:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    received.append(f"http://public@127.0.0.1:{server.server_address[1]}/1".encode())
    yield received
    server.shutdown()


def test_scrub_replaces_every_secret_value_anywhere() -> None:
    event = {"message": f"auth failed for {BFL_KEY}", "extra": {"nested": [f"x-key: {BFL_KEY}"]}}
    scrubbed = observability.scrub(event, [BFL_KEY])
    assert BFL_KEY not in str(scrubbed)
    assert scrubbed["extra"]["nested"] == ["x-key: [redacted]"]


def test_secret_values_ignore_short_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BABYCHAIN_API_KEY", "short,bc_long_enough_key_1")
    assert "bc_long_enough_key_1" in observability.secret_values()
    assert "short" not in observability.secret_values()


def test_sentry_events_leave_without_secrets(monkeypatch: pytest.MonkeyPatch, sentry_receiver: list[bytes]) -> None:
    dsn = sentry_receiver.pop(0).decode()
    monkeypatch.setenv("SENTRY_DSN", dsn)
    monkeypatch.setenv("BFL_API_KEY", BFL_KEY)
    monkeypatch.setattr(observability, "_sentry_started", False)
    try:
        assert observability.init_sentry() is True
        try:
            raise RuntimeError(f"BFL refused the key {BFL_KEY}")
        except RuntimeError as exc:
            sentry_sdk.capture_exception(exc)
        sentry_sdk.flush(timeout=5)
    finally:
        sentry_sdk.get_client().close()
    assert sentry_receiver, "Sentry sent nothing"
    sent = b"".join(sentry_receiver)
    assert b"BFL refused the key" in sent
    assert BFL_KEY.encode() not in sent
    assert b"[redacted]" in sent


def test_sentry_stays_off_without_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    monkeypatch.setattr(observability, "_sentry_started", False)
    assert observability.init_sentry() is False
