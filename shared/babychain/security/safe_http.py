"""SSRF-safe outbound HTTP for the engine's own requests (output downloads, caller input files, callbacks).

Every request goes to an address that `check_url` validated: the URL is rewritten to that IP, the original
`Host` header is kept, and for HTTPS the `sni_hostname` extension makes TLS send and verify the real hostname.
Redirects are never followed by httpx; `fetch_bytes` re-checks each `Location` itself, `post_json` returns the
3xx.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from babychain.errors import UnsafeUrlError
from babychain.security.urls import CheckedUrl, Resolver, check_url

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
    content_type: str
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

    # A fresh client per call: httpx pools connections by IP, and a pooled TLS connection keeps the SNI of the
    # request that opened it, so a shared pool could send one host's request over another host's session.
    # trust_env=False keeps proxy variables from routing around the pin.
    http = client or httpx.Client(trust_env=False, follow_redirects=False, timeout=httpx.Timeout(timeout))
    response: httpx.Response | None = None
    try:
        last_error: httpx.TransportError | None = None
        for address in checked.addresses[:_MAX_ADDRESS_ATTEMPTS]:
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
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc
        if response is None:
            raise last_error or FetchError("No address to connect to.", transient=True)
        yield response
    finally:
        if response is not None:
            response.close()
        if client is None:
            http.close()


def _read_capped(response: httpx.Response, limit: int, deadline: float | None, *, truncate: bool) -> bytes:
    """Read at most `limit` bytes; past it, stop quietly (`truncate`) or refuse the response."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if truncate and len(body) >= limit:
            return bytes(body[:limit])
        if len(body) > limit:
            raise UnsafeUrlError(f"Response is larger than {limit} bytes.")
        if deadline is not None and time.monotonic() > deadline:
            # Per-read timeouts alone let a server drip one byte at a time forever.
            raise httpx.ReadTimeout("The response took too long to arrive.")
    return bytes(body)


def _deadline(total_timeout: float | None) -> float | None:
    return None if total_timeout is None else time.monotonic() + total_timeout


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
) -> FetchedFile:
    """GET a file from a safe URL, re-checking every redirect hop and refusing bodies over `max_bytes`.

    `timeout` bounds each connect/read/write; `total_timeout`, when set, bounds the whole download.
    Raises UnsafeUrlError (unsafe URL or redirect target, oversized body) or FetchError (HTTP/network error).
    """
    deadline = _deadline(total_timeout)
    current = url
    try:
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
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise UnsafeUrlError(f"Response is larger than {max_bytes} bytes.")
                content = _read_capped(response, max_bytes, deadline, truncate=False)
                content_type = response.headers.get("content-type") or "application/octet-stream"
                return FetchedFile(content=content, content_type=content_type, url=current)
        raise FetchError(f"More than {max_redirects} redirects.")
    except httpx.TimeoutException as exc:
        raise FetchError("Download timed out.", transient=True) from exc
    except httpx.TransportError as exc:
        raise FetchError(f"Download failed: {exc.__class__.__name__}.", transient=True) from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"Download failed: {exc.__class__.__name__}.") from exc


def post_json(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    resolver: Resolver,
    timeout: float = 15.0,
    allow_loopback_http: bool = False,
    client: httpx.Client | None = None,
    total_timeout: float | None = None,
) -> PostResult:
    """POST a JSON body to a safe URL and report the response; any status (3xx included) is a result.

    Redirects are not followed: the caller decides that anything but 2xx is a failed delivery. Only the first
    64 KiB of the response body are read. Network failures and timeouts raise FetchError(transient=True).
    """
    checked = check_url(url, resolver=resolver, allow_loopback_http=allow_loopback_http)
    request_headers = dict(headers)
    if not any(name.lower() == "content-type" for name in request_headers):
        request_headers["Content-Type"] = "application/json"
    deadline = _deadline(total_timeout)
    try:
        with _pinned_stream(
            checked, "POST", client=client, timeout=timeout, headers=request_headers, content=body
        ) as response:
            raw = _read_capped(response, POST_RESPONSE_LIMIT, deadline, truncate=True)
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
