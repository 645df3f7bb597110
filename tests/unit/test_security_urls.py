from __future__ import annotations

import pytest

from babychain.errors import UnsafeUrlError
from babychain.security.urls import (
    CheckedUrl,
    Resolver,
    check_url,
    check_url_form,
    is_loopback_address,
    is_public_address,
    system_resolver,
)


def fixed(answers: dict[str, list[str]]) -> Resolver:
    """A resolver with canned answers; unknown names resolve to nothing."""
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(answers.get(host, []))

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver must not be called for {host}")


PUBLIC = fixed({"cdn.example": ["93.184.216.34"]})


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
        "100.100.100.200",  # Alibaba metadata (CGNAT)
        "169.254.169.254",  # AWS/GCP/Azure metadata
        "192.0.0.8",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "2001:db8::1",
        "2001::1",  # Teredo
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "64:ff9b::7f00:1",  # NAT64 around 127.0.0.1
        "64:ff9b::808:808",
        "not-an-ip",
        "",
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "010.0.0.1",
        "[2606:4700::1]",
    ],
)
def test_blocked_addresses(ip: str) -> None:
    assert is_public_address(ip) is False


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700::1", "::ffff:8.8.8.8"])
def test_public_addresses(ip: str) -> None:
    assert is_public_address(ip) is True


def test_loopback_is_only_127_and_v6_one() -> None:
    assert is_loopback_address("127.0.0.1")
    assert is_loopback_address("127.8.9.10")
    assert is_loopback_address("::1")
    assert not is_loopback_address("10.0.0.1")
    assert not is_loopback_address("169.254.169.254")
    assert not is_loopback_address("93.184.216.34")
    assert not is_loopback_address("junk")


def test_public_https_url_passes_with_resolved_addresses() -> None:
    resolver = fixed({"cdn.example": ["93.184.216.34", "2606:4700::1", "93.184.216.34"]})
    checked = check_url("https://CDN.example./a.png?x=1", resolver=resolver)
    assert checked == CheckedUrl(
        url="https://CDN.example./a.png?x=1",
        scheme="https",
        host="cdn.example",
        port=443,
        addresses=("93.184.216.34", "2606:4700::1"),
        target="/a.png?x=1",
        netloc="cdn.example.",  # what the request sends as Host
    )
    assert resolver.calls == [("cdn.example", 443)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "target", "netloc"),
    [
        ("https://[2606:4700::1]:8443/cb", "/cb", "[2606:4700::1]:8443"),
        ("https://cdn.example:443", "/", "cdn.example"),
        ("https://cdn.example/ä?q=é", "/%C3%A4?q=%C3%A9", "cdn.example"),
    ],
)
def test_the_checked_parse_is_what_gets_sent(url: str, target: str, netloc: str) -> None:
    checked = check_url(url, resolver=fixed({"cdn.example": ["93.184.216.34"]}))
    assert (checked.target, checked.netloc) == (target, netloc)


def test_explicit_port_is_reported_and_resolved() -> None:
    resolver = fixed({"cdn.example": ["93.184.216.34"]})
    assert check_url("https://cdn.example:8443/", resolver=resolver).port == 8443
    assert resolver.calls == [("cdn.example", 8443)]  # type: ignore[attr-defined]


def test_idn_host_is_checked_in_ascii_form() -> None:
    checked = check_url("https://bücher.example/", resolver=fixed({"xn--bcher-kva.example": ["8.8.8.8"]}))
    assert checked.host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "answers",
    [
        ["10.0.0.5"],
        ["93.184.216.34", "10.0.0.5"],
        ["2606:4700::1", "fd00::1"],
        ["93.184.216.34", "::ffff:127.0.0.1"],
    ],
)
def test_any_private_answer_rejects_the_url(answers: list[str]) -> None:
    with pytest.raises(UnsafeUrlError, match="public address"):
        check_url("https://mixed.example/x", resolver=fixed({"mixed.example": answers}))


def test_no_answers_is_rejected() -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url("https://nowhere.example/", resolver=fixed({}), field="input.image")
    assert info.value.message == "URL host must resolve to a public address."
    assert info.value.field == "input.image"


