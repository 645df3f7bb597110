"""SSRF-safe outbound HTTP for the engine's own requests (output downloads, caller input files, callbacks).

Every request goes to an address that `check_url` validated: `lean_http` dials that IP, the original `Host` header
is kept, and for HTTPS TLS sends and verifies the real host name. Redirects are never followed by the client;
`fetch_bytes` re-checks each `Location` itself, `post_json` returns the 3xx.

Connections are reused through `lean_http`'s per-process pool, keyed by (scheme, pinned IP, port, host name), and
every request shares its one TLS context.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from babychain.errors import UnsafeUrlError
from babychain.media_types import check_declared, check_media
from babychain.security import lean_http
from babychain.security.deadline import total_deadline
from babychain.security.lean_http import close_pooled_connections, shared_ssl_context
from babychain.security.urls import CheckedUrl, Resolver, check_url

__all__ = [
    "FetchError",
    "FetchedFile",
    "PostResult",
    "close_pooled_connections",
    "fetch_bytes",
    "parse_retry_after",
    "post_json",
    "shared_ssl_context",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
POST_RESPONSE_LIMIT = 64 * 1024
EXCERPT_CHARS = 2000
# Connect failures (no IPv6 route, refused) move on to the next validated address, but not forever.
_MAX_ADDRESS_ATTEMPTS = 3


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


def _pinned_stream(
    checked: CheckedUrl,
    method: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> lean_http.Response:
    """Send one request to a validated address of `checked`; no redirect following. The response streams its body:
    use it as a context manager (a body left unread closes its connection rather than returning it to the pool)."""
    # The target and Host come from the parse `check_url` validated, so what is sent is what was checked.
    request_headers = {name: value for name, value in (headers or {}).items() if name.lower() != "host"}
    request_headers["Host"] = checked.netloc

    last_error: lean_http.TransportError | None = None
    for address in checked.addresses[:_MAX_ADDRESS_ATTEMPTS]:
        # One pool key per (scheme, pinned IP, port, host name): a pooled TLS connection keeps the SNI and the
        # certificate check of the request that opened it, so it only ever serves that host name at that address.
        origin = lean_http.Origin(checked.scheme, address, checked.port, checked.host)
        try:
            return lean_http.request(
                method, origin, checked.target, request_headers, content, timeout=timeout, connect_timeout=timeout
            )
        except (lean_http.ConnectError, lean_http.ConnectTimeout) as exc:
            last_error = exc
    raise last_error or FetchError("No address to connect to.", transient=True)


def _read_capped(response: lean_http.Response, limit: int, *, truncate: bool) -> bytes:
    """Read at most `limit` bytes; past it, stop quietly (`truncate`) or refuse the response."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if truncate and len(body) >= limit:
            return bytes(body[:limit])
        if len(body) > limit:
            raise UnsafeUrlError(f"Response is larger than {limit} bytes.")
    return bytes(body)


def _read_file(response: lean_http.Response, url: str, max_bytes: int, media_kind: str | None) -> FetchedFile:
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
            return _fetch(url, resolver, max_bytes, timeout, allow_loopback_http, max_redirects, media_kind)
    except lean_http.TimeoutException as exc:
        raise FetchError("Download timed out.", transient=True) from exc
    except lean_http.TransportError as exc:
        raise FetchError(f"Download failed: {exc.__class__.__name__}.", transient=True) from exc
    except lean_http.HTTPError as exc:
        raise FetchError(f"Download failed: {exc.__class__.__name__}.") from exc


def _fetch(
    url: str,
    resolver: Resolver,
    max_bytes: int,
    timeout: float,
    allow_loopback_http: bool,
    max_redirects: int,
    media_kind: str | None,
) -> FetchedFile:
    current = url
    for _hop in range(max_redirects + 1):
        checked = check_url(current, resolver=resolver, allow_loopback_http=allow_loopback_http)
        with _pinned_stream(checked, "GET", timeout=timeout) as response:
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
            _pinned_stream(checked, "POST", timeout=timeout, headers=request_headers, content=body) as response,
        ):
            raw = _read_capped(response, POST_RESPONSE_LIMIT, truncate=True)
            return PostResult(
                status_code=response.status_code,
                body_excerpt=raw.decode("utf-8", errors="replace")[:EXCERPT_CHARS],
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
    except lean_http.TimeoutException as exc:
        raise FetchError("Request timed out.", transient=True) from exc
    except lean_http.TransportError as exc:
        raise FetchError(f"Request failed: {exc.__class__.__name__}.", transient=True) from exc
    except lean_http.HTTPError as exc:
        raise FetchError(f"Request failed: {exc.__class__.__name__}.") from exc
