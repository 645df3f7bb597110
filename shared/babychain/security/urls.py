"""URL safety: which URLs the engine may fetch, hand to a provider, or post a callback to.

A URL is safe when it is HTTPS, carries no credentials, and its host resolves only to public addresses. The
resolver is always a parameter: callers pass `system_resolver` in production and fixed answers in tests, and
`safe_http` connects to exactly the addresses validated here (DNS rebinding cannot swap them afterwards).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from babychain.errors import UnsafeUrlError

Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
DNS_TIMEOUT_SECONDS = 5.0

_IPV4_BLOCKED = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", includes the unspecified address
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT; Alibaba's metadata service sits at 100.100.100.200
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local; the cloud metadata service at 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.31.196.0/24",  # AS112
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "192.175.48.0/24",  # AS112 direct delegation
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    )
)

# Only global unicast (2000::/3) can be public. Everything outside it (::, ::1, IPv4-compatible ::/96, NAT64
# 64:ff9b::/96, discard 100::/64, ULA fc00::/7, link-local fe80::/10, multicast ff00::/8) is refused by that.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV6_BLOCKED = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4 embeds an arbitrary IPv4 address
        "2620:4f:8000::/48",  # AS112
        "3fff::/16",  # documentation (RFC 9637)
        "64:ff9b::/96",  # NAT64 (already outside 2000::/3; listed so the intent is explicit)
        "64:ff9b:1::/48",  # local-use NAT64
    )
)

_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")

# Whitespace, control characters and backslashes make URL parsers disagree (WHATWG reads `\` as `/`), so a
# provider could read a different host than we checked. Refuse them rather than guess.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*")
# A last label that is all digits or 0x-hex makes browsers and inet_aton read the host as an IPv4 number
# (`2130706433`, `0x7f.1`, `127.1`, `0177.0.0.1`); only the canonical dotted quad is accepted.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
# The URLs the engine meets most (provider outputs, its own artifact URLs) in a form whose parse is plain: lower-case
# scheme and host, a port without leading zeros, path segments and a query of unreserved characters only (no `%`, no
# dot segments, no empty segments), no userinfo, no fragment. httpx reads such a URL as it is written (tests compare
# every part), so it is split here by one match; anything else goes to httpx's parser (~60 µs a URL).
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9_-]+(?:\.[a-z0-9_-]+)*)(?::([1-9][0-9]{0,4}))?"
    r"((?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?)(\?[A-Za-z0-9._~=&-]+)?"
)
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Verdicts on an address string are pure functions of it: kept for the addresses seen most (a provider's and the
# artifact store's hosts answer with the same few).
_VERDICTS_CACHED = 1024


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed `check_url`, with the addresses it may be fetched from (in resolver order)."""

    url: str
    scheme: str
    host: str  # lower-case ASCII (IDNA), no brackets, no trailing dot
    port: int
    addresses: tuple[str, ...]
    # What the request sends, from the same parse that was checked: the request target (path and query) and the
    # Host header (host as written, and the port when it is not the scheme's).
    target: str = "/"
    netloc: str = ""


def system_resolver(host: str, port: int, timeout: float = DNS_TIMEOUT_SECONDS) -> list[str]:
    """All unique addresses `getaddrinfo` returns for host; an error or hung lookup gives [] (fail closed)."""
    result: list[str] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError):
            return
        for info in infos:
            address = str(info[4][0])
            if address not in result:
                result.append(address)

    # getaddrinfo cannot be cancelled; a daemon thread lets a hung lookup fail closed without blocking us.
    thread = threading.Thread(target=lookup, name="babychain-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return []
    return list(result)


def _parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(ip, str) or "%" in ip:  # scoped IPv6 addresses are link-local by nature
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # `::ffff:a.b.c.d` reaches the IPv4 host, so judge it as that host
    return address


def is_public_address(ip: str) -> bool:
    """True only for a globally routable unicast address; anything unparseable is not public."""
    return isinstance(ip, str) and _is_public(str(ip))  # str(): a subclass is cached as the text it holds


@functools.lru_cache(maxsize=_VERDICTS_CACHED)
def _is_public(ip: str) -> bool:
    address = _parse_ip(ip)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        if any(address in net for net in _IPV4_BLOCKED):
            return False
    else:
        if address not in _IPV6_GLOBAL_UNICAST or any(address in net for net in _IPV6_BLOCKED):
            return False
    # Belt and braces: the standard library's own registry view must agree.
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def is_loopback_address(ip: str) -> bool:
    """127.0.0.0/8 or ::1 only (the development runner's addresses); mapped forms are not accepted."""
    return isinstance(ip, str) and _is_loopback(str(ip))


@functools.lru_cache(maxsize=_VERDICTS_CACHED)
def _is_loopback(ip: str) -> bool:
    if "%" in ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address in _LOOPBACK_V4
    return address == _LOOPBACK_V6


def _is_blocked_name(host: str) -> bool:
    return host in ("localhost", "metadata.google.internal") or host.endswith(".localhost")


class _Refused(Exception):
    """Why a URL is refused; `check_url` turns it into UnsafeUrlError with the caller's field."""


def check_url(
    url: str, *, resolver: Resolver, allow_loopback_http: bool = False, field: str | None = None
) -> CheckedUrl:
    """Validate url and resolve its host; raise UnsafeUrlError unless every address is allowed.

    `allow_loopback_http` is the development setting: it also admits `http` URLs whose host resolves only to
    loopback, and loopback answers for `https`. Other private ranges stay blocked either way.
    """
    try:
        scheme, host, port, target, netloc = _parse(url, allow_loopback_http)
        addresses = _literal_addresses(host, allow_loopback_http)
        if addresses is None:
            addresses = _resolve(host, port, resolver)
        for address in addresses:
            _check_address(address, scheme, allow_loopback_http)
    except _Refused as refused:
        raise UnsafeUrlError(str(refused), field) from None
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=addresses, target=target, netloc=netloc)


