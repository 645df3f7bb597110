"""A lean HTTP/1.1 client for the engine's own outbound requests: provider calls, output downloads, callbacks.

httpx spent ~0.8 ms of CPU on each small request here, three times a plain stdlib request, and those requests were
most of a step executor's Python CPU. This client does only what the engine needs, on stdlib sockets:

- Requests go to an `Origin`: the address to dial (a validated IP, or a provider's host name), the port, and the
  host name, which is the TLS server name (SNI, and the name the certificate is verified against with the process's
  one TLS context) and the default `Host` header. The caller owns the URL checks; nothing here follows a redirect,
  uses a proxy, keeps a cookie or decompresses (`Accept-Encoding: identity` is always sent).
- Every socket operation (connect, TLS handshake, each write and each read) gets its own timeout, cut to what is
  left of `total_deadline()`, so a peer that trickles bytes cannot stretch a request past its deadline.
- A small request goes out in one write (head and body together): two writes on a TCP_NODELAY socket cost two
  packets, and two reads at the peer.
- Content-Length, chunked, and read-to-close bodies, read in pieces (`iter_bytes`) so a caller can stop at a cap.
- Keep-alive: one process-wide pool of idle connections per origin (a few per origin, each dropped after
  `IDLE_EXPIRY_SECONDS`, least recently used origins dropped past `MAX_ORIGINS`). A body read to its end returns
  its connection; anything else closes it. A pooled connection the peer closed is noticed before use; one that dies
  under a request before any byte of the answer arrived is replaced once by a fresh connection. The pool is thread
  safe and per process: a forked child starts with none of its parent's sockets.

The exception names are httpx's (they appear in step and delivery error messages). `trace_requests` installs a hook
around every request (X-Ray subsegments on AWS, see `babychain.observability`).
"""

from __future__ import annotations

import codecs
import functools
import json as jsonlib
import os
import re
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

import certifi

from babychain.security.deadline import time_left

CONNECT_TIMEOUT_SECONDS = 10.0
# Idle connections per origin and for how long: under common server idle timeouts (often 5-60 s).
MAX_IDLE_PER_ORIGIN = 4
IDLE_EXPIRY_SECONDS = 5.0
MAX_ORIGINS = 64
MAX_HEAD_BYTES = 64 * 1024  # a response's status line and headers
MAX_LINE_BYTES = 8 * 1024  # a chunk-size or trailer line
# A body up to this size goes out in the same write as the request head.
HOLD_BYTES = 16 * 1024
_RECV_BYTES = 64 * 1024
_SWEEP_SECONDS = 1.0

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
# A response's header lines, each `token ":" value` with no line break in the value (what `_header_lines` accepts
# line by line, minus obsolete folding).
_PLAIN_HEADER_BLOCK = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*)*")
_URL_SAFE = "/?:@!$&'()*+,;=-._~%"  # what stays as it is in a request target; the rest is percent-encoded
_CLEAN_TARGET = re.compile(r"[A-Za-z0-9/?:@!$&'()*+,;=\-._~%]*")
_NO_BODY_STATUSES = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


# ------------------------------------------------------------------------------------------------ errors


class HTTPError(Exception):
    """A request failed."""


class TransportError(HTTPError):
    """No complete answer: a network, TLS or protocol failure, or a timeout. A retry may help."""


class TimeoutException(TransportError):
    pass


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class NetworkError(TransportError):
    pass


class ConnectError(NetworkError):
    """Connecting failed (refused, unreachable, a name that does not resolve, a TLS handshake or certificate)."""


class ReadError(NetworkError):
    pass


class WriteError(NetworkError):
    pass


class ProtocolError(TransportError):
    pass


class LocalProtocolError(ProtocolError):
    """A request that cannot be sent as asked (a line break in a header, a space in the target)."""


class RemoteProtocolError(ProtocolError):
    """The peer's answer is not valid HTTP/1.1, or it hung up in the middle of it."""


