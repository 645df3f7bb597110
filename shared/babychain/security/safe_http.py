"""SSRF-safe outbound HTTP for the engine's own requests (output downloads, caller input files, callbacks).

Every request goes to an address that `check_url` validated: the URL is rewritten to that IP, the original
`Host` header is kept, and for HTTPS the `sni_hostname` extension makes TLS send and verify the real hostname.
Redirects are never followed by httpx; `fetch_bytes` re-checks each `Location` itself, `post_json` returns the
3xx.

Connections are reused through a small per-process cache of clients keyed by (scheme, pinned IP, port, host
name). A pooled TLS connection keeps the SNI and certificate check of the request that opened it, so one client
(and so one connection pool) only ever serves one host name at one validated address. All clients share one TLS
context: loading the CA bundle costs 15-30 ms of CPU, far more than the rest of a small download.
"""

from __future__ import annotations

import email.utils
import os
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from babychain.errors import UnsafeUrlError
from babychain.media_types import check_declared, check_media
from babychain.security.deadline import DeadlineTransport, total_deadline
from babychain.security.urls import CheckedUrl, Resolver, check_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
POST_RESPONSE_LIMIT = 64 * 1024
EXCERPT_CHARS = 2000
# Connect failures (no IPv6 route, refused) move on to the next validated address, but not forever.
_MAX_ADDRESS_ATTEMPTS = 3
# Pooled clients per process; one per (scheme, pinned IP, port, host name), least recently used evicted first.
CLIENT_CACHE_SIZE = 64
# Few idle sockets per host; the 5 s expiry is httpx's default and stays under common server idle timeouts.
_POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=4, keepalive_expiry=5.0)


class FetchError(Exception):
    """An outbound request failed. `transient` (408, 429, 5xx, timeouts, network errors): a retry may help."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.transient = transient
        self.retry_after = retry_after


@dataclass
class FetchedFile:
    content: bytes
    content_type: str  # as served; with `media_kind`, the media type its bytes were checked to be
    url: str  # the final URL after redirects, as the server named it (not the pinned IP)


@dataclass
class PostResult:
    status_code: int
    body_excerpt: str  # at most EXCERPT_CHARS characters of the response body
    retry_after: float | None


def is_transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _create_ssl_context() -> ssl.SSLContext:
    # What httpx builds for Client(trust_env=False): verification on, the certifi bundle, no SSL_CERT_* overrides.
    context = httpx.create_ssl_context(verify=True, trust_env=False)
    # httpcore sets this on every connect; setting it now means the shared context never changes value.
    context.set_alpn_protocols(["http/1.1"])
    return context


_PoolKey = tuple[str, str, int, str]  # scheme, pinned IP, port, host name (the SNI for https)


class _PooledClient:
    __slots__ = ("client", "evicted", "users")

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.users = 0
        self.evicted = False


class _ClientPool:
    """A bounded LRU of httpx clients for one process, all sharing one TLS context."""

    def __init__(self, size: int = CLIENT_CACHE_SIZE) -> None:
        self.pid = os.getpid()
        self.ssl_context = _create_ssl_context()
        self._size = size
        self._lock = threading.Lock()
        self._clients: OrderedDict[_PoolKey, _PooledClient] = OrderedDict()
        self._closed = False

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            # No proxies (proxy variables must not route around the pin); total_deadline() bounds each request.
            transport=DeadlineTransport(self.ssl_context, _POOL_LIMITS),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(30.0),  # every request passes its own timeout
            # A long-lived client would keep Set-Cookie values and send them on other runs' requests.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    @contextmanager
    def lease(self, key: _PoolKey) -> Iterator[httpx.Client]:
        """The client for `key`; an evicted client is closed only once no request is using it."""
        to_close: list[httpx.Client] = []
        with self._lock:
            entry = self._clients.get(key)
            if entry is None:
                entry = _PooledClient(self._new_client())
                if self._closed:
                    entry.evicted = True  # a request racing close(): a one-off client, closed after use
                else:
                    self._clients[key] = entry
                while len(self._clients) > self._size:
                    _, old = self._clients.popitem(last=False)
                    old.evicted = True
                    if old.users == 0:
                        to_close.append(old.client)
            else:
                self._clients.move_to_end(key)
            entry.users += 1
        for stale in to_close:
            stale.close()
        try:
            yield entry.client
        finally:
            with self._lock:
                entry.users -= 1
                close_now = entry.evicted and entry.users == 0
            if close_now:
                entry.client.close()

    def cached_keys(self) -> list[_PoolKey]:
        with self._lock:
            return list(self._clients)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entries = list(self._clients.values())
            self._clients.clear()
            idle = []
            for entry in entries:
                entry.evicted = True
                if entry.users == 0:
                    idle.append(entry.client)
        for client in idle:
            client.close()


_pool: _ClientPool | None = None
_pool_lock = threading.Lock()


def _client_pool() -> _ClientPool:
    """This process's pool, created on first use."""
    global _pool
    pool = _pool
    if pool is not None and pool.pid == os.getpid():
        return pool
    with _pool_lock:
        # A pool built in another process (fork) is dropped, not closed: its sockets and TLS sessions are the
        # parent's, and closing them here would cut the parent's connections.
        if _pool is None or _pool.pid != os.getpid():
            _pool = _ClientPool()
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def shared_ssl_context() -> ssl.SSLContext:
    """The process's TLS context for outbound requests (created once, on first use)."""
    return _client_pool().ssl_context