def check_url_form(url: str, *, allow_loopback_http: bool = False, field: str | None = None) -> None:
    """Everything `check_url` decides without asking DNS: scheme, credentials, length, characters, host syntax,
    and the address of an IP literal. A host name passes here; `check_url` resolves it and judges every answer."""
    try:
        scheme, host, _port, _target, _netloc = _parse(url, allow_loopback_http)
        for address in _literal_addresses(host, allow_loopback_http) or ():
            _check_address(address, scheme, allow_loopback_http)
    except _Refused as refused:
        raise UnsafeUrlError(str(refused), field) from None


def _parse(url: str, allow_loopback_http: bool) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, request target, Host header) of a URL that is well-formed, credential-free and HTTPS
    (or HTTP if allowed)."""
    if not isinstance(url, str) or not url:
        raise _Refused("URL must be a valid URL.")
    if len(url) > MAX_URL_LENGTH:
        raise _Refused(f"URL is longer than {MAX_URL_LENGTH} characters.")
    if _FORBIDDEN_CHARS.search(url):
        raise _Refused("URL must be a valid URL without spaces, control characters or backslashes.")
    # One parse decides both what is checked and what is sent (`CheckedUrl.target`, `.netloc`).
    parts = _plain_parts(url) or _httpx_parts(url)
    scheme, host, explicit_port, target, netloc, credentials = parts
    if scheme not in ("http", "https") or (scheme == "http" and not allow_loopback_http):
        raise _Refused("URL must use HTTPS.")
    if credentials:
        raise _Refused("URL must not contain credentials.")
    if not host:
        raise _Refused("URL must include a host.")
    port = explicit_port if explicit_port is not None else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise _Refused("URL port is not valid.")
    return scheme, host, port, target, netloc


# scheme, host, port (None: the scheme's), request target, Host header, whether the URL has userinfo
_Parts = tuple[str, str, int | None, str, str, bool]


def _plain_parts(url: str) -> _Parts | None:
    """What httpx would read from a plain URL (see `_PLAIN_URL`); None for any other URL."""
    match = _PLAIN_URL.fullmatch(url)
    if match is None:
        return None
    scheme, host, port_text, path, query = match.groups()
    if _IPV4_STYLE.fullmatch(host) and not _valid_ipv4(host):
        return None  # httpx refuses it: its own message, from the slow path
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return scheme, host, port, (path or "/") + (query or ""), netloc, False


@functools.lru_cache(maxsize=_VERDICTS_CACHED)
def _valid_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _httpx_parts(url: str) -> _Parts:
    try:
        parsed = httpx.URL(url)
        raw_host = parsed.raw_host.decode("ascii")
        explicit_port = parsed.port
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise _Refused("URL must be a valid URL.") from None
    return (
        parsed.scheme.lower(),
        raw_host.lower().removesuffix("."),
        explicit_port,
        parsed.raw_path.decode("ascii"),
        parsed.netloc.decode("ascii"),
        bool(parsed.userinfo),
    )


@functools.lru_cache(maxsize=_VERDICTS_CACHED)
def _literal_addresses(host: str, allow_loopback_http: bool) -> tuple[str, ...] | None:
    """The address an IP-literal host stands for; None for a host name (checked here, resolved by `_resolve`).
    Cached: a pure function of the host text (a refusal raises, and is not cached)."""
    if ":" in host:
        # httpx strips the brackets of an IPv6 literal; zone ids (`%eth0`) only name link-local scopes.
        if _parse_ip(host) is None or "%" in host:
            raise _Refused("URL host is not a valid IP address.")
        return (host,)
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = ""
        if canonical != host:
            raise _Refused("URL host must be a domain name or a standard dotted IPv4 address.")
        return (host,)
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise _Refused("URL host is not a valid domain name.")
    if host == "metadata.google.internal" or (_is_blocked_name(host) and not allow_loopback_http):
        raise _Refused("URL host is not allowed.")
    return None


def _resolve(host: str, port: int, resolver: Resolver) -> tuple[str, ...]:
    """Every answer of the resolver for a host name (all of them are checked)."""
    addresses = tuple(dict.fromkeys(resolver(host, port)))
    if not addresses:
        raise _Refused("URL host must resolve to a public address.")
    return addresses


def _check_address(address: str, scheme: str, allow_loopback_http: bool) -> None:
    if scheme == "http":
        # Plain HTTP exists only for the local runner; a public answer still has to use HTTPS.
        if not is_loopback_address(address):
            raise _Refused("URL must use HTTPS.")
    elif not (is_public_address(address) or (allow_loopback_http and is_loopback_address(address))):
        raise _Refused("URL host must resolve to a public address.")