class UnsupportedProtocol(TransportError):
    pass


class ResponseTooLarge(HTTPError):
    """A body larger than the reader's limit (not read further; its connection is closed)."""


class _Stale(Exception):
    """A reused connection died before any byte of the answer: the request can go again on a fresh one."""

    def __init__(self, error: TransportError) -> None:
        self.error = error


# ------------------------------------------------------------------------------------------------ origins, headers


class Origin(NamedTuple):
    """Where a request goes; the pool key (a connection serves one host name at one address)."""

    scheme: str  # "http" or "https"
    address: str  # what is dialled: a validated IP, or a host name the system resolves
    port: int
    server_name: str  # the host name: TLS SNI and certificate check, and the default Host header


class Headers(Mapping[str, str]):
    """Response headers, case-insensitive; a repeated header reads as its values joined with ", " (as httpx)."""

    __slots__ = ("_items", "_merged")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        merged = {name.lower(): value for name, value in items}
        if len(merged) < len(items):  # a repeated name: its values joined, in order
            merged = {}
            for name, value in items:
                key = name.lower()
                merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self._merged = merged

    def __getitem__(self, name: str) -> str:
        return self._merged[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._merged.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._merged

    def __iter__(self) -> Iterator[str]:
        return iter(self._merged)

    def __len__(self) -> int:
        return len(self._merged)

    def raw(self) -> list[tuple[str, str]]:
        """Every header line as received, in order."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@functools.lru_cache(maxsize=256)
def split_url(url: str) -> tuple[Origin, str, str]:
    """(origin dialled by host name, request target, Host header) of an http(s) URL; the caller checked the URL.

    Cached (a pure function of the string; a provider's submit URL is the same every time)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LocalProtocolError(f"Not a valid URL: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsupportedProtocol(f"Only http and https URLs are supported, not {scheme or 'none'}.")
    host = (parts.hostname or "").lower()
    if not host:
        raise LocalProtocolError("The URL has no host.")
    default = 443 if scheme == "https" else 80
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != default:
        netloc += f":{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if not _CLEAN_TARGET.fullmatch(target):
        target = quote(target, safe=_URL_SAFE)
    return Origin(scheme, host, port or default, host), target, netloc


def with_params(target: str, params: Mapping[str, str] | None) -> str:
    """The target with `params` added to its query string."""
    if not params:
        return target
    return target + ("&" if "?" in target else "?") + urlencode(params)


# Header names this process has sent, checked once each: name -> its lower-case form (bounded: names come from code).
_SENT_NAMES: dict[str, str] = {}
_SENT_NAMES_MAX = 256
_CLIENT_HEADERS = frozenset({"accept-encoding", "content-length", "transfer-encoding", "connection"})


def _request_head(
    method: str, origin: Origin, target: str, headers: Mapping[str, str] | None, body: bytes | None
) -> bytes:
    if not _TOKEN.fullmatch(method) or not target or _BAD_TARGET.search(target):
        raise LocalProtocolError("The request method or target is not valid.")
    lines = [f"{method} {target} HTTP/1.1\r\n", ""]
    host = _header_lines_out(headers, lines) if headers else None
    if host is None:
        host = f"[{origin.server_name}]" if ":" in origin.server_name else origin.server_name
        if origin.port != (443 if origin.scheme == "https" else 80):
            host += f":{origin.port}"
    lines[1] = f"Host: {host}\r\n"
    # Nothing here decompresses, and an identity body keeps size caps honest (no decompression bombs).
    lines.append("Accept-Encoding: identity\r\n")
    if body is not None or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body or b'')}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("A header holds characters that HTTP/1.1 cannot carry.") from None


