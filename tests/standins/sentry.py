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
import time

from babychain.local.loopback import LoopbackServer, QuietHandler


class SentryIngest(LoopbackServer):
    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.received: list[bytes] = []
        ingest = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.read_body()
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                time.sleep(ingest.delay_seconds)
                ingest.received.append(body)
                self.send_bytes(200)

        super().__init__(Handler, name="sentry-ingest")

    @property
    def dsn(self) -> str:
        return f"http://public@{self.host}:{self.port}/1"

    def body(self) -> bytes:
        return b"".join(self.received)
