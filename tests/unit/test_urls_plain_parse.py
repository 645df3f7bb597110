"""The plain-URL fast path of `check_url` reads every URL it accepts exactly as httpx's parser does (the parse that
decides what is checked and what is sent), and leaves every other URL to httpx."""

from __future__ import annotations

import random

import pytest

from babychain.errors import UnsafeUrlError
from babychain.security import urls
from babychain.security.urls import check_url


def _httpx_or_error(url: str) -> object:
    try:
        return urls._httpx_parts(url)
    except urls._Refused as refused:
        return ("refused", str(refused))


PLAIN = [
    "http://127.0.0.1:8080/files/runs/0b9c/text_to_image/output-0.jpg",
    "https://cdn.example/out/image.png?X-Amz-Expires=600&sig=abc-123_~.",
    "https://cdn.example",
    "https://cdn.example/",
    "https://cdn.example:443/x",
    "http://cdn.example:80/x",
    "https://cdn.example:8443/a/b/",
    "https://a_b.example/x",
    "https://-a.example/x",
    "https://1.2.3/x",
    "https://93.184.216.34/x",
    "https://cdn.example:65535/x",
    "https://a.example/x.y/z~w",
]

NOT_PLAIN = [
    "https://CDN.example/x",
    "HTTPS://cdn.example/x",
    "https://cdn.example/./x",
    "https://cdn.example/a/../x",
    "https://cdn.example//x",
    "https://cdn.example/x?",
    "https://cdn.example/x#frag",
    "https://cdn.example/%2e%2e/x",
    "https://user@cdn.example/x",
    "https://cdn.example:0443/x",
    "https://cdn.example:0/x",
    "https://cdn.example:65536/x",
    "https://cdn.example:99999/x",
    "https://999.1.1.1/x",
    "https://01.2.3.4/x",
    "https://cdn.example./x",
    "https://[::1]/x",
    "ftp://cdn.example/x",
    "https://cdn.example/x?a=%20",
    "https://cdn.example/.well-known/x",
]


@pytest.mark.parametrize("url", PLAIN)
def test_a_plain_url_is_read_as_httpx_reads_it(url: str) -> None:
    assert urls._plain_parts(url) is not None
    assert urls._plain_parts(url) == _httpx_or_error(url)


@pytest.mark.parametrize("url", NOT_PLAIN)
def test_any_other_url_goes_to_httpx(url: str) -> None:
    assert urls._plain_parts(url) is None


def test_random_urls_agree_with_httpx_wherever_the_fast_path_answers() -> None:
    """URLs built from the characters that matter to a parser: every one the fast path reads is read as httpx reads
    it, and a good share of them are read by it (the test would prove nothing if none were)."""
    rng = random.Random(20261202)
    host_parts = ["a", "b1", "x_y", "-", "0", "127", "256", "0x7f", "A", "xn--p1ai", "."]
    path_chars = [*list("aZ09._~-/" * 6), "%2e", "%41", "?", "#", "&", "=", ":", "@", "!", "$", "'", "(", "*", "+", ";"]
    agreed = 0
    for _ in range(20_000):
        scheme = rng.choice(["http", "https", "https", "HTTP", "ftp"])
        host = ".".join(rng.choice(host_parts) for _ in range(rng.randint(1, 4)))
        port = rng.choice(["", "", ":80", ":443", ":8080", ":0", ":065", ":70000", ":1"])
        path = "".join(rng.choice(path_chars) for _ in range(rng.randint(0, 12)))
        if path and path[0] not in "/?#":
            path = "/" + path
        url = f"{scheme}://{host}{port}{path}"
        fast = urls._plain_parts(url)
        if fast is not None:
            assert fast == _httpx_or_error(url), url
            agreed += 1
    assert agreed > 1000


def test_check_url_gives_the_same_checked_url_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    for url in [*PLAIN[1:2], "https://cdn.example:8443/a/b/?q=1", "https://cdn.example:443/x"]:
        fast = check_url(url, resolver=resolve)
        monkeypatch.setattr(urls, "_plain_parts", lambda url: None)
        slow = check_url(url, resolver=resolve)
        monkeypatch.undo()
        assert fast == slow
    loopback = "http://127.0.0.1:8080/files/runs/x/output-0.jpg"
    checked = check_url(loopback, resolver=resolve, allow_loopback_http=True)
    expected = ("/files/runs/x/output-0.jpg", "127.0.0.1:8080", ("127.0.0.1",))
    assert (checked.target, checked.netloc, checked.addresses) == expected
    with pytest.raises(UnsafeUrlError, match="HTTPS"):
        check_url(loopback, resolver=resolve)


def test_cached_address_verdicts_judge_a_str_subclass_by_its_text() -> None:
    class Sneaky(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    assert urls.is_loopback_address("127.0.0.1")
    assert not urls.is_loopback_address(Sneaky("10.0.0.1"))
    assert not urls.is_public_address(Sneaky("127.0.0.1"))
    assert not urls.is_public_address(["93.184.216.34"])  # type: ignore[arg-type]