def _header_lines_out(headers: Mapping[str, str], lines: list[str]) -> str | None:
    """Appends the caller's header lines (not the ones this client sets) to `lines`; returns its Host, if any."""
    host = None
    names = _SENT_NAMES
    for name, value in headers.items():
        lower = names.get(name)
        if lower is None:
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise LocalProtocolError(f"Header {name[:40]!r} is not valid.")
            lower = name.lower()
            if len(names) < _SENT_NAMES_MAX:
                names[name] = lower
        if lower == "host":
            host = value
        elif lower not in _CLIENT_HEADERS:
            lines.append(f"{name}: {value}\r\n")
    # One search over every value: a line break or NUL in any of them is found in their concatenation.
    if _BAD_VALUE.search("".join(headers.values())):
        bad = next(name for name, value in headers.items() if _BAD_VALUE.search(value))
        raise LocalProtocolError(f"Header {bad[:40]!r} is not valid.")
    return host


# ------------------------------------------------------------------------------------------------ connections


class _Connection:
    """One socket and the bytes read from it but not yet used."""

    __slots__ = ("buffer", "idle_since", "origin", "pool", "requests", "sock")

    def __init__(self, sock: socket.socket, origin: Origin, pool: _Pool) -> None:
        self.sock = sock
        self.origin = origin
        self.pool = pool
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.requests = 0  # requests sent on it so far

    # The socket is non-blocking (from the end of `_connect`): an operation that can go at once goes at once, and
    # only one that cannot waits (poll) for what is left of its timeout. A timeout socket would switch its mode (an
    # ioctl) at every settimeout and poll before every operation: two more system calls per read and per write.

    def send(self, data: bytes, timeout: float) -> None:
        time_left(timeout, WriteTimeout)  # past the total deadline, nothing more is written
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except (BlockingIOError, ssl.SSLWantWriteError):
                _wait(sock, select.POLLOUT, timeout, WriteTimeout, "The write timed out.")
            except ssl.SSLWantReadError:
                _wait(sock, select.POLLIN, timeout, WriteTimeout, "The write timed out.")
            except OSError as exc:
                raise WriteError(f"The write failed: {exc}.") from None

    def recv(self, timeout: float, *, wait_first: bool = False) -> bytes:
        """`wait_first`: an answer is not expected to be there yet (the first read after a request), so wait for it
        before reading rather than after a read that would find nothing."""
        time_left(timeout, ReadTimeout)  # past the total deadline, nothing more is read
        sock = self.sock
        if wait_first and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            _wait(sock, select.POLLIN, timeout, ReadTimeout, "The read timed out.")
        while True:
            try:
                return sock.recv(_RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError):
                _wait(sock, select.POLLIN, timeout, ReadTimeout, "The read timed out.")
            except ssl.SSLWantWriteError:
                _wait(sock, select.POLLOUT, timeout, ReadTimeout, "The read timed out.")
            except OSError as exc:
                raise ReadError(f"The read failed: {exc}.") from None

    def is_stale(self) -> bool:
        """An idle connection has nothing to read unless the peer closed it (or sent what nobody asked for)."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        # close(), never shutdown(): after a fork the parent may still be using this socket.
        self.buffer.clear()
        self.sock.close()


def _wait(sock: socket.socket, events: int, timeout: float, expired: type[TimeoutException], message: str) -> None:
    """Until `sock` is ready for `events`, at most `timeout` cut to the total deadline; then `expired`."""
    poller = select.poll()
    poller.register(sock, events)
    if not poller.poll(time_left(timeout, expired) * 1000):
        raise expired(message)


def create_ssl_context() -> ssl.SSLContext:
    """Verification on with the certifi bundle (no SSL_CERT_* overrides), HTTP/1.1 offered by ALPN."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def _connect(pool: _Pool, origin: Origin, connect_timeout: float) -> _Connection:
    try:
        sock = socket.create_connection((origin.address, origin.port), time_left(connect_timeout, ConnectTimeout))
    except TimeoutError:
        raise ConnectTimeout("Connecting timed out.") from None
    except OSError as exc:
        raise ConnectError(f"Connecting failed: {exc}.") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.scheme == "https":
            sock.settimeout(time_left(connect_timeout, ConnectTimeout))
            # The certificate is checked against the host name, whatever address was dialled.
            sock = pool.ssl_context.wrap_socket(sock, server_hostname=origin.server_name)
        sock.setblocking(False)  # see `_Connection.send`
    except TimeoutError:
        sock.close()
        raise ConnectTimeout("The TLS handshake timed out.") from None
    except OSError as exc:  # ssl.SSLError and certificate errors among them
        sock.close()
        raise ConnectError(f"The TLS handshake failed: {exc}.") from None
    except BaseException:
        sock.close()
        raise
    return _Connection(sock, origin, pool)


