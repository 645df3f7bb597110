"""safe_http against real HTTP and HTTPS servers on loopback; every address the client dials is recorded."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from babychain.errors import UnsafeUrlError
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.media_types import MediaRefused
from babychain.security import lean_http, safe_http
from babychain.security.lean_http import Origin
from babychain.security.safe_http import (
    FetchError,
    close_pooled_connections,
    fetch_bytes,
    parse_retry_after,
    post_json,
    shared_ssl_context,
)
from babychain.security.urls import Resolver
from tests.conftest import free_port
from tests.standins.tls import make_tls_server_context, trusting

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # the magic bytes are what the download check reads
HTML_PAGE = b"<!doctype html><html><body>" + b"x" * 10_000 + b"</body></html>"
SVG_IMAGE = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
MEDIA = {
    "/media/png": (PNG_BYTES, "image/png"),
    "/media/png-generic": (PNG_BYTES, "application/octet-stream"),
    "/media/svg": (SVG_IMAGE, "image/svg+xml"),
    "/media/html": (HTML_PAGE, "text/html; charset=utf-8"),
    "/media/html-as-png": (HTML_PAGE, "image/png"),
    "/media/svg-as-octets": (SVG_IMAGE, "application/octet-stream"),
}


class Handler(QuietHandler, keep_alive=True):  # keep-alive: the pool tests count reused connections
    seen: list[dict[str, Any]] = []  # replaced per server by the fixture

    def _record(self, body: bytes = b"") -> None:
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": body,
                "client_port": self.client_address[1],  # tells connections apart
                "sni": getattr(self.connection, "sni", None),
            }
        )

    def do_GET(self) -> None:
        self._record()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/file":
            self.send_bytes(200, b"hello bytes", "image/png")
        elif url.path == "/host":
            self.send_bytes(200, self.headers["Host"].encode(), "text/plain")
        elif url.path == "/set-cookie":
            self.send_bytes(200, b"cookie", headers={"Set-Cookie": "session=secret; Path=/"})
        elif url.path == "/redirect":
            self.send_bytes(302, headers={"Location": "/file"})
        elif url.path == "/redirect-to":
            self.send_bytes(int(query.get("status", ["302"])[0]), headers={"Location": query["to"][0]})
        elif url.path == "/redirect-bare":
            self.send_bytes(302)
        elif url.path == "/loop":
            self.send_bytes(307, headers={"Location": "/loop"})
        elif url.path == "/big":
            self.send_bytes(200, b"x" * 10_000)
        elif url.path == "/big-unannounced":
            # No Content-Length: the client only finds out by reading.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(80):
                    self.wfile.write(b"y" * 65536)
            except OSError:
                pass  # the client hung up, as it should
        elif url.path in MEDIA:
            self.send_bytes(200, *MEDIA[url.path])
        elif url.path == "/unavailable":
            self.send_bytes(503, b"busy", headers={"Retry-After": "7"})
        elif url.path == "/missing":
            self.send_bytes(404, b"nope")
        elif url.path == "/slow":
            time.sleep(1.5)
            self.send_bytes(200, b"late")
        elif url.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            try:
                for _ in range(10):
                    self.wfile.write(b"d")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        else:
            self.send_bytes(404)

    def do_POST(self) -> None:
        body = self.read_body()
        self._record(body)
        url = urlsplit(self.path)
        if url.path == "/echo":
            echoed = {"headers": dict(self.headers.items()), "body": body.decode()}
            self.send_json(200, echoed)
        elif url.path == "/post-redirect":
            self.send_bytes(302, b"moved", headers={"Location": "/echo"})
        elif url.path == "/post-busy":
            self.send_bytes(503, b"try later", headers={"Retry-After": "7"})
        elif url.path == "/post-big":
            self.send_bytes(200, "é".encode() * 50_000)
        else:
            self.send_bytes(404)


class CountingHTTPServer(ThreadingHTTPServer):
    connections = 0  # accepted TCP connections (TLS: completed handshakes)
    finished = 0  # connections the client hung up (or the handler ended)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.finished += 1
        super().shutdown_request(request)


class CountingHTTPServer6(CountingHTTPServer):
    address_family = socket.AF_INET6


class Server:
    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.seen: list[dict[str, Any]] = []
        handler = type("BoundHandler", (Handler,), {"seen": self.seen})
        server_class = CountingHTTPServer6 if ":" in host else CountingHTTPServer
        self.loop = LoopbackServer(handler, host=host, server_class=server_class, tls=tls, poll_interval=0.02)
        self.httpd: Any = self.loop.httpd  # a CountingHTTPServer
        self.port = self.loop.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.loop.scheme}://{host}:{self.port}{path}"

    @property
    def connections(self) -> int:
        return self.httpd.connections

    def wait_finished(self, count: int) -> int:
        """The connections the client has hung up, once `count` of them have (or after 2 s)."""
        deadline = time.monotonic() + 2
        while self.httpd.finished < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return int(self.httpd.finished)


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    # Pooled connections must not outlive a test server (a later server could get the same port).
    close_pooled_connections()
    yield
    close_pooled_connections()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    with srv.loop:
        yield srv


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver must not be called for {host}")


def fixed(answers: dict[str, list[str]]) -> Resolver:
    return lambda host, port: list(answers.get(host, []))


@pytest.fixture
def dials(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every (address, port) the client connects to, in order; the connections themselves are real."""
    seen: list[tuple[str, int]] = []
    real = socket.create_connection

    def recording(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append((address[0], address[1]))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(lean_http.socket, "create_connection", recording)
    return seen


def idle_origins() -> list[Origin]:
    return list(lean_http.connection_pool().idle_origins())


# --- fetch_bytes over real loopback HTTP ---


def test_fetch_returns_body_and_type(server: Server) -> None:
    fetched = fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert (fetched.content, fetched.content_type, fetched.url) == (
        b"hello bytes",
        "image/png",
        server.url("/file"),
    )


def _media(server: Server, path: str, kind: str, max_bytes: int = 100_000) -> safe_http.FetchedFile:
    return fetch_bytes(
        server.url(path), resolver=no_dns, max_bytes=max_bytes, allow_loopback_http=True, media_kind=kind
    )


def test_a_media_download_reports_the_type_its_bytes_are(server: Server) -> None:
    assert _media(server, "/media/png", "image").content_type == "image/png"
    assert _media(server, "/media/png-generic", "image").content_type == "image/png"  # the bytes decide


@pytest.mark.parametrize(
    ("path", "kind", "why"),
    [
        ("/media/svg", "image", "served as image/svg+xml"),
        ("/media/html", "image", "served as text/html"),
        ("/media/html-as-png", "image", "bytes are text/html"),  # mislabelled
        ("/media/svg-as-octets", "image", "bytes are image/svg+xml"),
        ("/media/png", "video", "served as image/png"),  # an image where a video is needed
        ("/redirect-to?to=/media/svg", "image", "served as image/svg+xml"),  # after a redirect hop
    ],
)
def test_a_media_download_refuses_markup_mislabels_and_the_wrong_kind(
    server: Server, path: str, kind: str, why: str
) -> None:
    with pytest.raises(MediaRefused) as info:
        _media(server, path, kind)
    assert why in info.value.message


def test_a_refused_label_is_refused_before_the_body_is_read(server: Server) -> None:
    # The HTML page is larger than the cap: reading it would have failed on size, not on its type.
    with pytest.raises(MediaRefused):
        _media(server, "/media/html", "image", max_bytes=1000)
    with pytest.raises(UnsafeUrlError, match="larger"):
        _media(server, "/media/html-as-png", "image", max_bytes=1000)  # a plausible label: the cap still holds


def test_http_is_refused_without_the_development_setting(server: Server) -> None:
    with pytest.raises(UnsafeUrlError, match="HTTPS"):
        fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024)
    assert server.seen == []


