"""One loopback HTTP server helper: the local provider's server, the webhook receiver and the test stand-ins.

`LoopbackServer` owns the socket and the serving thread; `QuietHandler` is the request handler base with the send
helpers. A server keeps only its routes and protocol:

    class Echo(QuietHandler, keep_alive=True):
        def do_POST(self) -> None:
            self.send_bytes(200, self.read_body(), "application/octet-stream")

    with LoopbackServer(Echo) as server:
        httpx.post(server.url, content=b"hi")
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

MAX_BODY_BYTES = 64 * 1024 * 1024  # above the largest base64 input image a stand-in accepts (30 MiB raw)


class RequestRefused(Exception):
    """Raised by `read_body` after it has answered the request itself (400 or 413); `QuietHandler` swallows it."""


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and sends JSON or bytes with a Content-Length.

    `class H(QuietHandler, keep_alive=True)` speaks HTTP/1.1 with persistent connections. Nagle is off for every
    handler: with keep-alive, a response written in two segments (headers, body) otherwise waits on the client's
    delayed ACK, ~40 ms a request.
    """

    disable_nagle_algorithm = True

    def __init_subclass__(cls, keep_alive: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if keep_alive is not None:
            cls.protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # the servers' owners report what matters themselves
        pass

    def handle(self) -> None:
        # RequestRefused: read_body already answered. ConnectionError: the client hung up (a timeout test, a
        # cancelled download); neither is the server's fault, and socketserver would print a traceback for each.
        with contextlib.suppress(RequestRefused, ConnectionError):
            super().handle()

    def read_body(self, max_bytes: int = MAX_BODY_BYTES) -> bytes:
        """The request body per Content-Length (empty without one); refuses a bad or oversized length."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > max_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            status = 400 if length < 0 else 413
            self.send_json(status, {"error": {"code": "bad_request_body", "message": f"HTTP {status}"}})
            raise RequestRefused(status)
        return self.rfile.read(length) if length else b""

    def send_bytes(
        self, status: int, data: bytes = b"", content_type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """One whole response; `content_type` None sends no Content-Type (an empty 204, a redirect)."""
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(body).encode(), "application/json", headers)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port by default), served from a daemon thread.

    Use it directly with a handler class, or subclass it and pass the handler to `__init__`; `start()` returns the
    server, `stop()` shuts it down, and `with` does both. Request threads are daemons so a stuck client never holds
    up interpreter exit.
    """

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "loopback-server",
        poll_interval: float = 0.05,  # how long stop() may wait for the serving loop to notice
        server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.httpd = server_class((host, port), handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._serve_thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
        )

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Scheme, host and port, no trailing slash."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Where clients go; the base URL unless a server serves under a path."""
        return self.base_url

    def start(self) -> Self:
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        if self._serve_thread.is_alive():
            self.httpd.shutdown()  # blocks until the serving loop exits; it would hang if it never started
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