class _Pool:
    """This process's idle keep-alive connections per origin, and its TLS context."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        # Loading the CA bundle costs 15-30 ms of CPU, far more than the rest of a small request: once per process.
        self.ssl_context = create_ssl_context()
        self._lock = threading.Lock()
        self._idle: OrderedDict[Origin, list[_Connection]] = OrderedDict()
        self._closed = False
        self._swept = time.monotonic()

    def take(self, origin: Origin) -> _Connection | None:
        """The most recently used idle connection to `origin` that is still open, if any."""
        now = time.monotonic()
        drop: list[_Connection] = []
        conn = None
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                conn = idle.pop()
                if now - conn.idle_since > IDLE_EXPIRY_SECONDS:
                    drop, conn = [conn, *idle], None  # the others have been idle even longer
                    idle.clear()
                if not idle:
                    del self._idle[origin]
            if now - self._swept > _SWEEP_SECONDS:
                drop += self._expired(now)
        for old in drop:
            old.close()
        if conn is not None and conn.is_stale():
            conn.close()
            return None
        return conn

    def put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        drop: list[_Connection] = []
        with self._lock:
            if self._closed:
                drop.append(conn)
            else:
                idle = self._idle.get(conn.origin)
                if idle is None:
                    idle = self._idle[conn.origin] = []
                else:
                    self._idle.move_to_end(conn.origin)
                idle.append(conn)
                while len(idle) > MAX_IDLE_PER_ORIGIN:
                    drop.append(idle.pop(0))  # the longest idle goes
                if not idle:
                    del self._idle[conn.origin]
                while len(self._idle) > MAX_ORIGINS:
                    drop += self._idle.popitem(last=False)[1]
        for old in drop:
            old.close()

    def _expired(self, now: float) -> list[_Connection]:
        """Removes and returns connections idle past the expiry, everywhere (under the lock)."""
        self._swept = now
        expired: list[_Connection] = []
        for origin in list(self._idle):
            idle = self._idle[origin]
            fresh = [conn for conn in idle if now - conn.idle_since <= IDLE_EXPIRY_SECONDS]
            if len(fresh) < len(idle):
                expired += [conn for conn in idle if now - conn.idle_since > IDLE_EXPIRY_SECONDS]
                if fresh:
                    self._idle[origin] = fresh
                else:
                    del self._idle[origin]
        return expired

    def idle_origins(self) -> dict[Origin, int]:
        """Idle connections per origin, least recently used first (tests and benchmarks)."""
        with self._lock:
            return {origin: len(idle) for origin, idle in self._idle.items()}

    def close(self) -> None:
        """Close every idle connection; connections in use are closed when their response ends."""
        with self._lock:
            self._closed = True
            drop = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
        for conn in drop:
            conn.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def connection_pool() -> _Pool:
    """This process's pool, created on first use."""
    global _pool
    pool = _pool
    # The at-fork hook below drops the parent's pool in a child, so a set pool is this process's own without asking
    # for the pid (a getpid system call per request); where there is no such hook, the pid decides.
    if pool is not None and (_FORK_HOOK or pool.pid == os.getpid()):
        return pool
    with _pool_lock:
        # A pool built in another process (fork) is dropped, not closed: its sockets and TLS sessions are the
        # parent's, and closing them here would cut the parent's connections.
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool()
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()  # another thread may have held it at the fork


