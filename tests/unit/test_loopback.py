"""The one loopback server helper: lifecycle, send helpers, bounded bodies, keep-alive."""

from __future__ import annotations

import socket
import time

import httpx

from babychain.local.loopback import LoopbackServer, QuietHandler


class Echo(QuietHandler, keep_alive=True):
    def do_POST(self) -> None:
        self.send_bytes(200, self.read_body(max_bytes=16), "application/octet-stream", {"X-Seen": self.path})

    def do_GET(self) -> None:
        self.send_json(201, {"path": self.path, "port": self.client_address[1]}, {"X-Extra": "1"})


def test_serves_on_a_free_loopback_port_and_stops() -> None:
    with LoopbackServer(Echo) as server:
        assert server.url == server.base_url == f"http://127.0.0.1:{server.port}"
        answer = httpx.get(server.url + "/a")
        assert (answer.status_code, answer.json()["path"], answer.headers["x-extra"]) == (201, "/a", "1")
        assert answer.headers["content-type"] == "application/json"
        echoed = httpx.post(server.url + "/b", content=b"hello")
        assert (echoed.content, echoed.headers["x-seen"]) == (b"hello", "/b")
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0  # closed


def test_stop_without_start_does_not_hang() -> None:
    started = time.monotonic()
    LoopbackServer(Echo).stop()
    assert time.monotonic() - started < 1


def test_keep_alive_reuses_one_connection_without_delayed_ack_stalls() -> None:
    with LoopbackServer(Echo) as server, httpx.Client(base_url=server.url) as client:
        started = time.monotonic()
        ports = {client.get("/").json()["port"] for _ in range(20)}
        elapsed = time.monotonic() - started
    assert len(ports) == 1
    assert elapsed < 20 * 0.04  # Nagle plus delayed ACK would cost ~40 ms a request


def _raw_post(server: LoopbackServer, length: str) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_read_body_refuses_oversized_or_bad_lengths_and_closes() -> None:
    with LoopbackServer(Echo) as server:
        assert b" 413 " in _raw_post(server, "17").split(b"\r\n")[0]
        assert b" 400 " in _raw_post(server, "nope").split(b"\r\n")[0]
        assert httpx.post(server.url, content=b"still fine").content == b"still fine"
