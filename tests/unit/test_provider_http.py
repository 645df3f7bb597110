"""The one HTTP layer under the provider adapters: against a scripted loopback server, and through every adapter."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import pytest

from babychain.chains.catalog import MODELS_BY_ID
from babychain.config import Settings
from babychain.errors import ConfigurationError, ProviderError
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.providers.babysea import BabySeaProvider
from babychain.providers.base import Provider, StepJob
from babychain.providers.bfl import BflProvider
from babychain.providers.byteplus import BytePlusProvider
from babychain.providers.http import (
    ErrorBody,
    HostRule,
    ProviderHttp,
    allowed_url,
    check_api_key,
    check_base_url,
    scrub_secret,
)
from babychain.providers.local import LocalProvider
from babychain.providers.registry import registry_from_settings
from babychain.security import lean_http
from babychain.security.lean_http import Response
from tests.standins.babysea import BabySeaStandIn
from tests.standins.bfl import BflStandIn
from tests.standins.byteplus import BytePlusStandIn
from tests.standins.tls import make_tls_server_context, trusting

KEY = "sk_layer_test_key_5b1e9f"
RULE = HostRule("FOO_API_BASE_URL", hosts=frozenset({"api.foo.example"}), domain="foo.dev")


class Scripted:
    """A loopback server that answers from a script of (status, headers, body) and records every request."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[dict[str, Any]] = []
        scripted = self

        class Handler(QuietHandler):
            def _answer(self) -> None:
                body = self.read_body()
                scripted.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                status, headers, data = scripted.answers.pop(0) if scripted.answers else (200, {}, b"{}")
                self.send_bytes(status, data, None, headers)

            do_GET = do_POST = do_DELETE = _answer

        self._server = LoopbackServer(Handler).start()
        self.url = self._server.base_url

    def answer(self, status: int, body: Any = b"", **headers: str) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, data))

    def close(self) -> None:
        self._server.stop()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


def layer(read_error: Callable[[Response], ErrorBody] | None = None, **options: Any) -> ProviderHttp:
    return ProviderHttp(
        "Foo", secrets=(KEY,), headers={"Authorization": f"Bearer {KEY}"}, read_error=read_error, **options
    )


def raised(call: Callable[[], Any]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call()
    return info.value


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ------------------------------------------------------------------------------------------------ the layer


def test_a_2xx_answer_comes_back_with_the_adapters_headers(scripted: Scripted) -> None:
    scripted.answer(201, {"id": "job-1"})
    http = layer()
    response = http.send("POST", scripted.url + "/jobs", body={"prompt": "x"}, headers={"x-idempotency-key": "k"})
    assert response.status_code == 201 and http.json_object(response) == {"id": "job-1"}
    [sent] = scripted.requests
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}" and sent["headers"]["x-idempotency-key"] == "k"
    assert json.loads(sent["body"]) == {"prompt": "x"}


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (400, "provider_invalid_request", False),
        (401, "provider_unauthorized", False),
        (402, "provider_quota_exceeded", False),
        (403, "provider_unauthorized", False),
        (404, "provider_not_found", False),
        (409, "provider_invalid_request", False),
        (422, "provider_invalid_request", False),
        (429, "provider_rate_limited", True),
        (500, "provider_unavailable", True),
        (503, "provider_unavailable", True),
        (301, "provider_unexpected_response", False),
        (302, "provider_unexpected_response", False),
        (307, "provider_unexpected_response", False),
        (308, "provider_unexpected_response", False),
    ],
)
def test_the_status_decides_the_code_and_whether_to_retry(
    scripted: Scripted, status: int, code: str, transient: bool
) -> None:
    scripted.answer(status, b"nope")
    error = raised(lambda: layer().send("GET", scripted.url + "/x"))
    assert (error.code, error.transient, error.retry_after) == (code, transient, None)
    assert error.message.startswith(f"Foo answered HTTP {status}")


def test_a_404_can_mean_the_task_is_gone(scripted: Scripted) -> None:
    scripted.answer(404)
    error = raised(lambda: layer().send("GET", scripted.url + "/tasks/1", not_found_code="provider_task_not_found"))
    assert (error.code, error.transient) == ("provider_task_not_found", False)