_FORK_HOOK = hasattr(os, "register_at_fork")
if _FORK_HOOK:
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def shared_ssl_context() -> ssl.SSLContext:
    """The process's TLS context for outbound requests (created once, on first use)."""
    return connection_pool().ssl_context


def close_pooled_connections() -> None:
    """Close every pooled connection (shutdown, tests); the next request starts a new pool and TLS context."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


# ------------------------------------------------------------------------------------------------ responses


class Response:
    """An answer with its head read. Read the body whole (`read`, then `content`, `text`, `json()`) or in pieces
    (`iter_bytes`); `close()` (or `with`) ends it: a body read to its end returns the connection to the pool."""

    def __init__(
        self, conn: _Connection, status_code: int, reason_phrase: str, headers: Headers, timeout: float
    ) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        self._conn: _Connection | None = conn
        self._timeout = timeout
        self._content: bytes | None = None
        self._length: int | None = None  # Content-Length framing; None for chunked or read-to-close
        self._chunked = False
        self._keep_alive = True

    # -------------------------------------------------------------------- the whole body

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise RuntimeError("The body has not been read; call read() first.")
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode(self._charset(), errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def read(self, limit: int | None = None) -> bytes:
        """The whole body; past `limit` bytes, ResponseTooLarge (an announced length is refused before reading)."""
        if self._content is None:
            if limit is not None and self._length is not None and self._length > limit:
                self.close()
                raise ResponseTooLarge(f"Response is larger than {limit} bytes.")
            pieces: list[bytes] = []
            size = 0
            for piece in self.iter_bytes():
                size += len(piece)
                if limit is not None and size > limit:
                    self.close()
                    raise ResponseTooLarge(f"Response is larger than {limit} bytes.")
                pieces.append(piece)
            self._content = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return self._content

    def _charset(self) -> str:
        for param in (self.headers.get("content-type") or "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset":
                charset = value.strip().strip('"')
                try:
                    return codecs.lookup(charset).name if charset else "utf-8"
                except LookupError:
                    break
        return "utf-8"

    # -------------------------------------------------------------------- the body in pieces

    def iter_bytes(self) -> Iterator[bytes]:
        """The body as it arrives (pieces of at most 64 KiB); the connection is returned once it has all come."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        conn = self._conn
        if conn is None:
            return
        try:
            if self._chunked:
                yield from self._chunked_body(conn)
            elif self._length is not None:
                yield from self._sized_body(conn, self._length)
            else:
                yield from self._body_to_close(conn)
        except TransportError:
            self.close()
            raise
        self._finish()

    def _sized_body(self, conn: _Connection, length: int) -> Iterator[bytes]:
        buffer = conn.buffer
        if buffer and length:
            piece = bytes(buffer[:length])
            del buffer[: len(piece)]
            length -= len(piece)
            yield piece
        while length:
            data = conn.recv(self._timeout)
            if not data:
                raise RemoteProtocolError("The peer closed the connection before the whole body arrived.")
            if len(data) > length:  # what follows: the next chunk's line, or (past a whole answer) junk
                buffer += data[length:]
                data = data[:length]
            length -= len(data)
            yield data

    def _chunked_body(self, conn: _Connection) -> Iterator[bytes]:
        while True:
            line = _read_line(conn, self._timeout)
            size_text = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_text):
                raise RemoteProtocolError("A chunk size is not valid.")
            size = int(size_text, 16)
            if size == 0:
                break
            yield from self._sized_body(conn, size)
            if _read_line(conn, self._timeout):
                raise RemoteProtocolError("A chunk does not end where its size says.")
        trailers = 0
        while line := _read_line(conn, self._timeout):  # trailer fields: read, not used, and not without end
            trailers += len(line)
            if trailers > MAX_HEAD_BYTES:
                raise RemoteProtocolError("The trailer fields are too large.")

    def _body_to_close(self, conn: _Connection) -> Iterator[bytes]:
        self._keep_alive = False
        if conn.buffer:
            piece = bytes(conn.buffer)
            conn.buffer.clear()
            yield piece
        while data := conn.recv(self._timeout):
            yield data

    # -------------------------------------------------------------------- the end

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep_alive and not conn.buffer:
            conn.pool.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """End the response; a body not read to its end closes the connection (its bytes would poison the next)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Response [{self.status_code} {self.reason_phrase}]>"


def _read_line(conn: _Connection, timeout: float) -> bytes:
    """One CRLF-ended line of a chunked body, without its line end."""
    buffer = conn.buffer
    end = buffer.find(b"\n")
    while end < 0:
        if len(buffer) > MAX_LINE_BYTES:
            raise RemoteProtocolError("A chunk line is too long.")
        data = conn.recv(timeout)
        if not data:
            raise RemoteProtocolError("The peer closed the connection before the whole body arrived.")
        start = len(buffer)
        buffer += data
        end = buffer.find(b"\n", start)
    line = bytes(buffer[:end])
    del buffer[: end + 1]
    return line.removesuffix(b"\r")


def _read_head(conn: _Connection, timeout: float, retry_ok: bool) -> tuple[str, int, str, list[tuple[str, str]]]:
    """(HTTP version, status, reason, header lines) of the next answer on `conn`."""
    buffer = conn.buffer
    end = buffer.find(b"\r\n\r\n")
    while end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise RemoteProtocolError("The response head is too large.")
        try:
            data = conn.recv(timeout, wait_first=not buffer)
        except ReadError as exc:
            if retry_ok and not buffer:
                raise _Stale(exc) from None
            raise
        if not data:
            error = RemoteProtocolError(
                "The peer closed the connection in the middle of the response head."
                if buffer
                else "Server disconnected without sending a response."
            )
            if retry_ok and not buffer:
                raise _Stale(error)
            raise error
        start = max(0, len(buffer) - 3)
        buffer += data
        end = buffer.find(b"\r\n\r\n", start)
    if end > MAX_HEAD_BYTES:
        raise RemoteProtocolError("The response head is too large.")
    head = buffer[:end].decode("latin-1")
    del buffer[: end + 4]
    status_line, _, block = head.partition("\r\n")
    version, status, reason = _status_line(status_line)
    if not block:
        return version, status, reason, []
    if _PLAIN_HEADER_BLOCK.fullmatch(block):  # every line a `name: value` (no folded line): split, nothing to judge
        items = [(name, value.strip(" \t")) for name, _, value in (line.partition(":") for line in block.split("\r\n"))]
        return version, status, reason, items
    return version, status, reason, _header_lines(block.split("\r\n"))


def _status_line(line: str) -> tuple[str, int, str]:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise RemoteProtocolError("The response does not start with an HTTP/1.x status line.")
    return version, int(code), reason.strip()


def _header_lines(lines: list[str]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and items:  # an obsolete folded line continues the previous value
            name, value = items[-1]
            items[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise RemoteProtocolError("A response header line is not valid.")
        items.append((name, value.strip(" \t")))
    return items


def _frame(response: Response, method: str, version: str) -> None:
    """How the body ends (RFC 9112 section 6.3) and whether the connection can serve another request."""
    headers = response.headers._merged  # lower-case names
    connection = headers.get("connection")
    response._keep_alive = version == "HTTP/1.1" and (
        connection is None or "close" not in (token.strip() for token in connection.lower().split(","))
    )
    if method == "HEAD" or response.status_code in _NO_BODY_STATUSES:
        response._length = 0
        return
    coding = headers.get("transfer-encoding")
    if coding is not None:
        response._chunked = coding.rsplit(",", 1)[-1].strip().lower() == "chunked"
        if not response._chunked:
            response._keep_alive = False  # read to close
        if "content-length" in headers:
            response._keep_alive = False  # both framings at once: this connection is not to be trusted again
        return
    declared = headers.get("content-length")
    if declared is None:
        response._keep_alive = False  # read to close
        return
    values = {value.strip() for value in declared.split(",")}
    value = values.pop()
    if values or not value.isdigit() or not value.isascii():
        raise RemoteProtocolError("The response's Content-Length is not valid.")
    response._length = int(value)


# ------------------------------------------------------------------------------------------------ requests


def _exchange(conn: _Connection, method: str, head: bytes, body: bytes | None, timeout: float) -> Response:
    """Send the request on `conn` and read the answer's head."""
    reused = conn.requests > 0
    conn.requests += 1
    try:
        if body and len(body) <= HOLD_BYTES:
            conn.send(head + body, timeout)  # one write, one packet for a small request
        else:
            conn.send(head, timeout)
            if body:
                conn.send(body, timeout)
    except WriteError as exc:
        if reused:
            raise _Stale(exc) from None
        raise
    retry_ok = reused
    while True:
        version, status, reason, items = _read_head(conn, timeout, retry_ok)
        if status >= 200:
            break
        if status == 101:
            raise RemoteProtocolError("The peer switched protocols, which was not asked for.")
        retry_ok = False  # an interim answer (100 Continue, 103 Early Hints): the request was received
    response = Response(conn, status, reason, Headers(items), timeout)
    _frame(response, method, version)
    if response._length == 0 and not response._chunked:
        response._content = b""
        response._finish()
    return response