def test_garbage_answer_is_rejected() -> None:
    with pytest.raises(UnsafeUrlError, match="public address"):
        check_url("https://odd.example/", resolver=fixed({"odd.example": ["not an ip"]}))


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:a9fe:a9fe]/",
        "https://[fe80::1]/",
        "https://[fc00::1]/",
        "https://[2001:db8::1]/",
        "https://[64:ff9b::7f00:1]/",
        "https://100.64.0.1/",
    ],
)
def test_private_ip_literals_are_rejected_without_dns(url: str) -> None:
    with pytest.raises(UnsafeUrlError, match="public address"):
        check_url(url, resolver=no_dns)


@pytest.mark.parametrize(
    "url",
    [
        "https://2130706433/",
        "http://2130706433/",
        "https://0x7f.1/",
        "https://0x7f000001/",
        "https://0177.0.0.1/",
        "https://127.1/",
        "https://010.8.8.8/",
        "https://8.8.8.010/",
        "https://1.2.3.0x4/",
        "https://999.1.1.1/",
    ],
)
def test_non_canonical_numeric_hosts_are_rejected(url: str) -> None:
    with pytest.raises(UnsafeUrlError):
        check_url(url, resolver=no_dns, allow_loopback_http=True)


def test_public_ip_literals_pass_without_dns() -> None:
    assert check_url("https://93.184.216.34/x", resolver=no_dns).addresses == ("93.184.216.34",)
    assert check_url("https://[2606:4700::1]:8443/", resolver=no_dns).addresses == ("2606:4700::1",)
    assert check_url("https://[::ffff:8.8.8.8]/", resolver=no_dns).addresses == ("::ffff:8.8.8.8",)


def test_http_is_rejected_by_default() -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url("http://cdn.example/a.png", resolver=PUBLIC)
    assert info.value.message == "URL must use HTTPS."


@pytest.mark.parametrize("url", ["ftp://cdn.example/a", "file:///etc/passwd", "gopher://cdn.example/", "data:,x"])
def test_other_schemes_are_rejected(url: str) -> None:
    with pytest.raises(UnsafeUrlError):
        check_url(url, resolver=PUBLIC, allow_loopback_http=True)


@pytest.mark.parametrize(
    "url", ["https://user:pw@cdn.example/", "https://user@cdn.example/", "https://:pw@cdn.example/"]
)
def test_credentials_are_rejected(url: str) -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url(url, resolver=PUBLIC)
    assert info.value.message == "URL must not contain credentials."


@pytest.mark.parametrize(
    "url",
    [
        "",
        "https://",
        "https:///path",
        "https://cdn.example\\@evil.example/",
        " https://cdn.example/",
        "https://cdn.example/a b",
        "https://cdn.example\t/",
        "https://cdn.example:99999/",
        "https://cdn.example:0/",
        "https://ex%61mple.com/",
        "https://[fe80::1%25eth0]/",
        "https://" + "a" * 2048 + ".example/",
    ],
)
def test_malformed_urls_are_rejected(url: str) -> None:
    with pytest.raises(UnsafeUrlError):
        check_url(url, resolver=PUBLIC)


def test_non_string_is_rejected() -> None:
    with pytest.raises(UnsafeUrlError):
        check_url(None, resolver=PUBLIC)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/",
        "https://LOCALHOST./",
        "https://api.localhost/",
        "https://metadata.google.internal/",
    ],
)
def test_blocked_names_are_rejected_before_dns(url: str) -> None:
    with pytest.raises(UnsafeUrlError, match="not allowed"):
        check_url(url, resolver=no_dns)


def test_metadata_name_stays_blocked_in_development() -> None:
    with pytest.raises(UnsafeUrlError, match="not allowed"):
        check_url("http://metadata.google.internal/", resolver=no_dns, allow_loopback_http=True)


