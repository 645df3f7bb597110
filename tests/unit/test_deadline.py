"""Total deadlines on outbound HTTP against a real server on loopback that trickles its answer.

The server sends each byte well within the per-read timeout, so only a total deadline can end the request early:
without one, every request below would succeed once the whole trickled answer had arrived.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from babychain.errors import ProviderError
from babychain.providers.http import ProviderHttp
from babychain.security.deadline import time_left, total_deadline
from babychain.security.safe_http import FetchError, fetch_bytes, post_json
from babychain.security.urls import Resolver
from tests.standins.trickle import TrickleReceiver


def no_dns(host: str) -> list[str]:
    raise AssertionError(f"unexpected DNS lookup of {host}")


resolver: Resolver = no_dns


@pytest.fixture(params=["headers", "body"])
def trickler(request: pytest.FixtureRequest) -> Iterator[TrickleReceiver]:
    server = TrickleReceiver(request.param)
    yield server
    server.close()


def test_the_whole_answer_arrives_without_a_deadline(trickler: TrickleReceiver) -> None:
    # The control: the trickled answer is complete and valid, so a failure below is the deadline's doing.
    result = post_json(trickler.url, b"{}", {}, resolver=resolver, timeout=30.0, allow_loopback_http=True)
    assert result.status_code == 200 and result.body_excerpt == trickler.body.decode()


def test_a_callback_post_ends_at_its_deadline(trickler: TrickleReceiver) -> None:
    with pytest.raises(FetchError) as info:
        post_json(trickler.url, b"{}", {}, resolver=resolver, timeout=0.4, allow_loopback_http=True)
    assert info.value.transient is True and "timed out" in info.value.message
    assert trickler.completed == 0


def test_a_download_ends_at_its_total_deadline(trickler: TrickleReceiver) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(
            trickler.url, resolver=resolver, max_bytes=1024, timeout=5.0, total_timeout=0.4, allow_loopback_http=True
        )
    assert info.value.transient is True and "timed out" in info.value.message


def test_a_provider_call_ends_at_its_deadline(trickler: TrickleReceiver) -> None:
    http = ProviderHttp("Trickler", timeout=0.4)
    try:
        with pytest.raises(ProviderError) as info:
            http.send("GET", trickler.url)
    finally:
        http.close()
    assert info.value.code == "provider_timeout" and info.value.transient is True


def test_a_provider_call_without_trickling_is_unaffected() -> None:
    server = TrickleReceiver("none")  # sends everything at once
    http = ProviderHttp("Prompt", timeout=0.4)
    try:
        assert http.json_object(http.send("GET", server.url)) == {"ok": True, "padding": "p" * 16}
    finally:
        http.close()
        server.close()


def test_nested_deadlines_narrow_and_unwind(trickler: TrickleReceiver) -> None:
    with total_deadline(30.0), total_deadline(0.4), pytest.raises(FetchError):
        post_json(trickler.url, b"{}", {}, resolver=resolver, timeout=30.0, allow_loopback_http=True)
    # An inner block cannot extend the outer deadline.
    with total_deadline(0.4), total_deadline(30.0), pytest.raises(FetchError):
        post_json(trickler.url, b"{}", {}, resolver=resolver, timeout=30.0, allow_loopback_http=True)


def test_a_deadline_holds_inside_its_block_only_and_unwinds_when_it_raises() -> None:
    assert time_left(5.0, TimeoutError) == 5.0
    with total_deadline(10.0):
        assert 9.0 < time_left(30.0, TimeoutError) <= 10.0
        with total_deadline(None):  # no deadline of its own: the outer one still holds
            assert time_left(30.0, TimeoutError) <= 10.0
        with pytest.raises(RuntimeError), total_deadline(0.0):
            with pytest.raises(TimeoutError):
                time_left(5.0, TimeoutError)  # past it at once
            raise RuntimeError
        assert 9.0 < time_left(30.0, TimeoutError) <= 10.0  # the inner block's deadline is gone with it
    assert time_left(5.0, TimeoutError) == 5.0
