"""A loopback stand-in for Sentry's ingest endpoint: it records each envelope the SDK sends.

    with SentryIngest() as ingest:
        monkeypatch.setenv("SENTRY_DSN", ingest.dsn)
        ...
        assert b"..." in ingest.body()

`delay_seconds` holds each envelope that long before recording it (and answering), so a test can tell an event the
code waited for from one still on its way.
"""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SentryIngest:
    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.received: list[bytes] = []
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                time.sleep(ingest.delay_seconds)
                ingest.received.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self._server.server_address[1]}/1"

    def body(self) -> bytes:
        return b"".join(self.received)

    def __enter__(self) -> SentryIngest:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
