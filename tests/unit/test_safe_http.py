"""safe_http against a real HTTP server on loopback, plus MockTransport checks for what cannot run locally."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from babychain.errors import UnsafeUrlError
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.media_types import MediaRefused
from babychain.security import safe_http
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


class Server:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        handler = type("BoundHandler", (Handler,), {"seen": self.seen})
        self.loop = LoopbackServer(handler, server_class=CountingHTTPServer, tls=tls, poll_interval=0.02)
        self.httpd: Any = self.loop.httpd  # a CountingHTTPServer
        self.port = self.loop.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.loop.scheme}://{host}:{self.port}{path}"

    @property
    def connections(self) -> int:
        return self.httpd.connections


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


class RecordingTransport(httpx.BaseTransport):
    """Real network I/O, but remembers every request that reached the transport (every connection use)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


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


def test_redirect_to_metadata_is_refused_before_connecting(server: Server) -> None:
    transport = RecordingTransport()
    target = "http://169.254.169.254/latest/meta-data/"
    with httpx.Client(transport=transport) as client, pytest.raises(UnsafeUrlError, match="HTTPS"):
        fetch_bytes(
            server.url(f"/redirect-to?to={target}"),
            resolver=no_dns,
            max_bytes=1024,
            allow_loopback_http=True,
            client=client,
        )
    assert [request.url.host for request in transport.requests] == ["127.0.0.1"]
    assert len(server.seen) == 1


@pytest.mark.parametrize("status", ["301", "303", "307", "308"])
def test_redirect_to_a_name_with_a_private_answer_is_refused(server: Server, status: str) -> None:
    transport = RecordingTransport()
    resolver = fixed({"internal.test": ["10.0.0.7"]})
    with httpx.Client(transport=transport) as client, pytest.raises(UnsafeUrlError):
        fetch_bytes(
            server.url(f"/redirect-to?status={status}&to=http://internal.test:{server.port}/file"),
            resolver=resolver,
            max_bytes=1024,
            allow_loopback_http=True,
            client=client,
        )
    assert len(transport.requests) == 1


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


# --- the per-process client pool ---


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
    assert sorted(safe_http._client_pool().cached_keys()) == [
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
    deadline = time.monotonic() + 2
    while server.httpd.finished == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.httpd.finished == 1
    assert fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True).content == (
        b"hello bytes"
    )
    assert server.connections == 2
    assert fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True).content == (
        b"hello bytes"
    )
    assert server.connections == 2  # a fully read response does return its connection


def test_a_refused_address_keeps_the_working_client(server: Server) -> None:
    # The server listens on 127.0.0.1 only, so 127.0.0.2 refuses and the next validated address is used.
    resolver = fixed({"files.test": ["127.0.0.2", "127.0.0.1"]})
    url = server.url("/file", "files.test")
    for _ in range(2):
        assert fetch_bytes(url, resolver=resolver, max_bytes=1024, allow_loopback_http=True).content == b"hello bytes"
    assert server.connections == 1
    assert ("http", "127.0.0.1", server.port, "files.test") in safe_http._client_pool().cached_keys()