def test_a_redirect_is_never_followed_so_the_key_stays_home(scripted: Scripted) -> None:
    elsewhere = Scripted()
    try:
        scripted.answer(302, {"id": "job-1"}, Location=elsewhere.url + "/steal")
        error = raised(lambda: layer().send("POST", scripted.url + "/jobs", body={}))
    finally:
        elsewhere.close()
    assert (error.code, error.transient) == ("provider_unexpected_response", False)
    assert "redirect" in error.message
    assert elsewhere.requests == []


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_or_as_an_http_date(scripted: Scripted, status: int) -> None:
    scripted.answer(status, Retry_After="7")
    assert raised(lambda: layer().send("GET", scripted.url)).retry_after == 7.0
    scripted.answer(status, Retry_After=formatdate(time.time() + 30, usegmt=True))
    retry_after = raised(lambda: layer().send("GET", scripted.url)).retry_after
    assert retry_after is not None and 25 <= retry_after <= 30
    scripted.answer(status, Retry_After="soon")
    assert raised(lambda: layer().send("GET", scripted.url)).retry_after is None


def test_a_retry_after_header_wins_over_the_body(scripted: Scripted) -> None:
    http = layer(lambda r: ErrorBody("slow down", retry_after=12.0))
    scripted.answer(429)
    assert raised(lambda: http.send("GET", scripted.url)).retry_after == 12.0
    scripted.answer(429, Retry_After="3")
    assert raised(lambda: http.send("GET", scripted.url)).retry_after == 3.0
    scripted.answer(400, Retry_After="3")
    assert raised(lambda: http.send("GET", scripted.url)).retry_after is None  # final errors are not retried


def test_the_body_can_decide_the_code(scripted: Scripted) -> None:
    http = layer(lambda r: ErrorBody("flagged", code="provider_content_moderated"))
    scripted.answer(500)
    error = raised(lambda: http.send("GET", scripted.url))
    assert (error.code, error.transient, error.message) == ("provider_content_moderated", False, "flagged")
    busy = layer(lambda r: ErrorBody("still going", code="provider_idempotency_in_progress", transient=True))
    scripted.answer(409, Retry_After="2")
    error = raised(lambda: busy.send("GET", scripted.url))
    assert (error.code, error.transient, error.retry_after) == ("provider_idempotency_in_progress", True, 2.0)


@pytest.mark.parametrize(
    ("status", "verdict", "code", "transient"),
    [
        (400, True, "provider_invalid_request", True),
        (503, False, "provider_failed", False),
        (503, True, "provider_unavailable", True),
        (401, True, "provider_unauthorized", False),
        (402, True, "provider_quota_exceeded", False),
        (404, True, "provider_not_found", False),
    ],
)
def test_the_providers_own_retry_verdict_wins_except_for_auth_quota_and_not_found(
    scripted: Scripted, status: int, verdict: bool, code: str, transient: bool
) -> None:
    http = layer(lambda r: ErrorBody("said so", transient=verdict))
    scripted.answer(status)
    error = raised(lambda: http.send("GET", scripted.url))
    assert (error.code, error.transient) == (code, transient)


def test_error_text_is_scrubbed_of_the_key_and_bounded(scripted: Scripted) -> None:
    scripted.answer(400, f"you sent {KEY} and " + "x" * 2000)
    error = raised(lambda: layer().send("GET", scripted.url))
    assert KEY not in error.message and "[redacted]" in error.message
    assert len(error.message) <= 500 and error.message.endswith("…")
    assert layer().scrub(f"a {KEY} b") == "a [redacted] b"
    assert scrub_secret("no secret", "") == "no secret"


def test_no_answer_at_all_is_transient_and_names_the_call(scripted: Scripted) -> None:
    error = raised(lambda: layer().send("POST", f"http://127.0.0.1:{closed_port()}/v1/jobs"))
    assert (error.code, error.transient) == ("provider_network_error", True)
    assert error.message == "Foo (POST /v1/jobs) unreachable: ConnectError."

    stalled = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}/v1/x"
        error = raised(lambda: layer(timeout=0.2).send("GET", url))
        assert (error.code, error.transient) == ("provider_timeout", True)
        started = time.monotonic()
        error = raised(lambda: layer(timeout=30).send("GET", url, timeout=0.2))  # a per-call timeout
        assert error.code == "provider_timeout" and time.monotonic() - started < 5
    finally:
        stalled.close()


