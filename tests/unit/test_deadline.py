"""Total deadlines on outbound HTTP against a real server on loopback that trickles its answer.

The server sends each byte well within the per-read timeout, so only a total deadline can end the request early:
without one, every request below would succeed once the whole trickled answer had arrived.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from babychain.errors import ProviderError
from babychain.providers.http import ProviderHttp
from babychain.security.safe_http import FetchError, fetch_bytes, post_json
from babychain.security.urls import Resolver

BYTE_INTERVAL = 0.05  # far below every per-read timeout used here
BODY = b'{"ok":true,"padding":"' + b"p" * 30 + b'"}'
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)


def no_dns(host: str) -> list[str]:
    raise AssertionError(f"unexpected DNS lookup of {host}")


resolver: Resolver = no_dns


class TrickleServer:
    """Answers every request with 200, a byte at a time: the status line and headers too (`headers`), or the body."""

    def __init__(self, trickle: str) -> None:
        self.trickle = trickle
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.completed = 0  # answers sent in full
        self.closed_early = 0  # answers the client stopped reading
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)  # the request (small, one read)
            split = {"headers": 0, "body": len(HEAD), "none": len(HEAD + BODY)}[self.trickle]
            fast, slow = (HEAD + BODY)[:split], (HEAD + BODY)[split:]
            try:
                conn.sendall(fast)
                for index in range(len(slow)):
                    conn.sendall(slow[index : index + 1])
                    time.sleep(BYTE_INTERVAL)
            except OSError:
                self.closed_early += 1
                return
            self.completed += 1

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture(params=["headers", "body"])
def trickler(request: pytest.FixtureRequest) -> Iterator[TrickleServer]:
    server = TrickleServer(request.param)
    yield server
    server.close()


def test_the_whole_answer_arrives_without_a_deadline(trickler: TrickleServer) -> None:
    # The control: the trickled answer is complete and valid, so a failure below is the deadline's doing.
    result = post_json(trickler.url, b"{}", {}, resolver=resolver, timeout=30.0, allow_loopback_http=True)
    assert result.status_code == 200 and result.body_excerpt == BODY.decode()


def test_a_callback_post_ends_at_its_deadline(trickler: TrickleServer) -> None:
    with pytest.raises(FetchError) as info:
        post_json(trickler.url, b"{}", {}, resolver=resolver, timeout=0.4, allow_loopback_http=True)
    assert info.value.transient is True and "timed out" in info.value.message
    assert trickler.completed == 0


def test_a_download_ends_at_its_total_deadline(trickler: TrickleServer) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(
            trickler.url, resolver=resolver, max_bytes=1024, timeout=5.0, total_timeout=0.4, allow_loopback_http=True
        )
    assert info.value.transient is True and "timed out" in info.value.message


def test_a_provider_call_ends_at_its_deadline(trickler: TrickleServer) -> None:
    http = ProviderHttp("Trickler", timeout=0.4)
    try:
        with pytest.raises(ProviderError) as info:
            http.send("GET", trickler.url)
    finally:
        http.close()
    assert info.value.code == "provider_timeout" and info.value.transient is True


def test_a_provider_call_without_trickling_is_unaffected() -> None:
    server = TrickleServer("none")  # sends everything at once
    http = ProviderHttp("Prompt", timeout=0.4)
    try:
        assert http.json_object(http.send("GET", server.url)) == {"ok": True, "padding": "p" * 30}
    finally:
        http.close()
        server.close()