def test_pooled_clients_keep_no_cookies(server: Server) -> None:
    fetch_bytes(server.url("/set-cookie"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    assert server.connections == 1
    assert [hit["path"] for hit in server.seen] == ["/set-cookie", "/file"]
    assert "Cookie" not in server.seen[1]["headers"]


def test_a_callers_client_is_used_as_is_and_not_closed(server: Server) -> None:
    transport = RecordingTransport()
    with httpx.Client(transport=transport) as client:
        fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True, client=client)
        assert not client.is_closed
        assert len(transport.requests) == 1
    assert safe_http._pool is None or safe_http._pool.cached_keys() == []


def test_the_pool_is_bounded_and_closes_what_it_evicts() -> None:
    pool = safe_http._ClientPool(size=2)
    try:
        keys = [("https", "93.184.216.34", 443, name) for name in ("a.example", "b.example", "c.example")]
        with pool.lease(keys[0]) as a:
            pass
        with pool.lease(keys[1]) as b:
            pass
        with pool.lease(keys[0]) as again:
            assert again is a
        with pool.lease(keys[2]):
            pass
        assert pool.cached_keys() == [keys[0], keys[2]]  # b was least recently used
        assert b.is_closed and not a.is_closed
    finally:
        pool.close()
    assert a.is_closed


def test_an_evicted_client_in_use_is_closed_only_after_its_request() -> None:
    pool = safe_http._ClientPool(size=1)
    try:
        with pool.lease(("https", "93.184.216.34", 443, "a.example")) as busy:
            with pool.lease(("https", "93.184.216.34", 443, "b.example")):
                pass
            assert not busy.is_closed  # evicted while another request was using it
        assert busy.is_closed
    finally:
        pool.close()
    with pool.lease(("https", "93.184.216.34", 443, "c.example")) as late:  # a request that raced close()
        assert not late.is_closed
    assert late.is_closed and pool.cached_keys() == []


def test_a_pool_from_another_process_is_dropped_not_used(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    fetch_bytes(server.url("/file"), resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    parent = safe_http._client_pool()
    monkeypatch.setattr(safe_http.os, "getpid", lambda: parent.pid + 1)
    child = safe_http._client_pool()
    assert child is not parent and child.ssl_context is not parent.ssl_context
    assert child.cached_keys() == [] and len(parent.cached_keys()) == 1
    with parent.lease(parent.cached_keys()[0]) as inherited:
        assert not inherited.is_closed  # not closed: its sockets belong to the other process
    monkeypatch.undo()
    parent.close()


def test_a_forked_child_opens_its_own_connections(server: Server) -> None:
    url = server.url("/file")
    fetch_bytes(url, resolver=no_dns, max_bytes=1024, allow_loopback_http=True)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            inherited = safe_http._pool is not None
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


def make_tls_server_context(names: list[str]) -> tuple[ssl.SSLContext, bytes]:
    """A server context for `names`, signed by a throwaway CA; returns (context, CA certificate PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "safe_http test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        with open(cert_path, "wb") as handle:
            handle.write(pem)
        with open(key_path, "wb") as handle:
            handle.write(key_pem)
        server_context.load_cert_chain(cert_path, key_path)

    def remember_sni(sock: Any, name: str | None, _context: ssl.SSLContext) -> None:
        sock.sni = name

    server_context.sni_callback = remember_sni
    return server_context, ca_cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def tls_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    server_context, ca_pem = make_tls_server_context(["a.test", "b.test"])

    def trusting_the_test_ca() -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=ca_pem.decode())
        context.set_alpn_protocols(["http/1.1"])
        return context

    monkeypatch.setattr(safe_http, "_create_ssl_context", trusting_the_test_ca)
    close_pooled_connections()
    srv = Server(tls=server_context)
    with srv.loop:
        yield srv
        close_pooled_connections()


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


def test_post_to_a_private_address_never_connects() -> None:
    transport = RecordingTransport()
    with httpx.Client(transport=transport) as client, pytest.raises(UnsafeUrlError, match="public address"):
        post_json(
            "https://hooks.example/cb",
            b"{}",
            {},
            resolver=fixed({"hooks.example": ["10.1.2.3"]}),
            client=client,
        )
    assert transport.requests == []


def test_post_connection_refused_is_transient() -> None:
    with pytest.raises(FetchError) as info:
        post_json(f"http://127.0.0.1:{free_port()}/cb", b"{}", {}, resolver=no_dns, allow_loopback_http=True)
    assert info.value.transient is True


# --- HTTPS pinning, observed at the transport ---


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.Client(transport=httpx.MockTransport(record)), seen


def test_https_fetch_targets_the_ip_with_sni_and_host() -> None:
    client, seen = mock_client(
        lambda request: httpx.Response(200, content=b"png", headers={"Content-Type": "image/png"})
    )
    fetched = fetch_bytes(
        "https://cdn.example/a.png?sig=1",
        resolver=fixed({"cdn.example": ["93.184.216.34"]}),
        max_bytes=10,
        client=client,
    )
    assert fetched.content == b"png" and fetched.url == "https://cdn.example/a.png?sig=1"
    (request,) = seen
    assert (request.url.scheme, request.url.host, request.url.raw_path) == (
        "https",
        "93.184.216.34",
        b"/a.png?sig=1",
    )
    assert request.headers["Host"] == "cdn.example"
    assert request.extensions["sni_hostname"] == "cdn.example"


def test_https_ipv6_pin_is_bracketed_and_keeps_the_port() -> None:
    client, seen = mock_client(lambda request: httpx.Response(204))
    result = post_json(
        "https://hooks.example:8443/cb",
        b"{}",
        {},
        resolver=fixed({"hooks.example": ["2606:4700::1"]}),
        client=client,
    )
    assert result.status_code == 204
    (request,) = seen
    assert request.url.host == "2606:4700::1" and request.url.port == 8443
    assert str(request.url).startswith("https://[2606:4700::1]:8443/cb")
    assert request.headers["Host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"
    assert request.method == "POST" and request.content == b"{}"


def test_plain_http_sets_no_sni() -> None:
    client, seen = mock_client(lambda request: httpx.Response(200, content=b"ok"))
    fetch_bytes("http://127.0.0.1:9/x", resolver=no_dns, max_bytes=10, allow_loopback_http=True, client=client)
    assert "sni_hostname" not in seen[0].extensions


def test_https_downgrade_redirect_is_refused() -> None:
    client, seen = mock_client(lambda request: httpx.Response(302, headers={"Location": "http://cdn.example/b"}))
    with pytest.raises(UnsafeUrlError, match="HTTPS"):
        fetch_bytes(
            "https://cdn.example/a",
            resolver=fixed({"cdn.example": ["93.184.216.34"]}),
            max_bytes=10,
            client=client,
        )
    assert len(seen) == 1


def test_cross_host_redirect_is_pinned_to_the_new_hosts_address() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Host"] == "a.example":
            return httpx.Response(302, headers={"Location": "https://b.example/final"})
        return httpx.Response(200, content=b"done")

    client, seen = mock_client(handler)
    resolver = fixed({"a.example": ["93.184.216.34"], "b.example": ["8.8.8.8"]})
    fetched = fetch_bytes("https://a.example/start", resolver=resolver, max_bytes=10, client=client)
    assert fetched.url == "https://b.example/final"
    assert [(r.url.host, r.headers["Host"], r.extensions["sni_hostname"]) for r in seen] == [
        ("93.184.216.34", "a.example", "a.example"),
        ("8.8.8.8", "b.example", "b.example"),
    ]


def test_connect_failure_moves_to_the_next_validated_address() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "2606:4700::1":
            raise httpx.ConnectError("network unreachable", request=request)
        return httpx.Response(200, content=b"v4")

    client, seen = mock_client(handler)
    resolver = fixed({"cdn.example": ["2606:4700::1", "93.184.216.34"]})
    assert fetch_bytes("https://cdn.example/", resolver=resolver, max_bytes=10, client=client).content == b"v4"
    assert [r.url.host for r in seen] == ["2606:4700::1", "93.184.216.34"]


def test_redirect_without_location_fails() -> None:
    client, _ = mock_client(lambda request: httpx.Response(302))
    with pytest.raises(FetchError) as info:
        fetch_bytes("https://cdn.example/", resolver=fixed({"cdn.example": ["8.8.8.8"]}), max_bytes=10, client=client)
    assert (info.value.status_code, info.value.transient) == (302, False)


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = parse_retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True))
    assert later is not None and 50 <= later <= 61
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0