def test_bodies_go_as_compact_json_and_params_join_the_query(scripted: Scripted) -> None:
    http = layer()
    scripted.answer(200, {"id": "a"})
    scripted.answer(200, {"id": "b"})
    scripted.answer(200, {"id": "c"}, Content_Type="application/json")
    assert http.json_object(http.send("POST", scripted.url + "/jobs", body={"prompt": "é", "n": 1})) == {"id": "a"}
    assert http.json_object(http.send("GET", scripted.url + "/jobs/a", params={"fields": "id status"})) == {"id": "b"}
    http.send("POST", scripted.url + "/jobs", body={}, headers={"content-type": "application/merge+json"})
    first, second, third = scripted.requests
    assert first["body"] == '{"prompt":"é","n":1}'.encode() and first["headers"]["Content-Type"] == "application/json"
    assert second["path"] == "/jobs/a?fields=id+status" and second["body"] == b""
    assert third["headers"]["content-type"] == "application/merge+json" and "Content-Type" not in third["headers"]
    assert all(r["headers"]["Accept-Encoding"] == "identity" for r in scripted.requests)


def test_an_oversized_answer_is_not_read(scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("babychain.providers.http.RESPONSE_LIMIT", 1000)
    scripted.answer(200, b"x" * 5000)
    error = raised(lambda: layer().send("GET", scripted.url + "/jobs/1"))
    assert (error.code, error.transient) == ("provider_unexpected_response", False)
    assert error.message == "Foo (GET /jobs/1) answered with a body too large to read."


def test_https_verifies_the_providers_certificate_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    server_context, ca_pem = make_tls_server_context(["localhost"])
    monkeypatch.setattr(lean_http, "create_ssl_context", lambda: trusting(ca_pem))
    lean_http.close_pooled_connections()
    names: list[str | None] = []

    class Handler(QuietHandler, keep_alive=True):
        def do_GET(self) -> None:
            names.append(getattr(self.connection, "sni", None))
            self.send_json(200, {"ok": True})

    try:
        with LoopbackServer(Handler, tls=server_context) as server:
            http = layer()
            for _ in range(2):
                assert http.json_object(http.send("GET", f"https://localhost:{server.port}/v1/x")) == {"ok": True}
            assert names == ["localhost", "localhost"]  # one TLS session, opened for the provider's name
            # The same server by address: the certificate does not name 127.0.0.1, so nothing is sent.
            error = raised(lambda: http.send("GET", f"https://127.0.0.1:{server.port}/v1/x"))
            assert (error.code, error.transient) == ("provider_network_error", True)
            assert error.message == "Foo (GET /v1/x) unreachable: ConnectError."
            assert len(names) == 2
    finally:
        lean_http.close_pooled_connections()


def test_json_object_refuses_anything_else(scripted: Scripted) -> None:
    http = layer()
    for body in (b"not json", b"[1, 2]"):
        scripted.answer(200, body)
        error = raised(lambda: http.json_object(http.send("GET", scripted.url)))
        assert (error.code, error.transient) == ("provider_unexpected_response", False)
        assert error.message == "Foo answered HTTP 200 without a JSON object."


# ------------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("url", "loopback", "origin", "path"),
    [
        ("https://api.foo.example", False, "https://api.foo.example", ""),
        (" https://API.foo.example:443/v2/ ", False, "https://api.foo.example", "/v2"),
        ("https://eu.foo.dev/v1", False, "https://eu.foo.dev", "/v1"),
        ("http://127.0.0.1:8080/v1", True, "http://127.0.0.1:8080", "/v1"),
        ("http://localhost:9", True, "http://localhost:9", ""),
        ("https://[::1]:9/api", True, "https://[::1]:9", "/api"),
    ],
)
def test_check_base_url_normalises(url: str, loopback: bool, origin: str, path: str) -> None:
    checked = check_base_url(url, RULE, loopback)
    assert (checked.origin, checked.path, checked.url) == (origin, path, origin + path)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://api.foo.example", False),
        ("https://api.foo.example:8443", False),
        ("https://api.foo.example.evil.com", False),
        ("https://foo.dev", False),
        ("https://api.foo.example.", False),
        ("https://user:pw@api.foo.example", False),
        ("https://api.foo.example/#x", False),
        ("https://api.foo.example/?x=1", False),
        ("https://api.foo.example:99999", False),
        ("not a url", False),
        ("", False),
        ("http://127.0.0.1:8080", False),
        ("http://10.0.0.5", True),
        ("ftp://127.0.0.1", True),
    ],
)
def test_a_bad_base_url_is_a_configuration_error_naming_the_variable(url: str, loopback: bool) -> None:
    with pytest.raises(ConfigurationError, match=r"^FOO_API_BASE_URL is not an allowed base URL") as info:
        check_base_url(url, RULE, loopback)
    assert "pw" not in str(info.value)  # credentials are never echoed


def test_allowed_url_checks_hosts_the_provider_hands_back() -> None:
    assert allowed_url("https://eu2.foo.dev/v1/get_result?id=a", RULE, False)
    assert not allowed_url("https://evil.example/v1/get_result?id=a", RULE, False)
    assert not allowed_url("http://127.0.0.1:9/x", RULE, False)
    assert allowed_url("http://127.0.0.1:9/x", RULE, True)