def test_fetch_connects_to_the_pinned_address_and_keeps_the_host(server: Server) -> None:
    # Nothing on this machine resolves files.test, so success means the validated IP was used.
    url = server.url("/host", host="files.test")
    fetched = fetch_bytes(url, resolver=fixed({"files.test": ["127.0.0.1"]}), max_bytes=1024, allow_loopback_http=True)
    assert fetched.content == f"files.test:{server.port}".encode()
    assert fetched.url == url
    assert server.seen[0]["headers"]["Host"] == f"files.test:{server.port}"


def test_relative_redirect_is_followed_and_rechecked(server: Server) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if host == "files.test" else []

    fetched = fetch_bytes(
        server.url("/redirect", host="files.test"),
        resolver=resolver,
        max_bytes=1024,
        allow_loopback_http=True,
    )
    assert fetched.content == b"hello bytes"
    assert fetched.url == server.url("/file", host="files.test")
    assert calls == ["files.test", "files.test"]  # every hop resolved and checked again
    assert [hit["path"] for hit in server.seen] == ["/redirect", "/file"]


def test_redirect_to_metadata_is_refused_before_connecting(server: Server, dials: list[tuple[str, int]]) -> None:
    target = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(UnsafeUrlError, match="HTTPS"):
        fetch_bytes(server.url(f"/redirect-to?to={target}"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert dials == [("127.0.0.1", server.port)]
    assert len(server.seen) == 1


@pytest.mark.parametrize("status", ["301", "303", "307", "308"])
def test_redirect_to_a_name_with_a_private_answer_is_refused(
    server: Server, status: str, dials: list[tuple[str, int]]
) -> None:
    resolver = fixed({"internal.test": ["10.0.0.7"]})
    with pytest.raises(UnsafeUrlError):
        fetch_bytes(
            server.url(f"/redirect-to?status={status}&to=http://internal.test:{server.port}/file"),
            resolver=resolver,
            max_bytes=1024,
            allow_loopback_http=True,
        )
    assert dials == [("127.0.0.1", server.port)]


def test_redirect_without_location_fails(server: Server) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url("/redirect-bare"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert (info.value.status_code, info.value.transient) == (302, False)


def test_redirect_loop_stops_after_the_cap(server: Server) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url("/loop"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True, max_redirects=2)
    assert info.value.transient is False
    assert len(server.seen) == 3  # the first request plus two redirects


def test_announced_oversized_body_is_refused(server: Server) -> None:
    with pytest.raises(UnsafeUrlError, match="larger than 1000 bytes"):
        fetch_bytes(server.url("/big"), resolver=no_dns, max_bytes=1000, allow_loopback_http=True)
    assert (
        len(fetch_bytes(server.url("/big"), resolver=no_dns, max_bytes=10_000, allow_loopback_http=True).content)
        == 10_000
    )


def test_unannounced_oversized_body_is_cut_off(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(UnsafeUrlError, match="larger than 100000 bytes"):
        fetch_bytes(server.url("/big-unannounced"), resolver=no_dns, max_bytes=100_000, allow_loopback_http=True)
    assert time.monotonic() - started < 5


def test_server_error_is_transient(server: Server) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url("/unavailable"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert (info.value.status_code, info.value.transient, info.value.retry_after) == (503, True, 7.0)


def test_not_found_is_permanent(server: Server) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url("/missing"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert (info.value.status_code, info.value.transient) == (404, False)


def test_read_timeout_is_transient(server: Server) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url("/slow"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True, timeout=0.2)
    assert info.value.transient is True and info.value.status_code is None


def test_total_timeout_stops_a_dripping_body(server: Server) -> None:
    url = server.url("/drip")
    assert fetch_bytes(url, resolver=no_dns, max_bytes=1024, allow_loopback_http=True).content == b"d" * 10
    with pytest.raises(FetchError) as info:
        fetch_bytes(url, resolver=no_dns, max_bytes=1024, allow_loopback_http=True, total_timeout=0.2)
    assert info.value.transient is True


def test_connection_refused_is_transient() -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(f"http://127.0.0.1:{free_port()}/x", resolver=no_dns, max_bytes=10, allow_loopback_http=True)
    assert info.value.transient is True


# --- the per-process connection pool ---


def test_two_downloads_from_one_host_reuse_one_connection(server: Server) -> None:
    resolver = fixed({"files.test": ["127.0.0.1"]})
    for _ in range(3):
        fetched = fetch_bytes(
            server.url("/file", "files.test"), resolver=resolver, max_bytes=1024, allow_loopback_http=True
        )
        assert fetched.content == b"hello bytes"
    assert server.connections == 1
    assert len({hit["client_port"] for hit in server.seen}) == 1


def test_host_names_sharing_an_address_never_share_a_connection(server: Server) -> None:
    resolver = fixed({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    for host in ("a.test", "b.test", "a.test", "b.test"):
        fetched = fetch_bytes(server.url("/host", host), resolver=resolver, max_bytes=1024, allow_loopback_http=True)
        assert fetched.content == f"{host}:{server.port}".encode()
    assert server.connections == 2
    ports: dict[str, set[int]] = {}
    for hit in server.seen:
        ports.setdefault(hit["headers"]["Host"], set()).add(hit["client_port"])
    assert len(ports[f"a.test:{server.port}"]) == 1 and len(ports[f"b.test:{server.port}"]) == 1
    assert ports[f"a.test:{server.port}"].isdisjoint(ports[f"b.test:{server.port}"])
    assert sorted(idle_origins()) == [
        ("http", "127.0.0.1", server.port, "a.test"),
        ("http", "127.0.0.1", server.port, "b.test"),
    ]


def test_tls_context_is_created_once_per_process(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        created.append(real(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    resolver = fixed({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"], "c.test": ["127.0.0.1"]})
    for host in ("a.test", "b.test", "c.test", "a.test"):
        fetch_bytes(server.url("/file", host), resolver=resolver, max_bytes=1024, allow_loopback_http=True)
    post_json(server.url("/echo", "b.test"), b"{}", {}, resolver=resolver, allow_loopback_http=True)
    assert len(created) == 1
    context = shared_ssl_context()
    assert context is created[0] and shared_ssl_context() is context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


def test_redirect_hops_through_the_pool_are_each_checked(server: Server) -> None:
    calls: list[str] = []
    answers = {"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"], "internal.test": ["10.0.0.7"]}

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers.get(host, [])

    to_other = f"http://other.test:{server.port}/file"
    fetched = fetch_bytes(
        server.url(f"/redirect-to?to={to_other}", "files.test"),
        resolver=resolver,
        max_bytes=1024,
        allow_loopback_http=True,
    )
    assert fetched.url == to_other and fetched.content == b"hello bytes"
    assert calls == ["files.test", "other.test"]
    # Each hop went over its own host's connection, though both names pin to the same address.
    assert [hit["headers"]["Host"] for hit in server.seen] == [f"files.test:{server.port}", f"other.test:{server.port}"]
    assert server.connections == 2

    with pytest.raises(UnsafeUrlError):
        fetch_bytes(
            server.url(f"/redirect-to?to=http://internal.test:{server.port}/file", "files.test"),
            resolver=resolver,
            max_bytes=1024,
            allow_loopback_http=True,
        )
    assert calls[-2:] == ["files.test", "internal.test"]
    assert len(server.seen) == 3  # the refused hop never reached the server


def test_an_unread_body_does_not_poison_the_pooled_connection(server: Server) -> None:
    with pytest.raises(UnsafeUrlError, match="larger than 1000 bytes"):
        fetch_bytes(server.url("/big"), resolver=no_dns, max_bytes=1000, allow_loopback_http=True)
    # The 10,000 unread bytes would be read as the next response if that connection went back to the pool, so
    # it is closed at once.
    assert server.wait_finished(1) == 1
    assert fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True).content == (
        b"hello bytes"
    )
    assert server.connections == 2
    assert fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True).content == (
        b"hello bytes"
    )
    assert server.connections == 2  # a fully read response does return its connection


def test_a_refused_address_keeps_the_working_connection(server: Server, dials: list[tuple[str, int]]) -> None:
    # The server listens on 127.0.0.1 only, so 127.0.0.2 refuses and the next validated address is used.
    resolver = fixed({"files.test": ["127.0.0.2", "127.0.0.1"]})
    url = server.url("/file", "files.test")
    for _ in range(2):
        assert fetch_bytes(url, resolver=resolver, max_bytes=1024, allow_loopback_http=True).content == b"hello bytes"
    assert server.connections == 1
    # The refused address is tried first each time (it may be back), then the pooled connection is reused.
    assert dials == [("127.0.0.2", server.port), ("127.0.0.1", server.port), ("127.0.0.2", server.port)]
    assert idle_origins() == [("http", "127.0.0.1", server.port, "files.test")]


def test_no_more_than_three_addresses_are_tried(dials: list[tuple[str, int]]) -> None:
    port = free_port()
    resolver = fixed({"files.test": ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]})
    with pytest.raises(FetchError) as info:
        fetch_bytes(f"http://files.test:{port}/x", resolver=resolver, max_bytes=10, allow_loopback_http=True)
    assert info.value.transient is True and "ConnectError" in info.value.message
    assert dials == [(f"127.0.0.{n}", port) for n in (2, 3, 4)]


def test_pooled_clients_keep_no_cookies(server: Server) -> None:
    fetch_bytes(server.url("/set-cookie"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert server.connections == 1
    assert [hit["path"] for hit in server.seen] == ["/set-cookie", "/file"]
    assert "Cookie" not in server.seen[1]["headers"]


def test_the_pool_is_bounded_and_closes_what_it_evicts(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean_http, "MAX_ORIGINS", 2)
    resolver = fixed({name: ["127.0.0.1"] for name in ("a.test", "b.test", "c.test")})
    for host in ("a.test", "b.test", "a.test", "c.test"):
        fetch_bytes(server.url("/file", host), resolver=resolver, max_bytes=1024, allow_loopback_http=True)
    # b.test was least recently used: its idle connection is closed, a.test's is kept and reused.
    assert idle_origins() == [("http", "127.0.0.1", server.port, name) for name in ("a.test", "c.test")]
    assert server.connections == 3 and server.wait_finished(1) == 1
    close_pooled_connections()
    assert server.wait_finished(3) == 3


def test_a_response_in_flight_when_the_pool_closes_closes_its_connection_after(server: Server) -> None:
    origin = Origin("http", "127.0.0.1", server.port, "127.0.0.1")
    with lean_http.request("GET", origin, "/file", timeout=5) as response:
        close_pooled_connections()
        assert response.read() == b"hello bytes"  # the request itself is unaffected
    assert server.wait_finished(1) == 1  # and its connection did not go back into a closed pool
    assert fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True).content
    assert server.connections == 2


def test_a_pool_from_another_process_is_dropped_not_used(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    parent = lean_http.connection_pool()
    # Without an at-fork hook (which drops the pool in a forked child) the pid tells another process's pool.
    monkeypatch.setattr(lean_http, "_FORK_HOOK", False)
    monkeypatch.setattr(lean_http.os, "getpid", lambda: parent.pid + 1)
    child = lean_http.connection_pool()
    assert child is not parent and child.ssl_context is not parent.ssl_context
    assert child.idle_origins() == {} and len(parent.idle_origins()) == 1
    fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert server.connections == 2 and server.httpd.finished == 0  # the parent's socket was not closed
    monkeypatch.undo()
    parent.close()


def test_a_request_does_not_ask_for_the_pid(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # The at-fork hook keeps the pool per process; a getpid per request would be a system call per request.
    fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    monkeypatch.setattr(lean_http.os, "getpid", lambda: pytest.fail("getpid called"))
    for _ in range(2):
        fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert server.connections == 1


def test_a_forked_child_opens_its_own_connections(server: Server) -> None:
    url = server.url("/file")
    fetch_bytes(url, resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            inherited = lean_http._pool is not None
            ok = fetch_bytes(url, resolver=no_dns, max_bytes=1024, allow_loopback_http=True).content == b"hello bytes"
            code = 0 if ok and not inherited else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert server.connections == 2  # the child did not write into the parent's connection
    fetch_bytes(url, resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert server.connections == 2  # and the parent's connection still works


# --- HTTPS on loopback: one TLS session per host name ---


@pytest.fixture
def test_ca(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ssl.SSLContext, bytes]]:
    """A server context for a.test, b.test and hooks.test, and a client pool that trusts only its CA."""
    server_context, ca_pem = make_tls_server_context(["a.test", "b.test", "hooks.test"])
    monkeypatch.setattr(lean_http, "create_ssl_context", lambda: trusting(ca_pem))
    close_pooled_connections()
    yield server_context, ca_pem
    close_pooled_connections()


@pytest.fixture
def tls_server(test_ca: tuple[ssl.SSLContext, bytes]) -> Iterator[Server]:
    srv = Server(tls=test_ca[0])
    with srv.loop:
        yield srv


def test_https_host_names_sharing_an_address_each_get_their_own_tls_session(tls_server: Server) -> None:
    resolver = fixed({name: ["127.0.0.1"] for name in ("a.test", "b.test", "c.test")})
    for host in ("a.test", "b.test", "a.test", "b.test"):
        fetched = fetch_bytes(
            tls_server.url("/host", host), resolver=resolver, max_bytes=1024, allow_loopback_http=True
        )
        assert fetched.content == f"{host}:{tls_server.port}".encode()
    assert tls_server.connections == 2
    # Every request arrived on a TLS session opened (and verified) for its own host name.
    assert [(hit["sni"], hit["headers"]["Host"]) for hit in tls_server.seen] == [
        (host, f"{host}:{tls_server.port}") for host in ("a.test", "b.test", "a.test", "b.test")
    ]
    # c.test is not on the certificate: the live sessions for a.test and b.test at the same address are not used.
    with pytest.raises(FetchError) as info:
        fetch_bytes(tls_server.url("/host", "c.test"), resolver=resolver, max_bytes=1024, allow_loopback_http=True)
    assert info.value.transient is True
    assert len(tls_server.seen) == 4


# --- post_json over real loopback HTTP ---


def test_post_delivers_body_and_headers_to_the_pinned_address(server: Server) -> None:
    result = post_json(
        server.url("/echo", host="hooks.test"),
        b'{"event":"run.succeeded"}',
        {"webhook-id": "msg_1", "Host": "attacker.example"},
        resolver=fixed({"hooks.test": ["127.0.0.1"]}),
        allow_loopback_http=True,
    )
    assert result.status_code == 200 and result.retry_after is None
    echoed = json.loads(result.body_excerpt)
    assert echoed["body"] == '{"event":"run.succeeded"}'
    assert echoed["headers"]["Host"] == f"hooks.test:{server.port}"  # the caller cannot override Host
    assert echoed["headers"]["Content-Type"] == "application/json"
    assert echoed["headers"]["webhook-id"] == "msg_1"


def test_post_keeps_a_caller_content_type(server: Server) -> None:
    result = post_json(
        server.url("/echo"),
        b"{}",
        {"content-type": "application/cloudevents+json"},
        resolver=no_dns,
        allow_loopback_http=True,
    )
    assert json.loads(result.body_excerpt)["headers"]["content-type"] == "application/cloudevents+json"


def test_post_redirect_is_returned_not_followed(server: Server) -> None:
    result = post_json(server.url("/post-redirect"), b"{}", {}, resolver=no_dns, allow_loopback_http=True)
    assert (result.status_code, result.body_excerpt) == (302, "moved")
    assert [hit["path"] for hit in server.seen] == ["/post-redirect"]


def test_post_error_status_is_a_result_with_retry_after(server: Server) -> None:
    result = post_json(server.url("/post-busy"), b"{}", {}, resolver=no_dns, allow_loopback_http=True)
    assert (result.status_code, result.body_excerpt, result.retry_after) == (503, "try later", 7.0)


def test_post_response_body_is_capped(server: Server) -> None:
    result = post_json(server.url("/post-big"), b"{}", {}, resolver=no_dns, allow_loopback_http=True)
    assert result.body_excerpt == "é" * 2000


def test_post_to_a_private_address_never_connects(dials: list[tuple[str, int]]) -> None:
    with pytest.raises(UnsafeUrlError, match="public address"):
        post_json("https://hooks.example/cb", b"{}", {}, resolver=fixed({"hooks.example": ["10.1.2.3"]}))
    assert dials == []


def test_post_connection_refused_is_transient() -> None:
    with pytest.raises(FetchError) as info:
        post_json(f"http://127.0.0.1:{free_port()}/cb", b"{}", {}, resolver=no_dns, allow_loopback_http=True)
    assert info.value.transient is True


# --- HTTPS pinning: the validated address is dialled, the host name is sent (SNI, Host) and verified ---


def test_https_fetch_dials_the_ip_with_sni_and_host(tls_server: Server, dials: list[tuple[str, int]]) -> None:
    url = tls_server.url("/host?sig=1", "a.test")
    fetched = fetch_bytes(url, resolver=fixed({"a.test": ["127.0.0.1"]}), max_bytes=100, allow_loopback_http=True)
    assert fetched.content == f"a.test:{tls_server.port}".encode() and fetched.url == url
    assert dials == [("127.0.0.1", tls_server.port)]
    [hit] = tls_server.seen
    assert (hit["path"], hit["headers"]["Host"], hit["sni"]) == ("/host?sig=1", f"a.test:{tls_server.port}", "a.test")
    assert hit["headers"]["Accept-Encoding"] == "identity"


def test_https_ipv6_pin_keeps_the_port_and_the_host(test_ca: tuple[ssl.SSLContext, bytes]) -> None:
    srv = Server(tls=test_ca[0], host="::1")
    with srv.loop:
        result = post_json(
            f"https://hooks.test:{srv.port}/echo",
            b"{}",
            {},
            resolver=fixed({"hooks.test": ["::1"]}),
            allow_loopback_http=True,
        )
        assert result.status_code == 200
        [hit] = srv.seen
        assert (hit["method"], hit["body"], hit["sni"]) == ("POST", b"{}", "hooks.test")
        assert hit["headers"]["Host"] == f"hooks.test:{srv.port}"
        assert idle_origins() == [("https", "::1", srv.port, "hooks.test")]


def test_https_to_a_name_the_certificate_does_not_cover_fails(tls_server: Server) -> None:
    resolver = fixed({"evil.test": ["127.0.0.1"]})
    with pytest.raises(FetchError) as info:
        fetch_bytes(tls_server.url("/file", "evil.test"), resolver=resolver, max_bytes=100, allow_loopback_http=True)
    assert info.value.transient is True and "ConnectError" in info.value.message
    assert tls_server.seen == []


def test_https_downgrade_redirect_is_refused(tls_server: Server, dials: list[tuple[str, int]]) -> None:
    resolver = fixed({"a.test": ["127.0.0.1"], "cdn.test": ["93.184.216.34"]})
    with pytest.raises(UnsafeUrlError, match="HTTPS"):
        fetch_bytes(
            tls_server.url("/redirect-to?to=http://cdn.test/b", "a.test"),
            resolver=resolver,
            max_bytes=100,
            allow_loopback_http=True,
        )
    assert dials == [("127.0.0.1", tls_server.port)]


def test_cross_host_redirect_is_pinned_to_the_new_hosts_address(
    test_ca: tuple[ssl.SSLContext, bytes], dials: list[tuple[str, int]]
) -> None:
    first, second = Server(tls=test_ca[0]), Server(tls=test_ca[0], host="127.0.0.2")
    with first.loop, second.loop:
        to = f"https://b.test:{second.port}/host"
        resolver = fixed({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.2"]})
        fetched = fetch_bytes(
            first.url(f"/redirect-to?to={to}", "a.test"), resolver=resolver, max_bytes=100, allow_loopback_http=True
        )
    assert fetched.url == to and fetched.content == f"b.test:{second.port}".encode()
    assert dials == [("127.0.0.1", first.port), ("127.0.0.2", second.port)]
    assert [(hit["sni"], hit["headers"]["Host"]) for hit in first.seen + second.seen] == [
        ("a.test", f"a.test:{first.port}"),
        ("b.test", f"b.test:{second.port}"),
    ]


def test_https_connect_failure_moves_to_the_next_validated_address(
    tls_server: Server, dials: list[tuple[str, int]]
) -> None:
    resolver = fixed({"a.test": ["127.0.0.2", "127.0.0.1"]})
    fetched = fetch_bytes(tls_server.url("/file", "a.test"), resolver=resolver, max_bytes=100, allow_loopback_http=True)
    assert fetched.content == b"hello bytes"
    assert dials == [("127.0.0.2", tls_server.port), ("127.0.0.1", tls_server.port)]


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = parse_retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True))
    assert later is not None and 50 <= later <= 61
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0


def test_large_bodies_cross_tls_in_both_directions(tls_server: Server) -> None:
    """A body far larger than the socket buffers goes out over TLS in pieces (the non-blocking socket waits for room
    between them) and a large answer comes back in pieces, on a TLS session that also serves small requests."""
    resolver = fixed({"hooks.test": ["127.0.0.1"]})
    body = b'{"blob":"' + b"x" * 3_000_000 + b'"}'
    for _ in range(2):
        result = post_json(
            tls_server.url("/post-big", "hooks.test"), body, {}, resolver=resolver, allow_loopback_http=True, timeout=30
        )
        assert result.status_code == 200 and result.body_excerpt == "é" * safe_http.EXCERPT_CHARS
        assert tls_server.seen[-1]["body"] == body
        echoed = post_json(
            tls_server.url("/echo", "hooks.test"), b"{}", {}, resolver=resolver, allow_loopback_http=True
        )
        assert json.loads(echoed.body_excerpt)["body"] == "{}"
    fetched = fetch_bytes(
        tls_server.url("/host", "a.test"),
        resolver=fixed({"a.test": ["127.0.0.1"]}),
        max_bytes=1024,
        allow_loopback_http=True,
    )
    assert fetched.content == f"a.test:{tls_server.port}".encode()