def close_pooled_connections() -> None:
    """Close every pooled client (shutdown, tests); the next request starts a new pool and TLS context."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


def _client_for(client: httpx.Client | None, checked: CheckedUrl, address: str) -> AbstractContextManager[httpx.Client]:
    if client is not None:
        return nullcontext(client)  # the caller's client: used as-is, never closed here
    return _client_pool().lease((checked.scheme, address, checked.port, checked.host))


@contextmanager
def _pinned_stream(
    checked: CheckedUrl,
    method: str,
    *,
    client: httpx.Client | None,
    timeout: float,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> Iterator[httpx.Response]:
    """Send one request to a validated address of `checked` and stream the response; no redirect following."""
    target = httpx.URL(checked.url)
    request_headers = {name: value for name, value in (headers or {}).items() if name.lower() != "host"}
    request_headers["Host"] = target.netloc.decode("ascii")
    # Media is not worth compressing, and an identity body keeps size caps honest (no decompression bombs).
    request_headers.setdefault("Accept-Encoding", "identity")
    extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}

    last_error: httpx.TransportError | None = None
    for address in checked.addresses[:_MAX_ADDRESS_ATTEMPTS]:
        with _client_for(client, checked, address) as http:
            request = http.build_request(
                method,
                target.copy_with(host=address),  # httpx brackets IPv6 addresses itself
                headers=request_headers,
                content=content,
                timeout=httpx.Timeout(timeout),
                extensions=extensions,
            )
            try:
                response = http.send(request, stream=True, follow_redirects=False)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc
                continue
            try:
                yield response
            finally:
                # A body left unread makes httpcore close that connection rather than return it to the pool.
                response.close()
            return
    raise last_error or FetchError("No address to connect to.", transient=True)


def _read_capped(response: httpx.Response, limit: int, *, truncate: bool) -> bytes:
    """Read at most `limit` bytes; past it, stop quietly (`truncate`) or refuse the response."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if truncate and len(body) >= limit:
            return bytes(body[:limit])
        if len(body) > limit:
            raise UnsafeUrlError(f"Response is larger than {limit} bytes.")
    return bytes(body)


def _read_file(response: httpx.Response, url: str, max_bytes: int, media_kind: str | None) -> FetchedFile:
    """The body of a 2xx download: within `max_bytes`, and the media `media_kind` needs when it is set."""
    label = response.headers.get("content-type")
    if media_kind is not None:
        check_declared(label, media_kind)  # before the body: an HTML page is not worth downloading
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise UnsafeUrlError(f"Response is larger than {max_bytes} bytes.")
    content = _read_capped(response, max_bytes, truncate=False)
    content_type = check_media(content, label, media_kind) if media_kind is not None else label
    return FetchedFile(content=content, content_type=content_type or "application/octet-stream", url=url)