@pytest.mark.parametrize(
    ("build", "variable"),
    [
        (lambda url: BflProvider(KEY, base_url=url), "BFL_API_BASE_URL"),
        (lambda url: BytePlusProvider(KEY, base_url=url), "ARK_API_BASE_URL"),
        (lambda url: BabySeaProvider(KEY, base_url=url), "BABYSEA_API_BASE_URL"),
    ],
)
@pytest.mark.parametrize("url", ["https://evil.example/v1", "http://127.0.0.1:8080", "https://u:p@evil.example"])
def test_every_adapter_names_its_base_url_variable(build: Callable[[str], Provider], variable: str, url: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{variable} "):
        build(url)


def test_babysea_wants_a_bare_origin() -> None:
    with pytest.raises(ConfigurationError, match=r"^BABYSEA_API_BASE_URL .*bare origin"):
        BabySeaProvider(KEY, base_url="https://api.us.babysea.ai/v2")


@pytest.mark.parametrize(
    ("field", "variable"),
    [("bfl_api_base_url", "BFL_API_BASE_URL"), ("ark_api_base_url", "ARK_API_BASE_URL")],
)
def test_the_registry_reports_a_bad_base_url_as_configuration(field: str, variable: str) -> None:
    settings = Settings(provider_mode="byok", bfl_api_key=KEY, ark_api_key=KEY, **{field: "https://evil.example/v1"})
    with pytest.raises(ConfigurationError, match=variable):
        registry_from_settings(settings)


@pytest.mark.parametrize(
    ("build", "variable"),
    [
        (lambda key: BflProvider(key), "BFL_API_KEY"),
        (lambda key: BytePlusProvider(key), "ARK_API_KEY"),
        (lambda key: BabySeaProvider(key), "BABYSEA_API_KEY"),
    ],
)
@pytest.mark.parametrize("key", ["", "two words", "key\n"])
def test_an_empty_or_spaced_key_is_a_configuration_error(
    build: Callable[[str], Provider], variable: str, key: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^{variable} "):
        build(key)
    assert check_api_key("k-1", variable) == "k-1"


# ------------------------------------------------------------------------------------------------ every adapter


def _job(model_id: str, params: dict[str, Any]) -> StepJob:
    model = MODELS_BY_ID[model_id]
    return StepJob("run_1", "step_1", "text_to_image", model, "byok", params, "babychain:run_1:k:1", model.output_kind)


def test_every_adapter_treats_a_redirect_the_same_way() -> None:
    """A 3xx is neither followed nor read as a result, even when its body looks like one."""
    errors: list[ProviderError] = []
    with BflStandIn(KEY) as bfl:
        bfl.fail_next_submit(302, body={"id": "a", "polling_url": f"{bfl.api_base}/get_result?id=a"})
        provider = BflProvider(KEY, base_url=bfl.api_base, allow_loopback=True)
        errors.append(raised(lambda: provider.submit(_job("bfl/flux-2-pro", {"prompt": "x"}))))
    with BytePlusStandIn(api_key=KEY) as ark:
        ark.fail_next_submit(302, body={"id": "cgt-20250101000000-abcde"})
        byteplus = BytePlusProvider(KEY, base_url=ark.base_url, allow_loopback=True)
        video = _job("bytedance/seedance-1.5-pro", {"content": [{"type": "text", "text": "x"}]})
        errors.append(raised(lambda: byteplus.submit(video)))
    with BabySeaStandIn() as sea:
        sea.fail_next_submit(303, body={"status": "success", "data": {"generation_id": "gen_1"}})
        babysea = BabySeaProvider(sea.api_key, base_url=sea.base_url, allow_loopback=True)
        errors.append(raised(lambda: babysea.submit(_job("bytedance/seedream-4.5", {"generation_prompt": "x"}))))
    local_server = Scripted()
    try:
        local_server.answer(302, {"id": "job-1", "status": "queued"}, Location="http://127.0.0.1:1/")
        local = LocalProvider(local_server.url)
        errors.append(raised(lambda: local.poll("job-1", {})))
    finally:
        local_server.close()
    labels = ["BFL", "BytePlus ModelArk", "BabySea", "Local provider"]
    for label, error in zip(labels, errors, strict=True):
        assert (error.code, error.transient, error.retry_after) == ("provider_unexpected_response", False, None)
        assert error.message.startswith(f"{label} answered HTTP 30") and "redirect" in error.message
