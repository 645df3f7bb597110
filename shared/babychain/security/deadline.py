"""A total deadline for outbound HTTP: connect, TLS, headers and body, even when the peer trickles bytes.

httpx's timeouts bound each socket operation, so a peer that sends one byte every few seconds never trips them and
an answer can take minutes. Connections made through `DeadlineTransport` shorten every socket operation to what is
left of the deadline set by `total_deadline()` in the running thread (a context variable), and fail the operation
once it has passed, so the request ends at its deadline whatever the peer does.

    with total_deadline(15.0):
        response = client.post(url, content=body)   # client = httpx.Client(transport=DeadlineTransport(...))
"""

from __future__ import annotations

import ssl
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpcore
import httpx

# The largest write held back to go out with the next one (a request head; small bodies join it).
_HOLD_BYTES = 16 * 1024

_deadline: ContextVar[float | None] = ContextVar("babychain_http_deadline", default=None)


@contextmanager
def total_deadline(seconds: float | None) -> Iterator[None]:
    """Every request made in this block ends within `seconds` of now (None: no deadline); nested blocks narrow it."""
    if seconds is None:
        yield
        return
    deadline = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    """The socket timeout for one operation: the caller's, cut to the time left; past the deadline, `expired`."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("The request passed its total deadline.")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every operation ends by the total deadline.

    It also sends a request's head and body in one write: httpcore writes them separately on a TCP_NODELAY socket,
    so a small POST costs two syscalls and two packets (and two reads at the peer). A write of at most
    `_HOLD_BYTES` is held until the next write or read (a GET's head goes out before its answer is read).
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._held = b""
        self._held_timeout: float | None = None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._held:
            self._send_held()
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._held:
            if len(buffer) > _HOLD_BYTES:
                self._send_held()  # a large body is not copied just to join the head
            else:
                buffer, self._held = self._held + buffer, b""
        elif len(buffer) <= _HOLD_BYTES:
            self._held, self._held_timeout = buffer, timeout
            return
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def _send_held(self) -> None:
        held, self._held = self._held, b""
        self._inner.write(held, _bounded(self._held_timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._held = b""
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's HTTP/1.1 transport, without proxies, over connections that honour `total_deadline()`."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # HTTPTransport takes no network backend, so its pool is rebuilt the way it builds it, with ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(),
        )