# Called with the method and the URL without its query (signed URLs carry their credentials there); the context it
# returns wraps the request up to its answer's head, and is handed the status.
RequestTracer = Callable[[str, str], AbstractContextManager[Callable[[int], None]]]
_tracer: RequestTracer | None = None


def trace_requests(tracer: RequestTracer | None) -> None:
    """Wrap every request from now on in `tracer` (None: no tracing)."""
    global _tracer
    _tracer = tracer


def request(
    method: str,
    origin: Origin,
    target: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    *,
    timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> Response:
    """Send one request to `origin` and return its answer with the head read (the caller reads and closes the body).

    `timeout` bounds each write and read, `connect_timeout` the connect and TLS handshake; both are cut to what is
    left of `total_deadline()`. `headers` may set Host (default: the server name, and the port when not the
    scheme's); Accept-Encoding, Content-Length, Transfer-Encoding and Connection are this client's to set.
    """
    head = _request_head(method, origin, target, headers, body)
    tracer = _tracer
    if tracer is None:
        return _send(method, origin, head, body, timeout, connect_timeout)
    host = next((value for name, value in (headers or {}).items() if name.lower() == "host"), origin.server_name)
    with tracer(method, f"{origin.scheme}://{host}{target.split('?', 1)[0]}") as record_status:
        response = _send(method, origin, head, body, timeout, connect_timeout)
        record_status(response.status_code)
        return response


def _send(
    method: str, origin: Origin, head: bytes, body: bytes | None, timeout: float, connect_timeout: float
) -> Response:
    pool = connection_pool()
    conn = pool.take(origin)
    if conn is not None:
        try:
            return _exchange(conn, method, head, body, timeout)
        except _Stale:
            conn.close()  # the peer closed it while it sat idle: the request was not received, send it again
        except BaseException:
            conn.close()
            raise
    conn = _connect(pool, origin, connect_timeout)
    try:
        return _exchange(conn, method, head, body, timeout)
    except _Stale as stale:
        conn.close()
        raise stale.error from None
    except BaseException:
        conn.close()
        raise


def fetch(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    params: Mapping[str, str] | None = None,
    timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    max_bytes: int | None = None,
) -> Response:
    """One request to a URL dialled by its host name, its body read whole (at most `max_bytes`)."""
    origin, target, host = split_url(url)
    request_headers = {"Host": host, **(headers or {})}
    with request(
        method,
        origin,
        with_params(target, params),
        request_headers,
        body,
        timeout=timeout,
        connect_timeout=connect_timeout,
    ) as response:
        response.read(max_bytes)
    return response