def fetch_bytes(
    url: str,
    *,
    resolver: Resolver,
    max_bytes: int,
    timeout: float = 30.0,
    allow_loopback_http: bool = False,
    max_redirects: int = 3,
    client: httpx.Client | None = None,
    total_timeout: float | None = None,
    media_kind: str | None = None,
) -> FetchedFile:
    """GET a file from a safe URL, re-checking every redirect hop and refusing bodies over `max_bytes`.

    `timeout` bounds each connect/read/write; `total_timeout`, when set, bounds the whole download, redirects
    included, however the server paces its bytes. `media_kind` ("image" or "video") says what the file must be: a
    Content-Type that names anything else is refused before the body is read, and the body's magic bytes must be one
    of that kind's types and agree with the label. Raises UnsafeUrlError (unsafe URL or redirect target, oversized
    body), MediaRefused (not the media the step needs) or FetchError (HTTP/network error, timeout).
    """
    try:
        with total_deadline(total_timeout):
            return _fetch(url, resolver, max_bytes, timeout, allow_loopback_http, max_redirects, client, media_kind)
    except httpx.TimeoutException as exc:
        raise FetchError("Download timed out.", transient=True) from exc
    except httpx.TransportError as exc:
        raise FetchError(f"Download failed: {exc.__class__.__name__}.", transient=True) from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"Download failed: {exc.__class__.__name__}.") from exc


def _fetch(
    url: str,
    resolver: Resolver,
    max_bytes: int,
    timeout: float,
    allow_loopback_http: bool,
    max_redirects: int,
    client: httpx.Client | None,
    media_kind: str | None,
) -> FetchedFile:
    current = url
    for _hop in range(max_redirects + 1):
        checked = check_url(current, resolver=resolver, allow_loopback_http=allow_loopback_http)
        with _pinned_stream(checked, "GET", client=client, timeout=timeout) as response:
            status = response.status_code
            if status in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise FetchError(f"Redirect {status} has no Location header.", status_code=status)
                try:
                    current = str(httpx.URL(current).join(location))
                except httpx.InvalidURL as exc:
                    raise UnsafeUrlError("Redirect target is not a valid URL.") from exc
                continue
            if not 200 <= status < 300:
                raise FetchError(
                    f"Download failed with HTTP {status}.",
                    status_code=status,
                    transient=is_transient_status(status),
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                )
            return _read_file(response, current, max_bytes, media_kind)
    raise FetchError(f"More than {max_redirects} redirects.")


def post_json(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    resolver: Resolver,
    timeout: float = 15.0,
    allow_loopback_http: bool = False,
    client: httpx.Client | None = None,
) -> PostResult:
    """POST a JSON body to a safe URL and report the response; any status (3xx included) is a result.

    `timeout` is the whole request's deadline: connecting, sending, and reading the answer, however the receiver
    paces it. Redirects are not followed: the caller decides that anything but 2xx is a failed delivery. Only the
    first 64 KiB of the response body are read. Network failures and timeouts raise FetchError(transient=True).
    """
    checked = check_url(url, resolver=resolver, allow_loopback_http=allow_loopback_http)
    request_headers = dict(headers)
    if not any(name.lower() == "content-type" for name in request_headers):
        request_headers["Content-Type"] = "application/json"
    try:
        with (
            total_deadline(timeout),
            _pinned_stream(
                checked, "POST", client=client, timeout=timeout, headers=request_headers, content=body
            ) as response,
        ):
            raw = _read_capped(response, POST_RESPONSE_LIMIT, truncate=True)
            return PostResult(
                status_code=response.status_code,
                body_excerpt=raw.decode("utf-8", errors="replace")[:EXCERPT_CHARS],
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
    except httpx.TimeoutException as exc:
        raise FetchError("Request timed out.", transient=True) from exc
    except httpx.TransportError as exc:
        raise FetchError(f"Request failed: {exc.__class__.__name__}.", transient=True) from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"Request failed: {exc.__class__.__name__}.") from exc