class TestLoopbackDevelopmentSetting:
    def test_http_loopback_literal_is_allowed(self) -> None:
        checked = check_url("http://127.0.0.1:8080/cb", resolver=no_dns, allow_loopback_http=True)
        assert (checked.scheme, checked.port, checked.addresses) == ("http", 8080, ("127.0.0.1",))
        assert check_url("http://[::1]/", resolver=no_dns, allow_loopback_http=True).port == 80

    def test_http_name_resolving_to_loopback_is_allowed(self) -> None:
        resolver = fixed({"localhost": ["127.0.0.1", "::1"], "files.test": ["127.0.0.1"]})
        assert check_url("http://localhost:9000/", resolver=resolver, allow_loopback_http=True).addresses == (
            "127.0.0.1",
            "::1",
        )
        assert check_url("http://files.test/x", resolver=resolver, allow_loopback_http=True).host == "files.test"

    def test_http_to_public_host_still_needs_https(self) -> None:
        with pytest.raises(UnsafeUrlError, match="HTTPS"):
            check_url("http://cdn.example/", resolver=PUBLIC, allow_loopback_http=True)

    def test_http_with_mixed_loopback_and_public_is_rejected(self) -> None:
        resolver = fixed({"mixed.test": ["127.0.0.1", "93.184.216.34"]})
        with pytest.raises(UnsafeUrlError):
            check_url("http://mixed.test/", resolver=resolver, allow_loopback_http=True)

    @pytest.mark.parametrize("answer", ["10.0.0.1", "169.254.169.254", "192.168.0.10", "::ffff:127.0.0.1", "fe80::1"])
    def test_other_private_ranges_stay_blocked(self, answer: str) -> None:
        resolver = fixed({"dev.test": [answer]})
        for scheme in ("http", "https"):
            with pytest.raises(UnsafeUrlError):
                check_url(f"{scheme}://dev.test/", resolver=resolver, allow_loopback_http=True)

    def test_https_accepts_loopback_only_in_development(self) -> None:
        resolver = fixed({"dev.test": ["127.0.0.1"]})
        assert check_url("https://dev.test/", resolver=resolver, allow_loopback_http=True).addresses == ("127.0.0.1",)
        with pytest.raises(UnsafeUrlError):
            check_url("https://dev.test/", resolver=resolver)


def test_system_resolver_fails_closed_and_resolves_literals() -> None:
    assert system_resolver("127.0.0.1", 80) == ["127.0.0.1"]
    assert system_resolver("no-such-host.invalid", 443) == []


def test_system_resolver_returns_unique_v4_and_v6_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    answers = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1", 443, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
    assert system_resolver("cdn.example", 443) == ["93.184.216.34", "2606:4700::1"]


def test_system_resolver_gives_up_on_a_hung_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    release = threading.Event()

    def hang(*args: object, **kwargs: object) -> list[object]:
        release.wait(5)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 443))]

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    try:
        assert system_resolver("slow.example", 443, timeout=0.05) == []
    finally:
        release.set()


class TestFormWithoutDns:
    """`check_url_form` is `check_url` minus DNS: the schema's media type uses it when no resolver is given."""

    @pytest.mark.parametrize(
        "url",
        [
            "ftp://cdn.example/a",
            "file:///etc/passwd",
            "gopher://cdn.example/",
            "//169.254.169.254/latest",
            "http://cdn.example/a.png",
            "https://user:pw@cdn.example/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://localhost/",
            "https://metadata.google.internal/",
            " https://cdn.example/",
            "https://" + "a" * 2048 + ".example/",
        ],
    )
    def test_refuses_what_needs_no_dns(self, url: str) -> None:
        with pytest.raises(UnsafeUrlError):
            check_url_form(url)
        with pytest.raises(UnsafeUrlError):
            check_url(url, resolver=PUBLIC)  # the resolving check refuses all of them too

    def test_names_pass_the_form_and_literals_are_judged(self) -> None:
        check_url_form("https://cdn.example/a.png")
        check_url_form("https://93.184.216.34/a.png")
        check_url_form("https://[2606:4700::1]/a.png")
        check_url_form("http://127.0.0.1:8080/a.png", allow_loopback_http=True)
        check_url_form("http://localhost:8080/a.png", allow_loopback_http=True)  # resolved later by check_url
        with pytest.raises(UnsafeUrlError, match="HTTPS"):
            check_url_form("http://93.184.216.34/a.png", allow_loopback_http=True)

    def test_names_the_field(self) -> None:
        with pytest.raises(UnsafeUrlError) as info:
            check_url_form("ftp://x.example/", field="input.source_image_url")
        assert info.value.field == "input.source_image_url"
