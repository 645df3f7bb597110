"""The BFL adapter against the BFL stand-in over real loopback HTTP, with real images decoded by Pillow."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from PIL import Image

from babychain.chains.catalog import MODELS_BY_ID, ModelSpec
from babychain.errors import ConfigurationError, ProviderError
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.providers.base import JobStatus, StepJob, Submission, WebhookNotice, WebhookRejected
from babychain.providers.bfl import BflProvider
from tests.standins.bfl import BflStandIn

KEY = "bfl_test_key_7f3a9c0d1e2b"
SECRET = "bfl-webhook-secret-for-tests"


@pytest.fixture
def server() -> Iterator[BflStandIn]:
    with BflStandIn(KEY, delay_seconds=0.15) as s:
        yield s


def provider_for(server: BflStandIn, key: str = KEY, **options: Any) -> BflProvider:
    return BflProvider(key, base_url=server.api_base, allow_loopback=True, **options)


def make_job(
    params: dict[str, Any] | None = None,
    *,
    model: str = "bfl/flux-2-pro",
    webhook_url: str | None = None,
    idempotency_key: str = "babychain:run1:text_to_image:1",
) -> StepJob:
    return StepJob(
        run_id="run1",
        step_id="step1",
        step_key="text_to_image",
        model=MODELS_BY_ID[model],
        mode="byok",
        params=params if params is not None else {"prompt": "a red fox in snow", "width": 256, "height": 192},
        idempotency_key=idempotency_key,
        webhook_url=webhook_url,
    )


def wait_terminal(provider: BflProvider, submission: Submission, timeout: float = 5.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = provider.poll(submission.job_id, submission.metadata)
        if status.state != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.03)


def raises(call: Any, *args: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call(*args)
    return info.value


class Capture:
    """A loopback webhook endpoint that records what the stand-in delivers."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        capture = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                capture.received.append((dict(self.headers.items()), self.read_body()))
                self.send_bytes(200)

        self._server = LoopbackServer(Handler).start()
        self.url = f"{self._server.base_url}/webhooks/bfl/step-token"

    def close(self) -> None:
        self._server.stop()


@pytest.fixture
def capture() -> Iterator[Capture]:
    c = Capture()
    yield c
    c.close()


# --------------------------------------------------------------------------------------------- happy path


def test_submit_sends_the_native_request_and_poll_returns_a_real_image(server: BflStandIn) -> None:
    provider = provider_for(server)
    params = {"prompt": "a red fox in snow", "width": 256, "height": 192, "seed": 7, "output_format": "jpeg"}
    submission = provider.submit(make_job(params))

    [sent] = server.submits()
    assert sent["path"] == "/v1/flux-2-pro"
    assert sent["json"] == params  # the provider-native body, unchanged, and no webhook fields
    assert sent["headers"]["x-key"] == KEY
    assert sent["headers"]["accept"] == "application/json"
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"]["x-idempotency-key"] == "babychain:run1:text_to_image:1"
    assert "authorization" not in sent["headers"]

    assert submission.job_id in server.jobs
    assert submission.metadata["polling_url"] == f"{server.base_url}/v1/get_result?id={submission.job_id}"
    assert submission.metadata["endpoint"] == "flux-2-pro"
    assert submission.metadata["cost"] == 3.0 and submission.metadata["output_mp"] == 0.05
    assert submission.metadata["input_mp"] == 0.0
    assert submission.output_urls is None

    status = wait_terminal(provider, submission)
    assert status.state == "succeeded", status
    assert status.metadata["last_status"] == "Ready"
    expires = datetime.fromisoformat(status.metadata["output_expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10)
    [sample] = status.output_urls
    assert sample.startswith(f"{server.base_url}/delivery/{submission.job_id}.jpeg?")
    polls = [r for r in server.requests if r["path"].startswith("/v1/get_result")]
    assert polls and all(r["headers"]["x-key"] == KEY for r in polls)

    response = httpx.get(sample)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (256, 192)


def test_pending_reports_progress_and_the_last_status() -> None:
    with BflStandIn(KEY, delay_seconds=2.0) as server:
        provider = provider_for(server)
        submission = provider.submit(make_job())
        time.sleep(0.1)
        status = provider.poll(submission.job_id, submission.metadata)
    assert status.state == "pending"
    assert status.metadata == {"last_status": "Pending"}
    assert status.progress is not None and 0.0 < status.progress < 0.5


def test_image_to_image_fetches_the_input_url_and_edits_it(server: BflStandIn) -> None:
    provider = provider_for(server)
    first = wait_terminal(provider, provider.submit(make_job({"prompt": "a lighthouse", "width": 320, "height": 240})))
    assert first.state == "succeeded"
    params = {"prompt": "the lighthouse at night", "input_image": first.output_urls[0], "output_format": "png"}
    submission = provider.submit(make_job(params, model="bfl/flux-kontext-pro", idempotency_key="k2"))
    assert server.submits()[-1]["path"] == "/v1/flux-kontext-pro"
    assert server.submits()[-1]["json"]["input_image"] == first.output_urls[0]
    edited = wait_terminal(provider, submission)
    assert edited.state == "succeeded", edited
    data = httpx.get(edited.output_urls[0]).content
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (320, 240)
    original = Image.open(io.BytesIO(httpx.get(first.output_urls[0]).content)).convert("RGB")
    assert image.convert("RGB").tobytes() != original.tobytes()


def test_sample_urls_expire_like_signed_urls() -> None:
    with BflStandIn(KEY, delay_seconds=0.05) as server:
        provider = provider_for(server)
        status = wait_terminal(provider, provider.submit(make_job()))
        url = status.output_urls[0]
        assert httpx.get(url).status_code == 200
        server.expire_samples()  # what their time-to-live does, without a race against a loaded machine
        expired = httpx.get(url)
        assert expired.status_code == 403 and b"AuthenticationFailed" in expired.content
        assert httpx.get(url.replace("sig=", "sig=0")).status_code == 403
        assert httpx.get(f"{server.base_url}/delivery/nope.jpeg").status_code == 404


def test_expire_samples_ends_every_handed_out_url(server: BflStandIn) -> None:
    provider = provider_for(server)
    url = wait_terminal(provider, provider.submit(make_job())).output_urls[0]
    assert httpx.get(url).status_code == 200
    server.expire_samples()
    assert httpx.get(url).status_code == 403


# --------------------------------------------------------------------------------------------- status mapping


@pytest.mark.parametrize(
    ("answer", "state", "code"),
    [
        ({"status": "Pending", "progress": 0.4}, "pending", None),
        ({"status": "Pending", "progress": 40}, "pending", None),
        ({"status": "Ready", "result": {"sample": "https://delivery.eu.bfl.ai/x.jpeg"}}, "succeeded", None),
        ({"status": "Ready", "result": None}, "failed", "provider_unexpected_response"),
        ({"status": "Ready", "result": {"prompt": "x"}}, "failed", "provider_unexpected_response"),
        ({"status": "Request Moderated", "result": None}, "failed", "provider_content_moderated"),
        ({"status": "Content Moderated", "result": None}, "failed", "provider_content_moderated"),
        ({"status": "Task not found", "result": None}, "failed", "provider_task_not_found"),
        ({"status": "Error", "result": None, "details": {"message": "boom"}}, "failed", "provider_failed"),
        ({"status": "Failed", "result": None}, "failed", "provider_failed"),
        ({"status": "Queued", "result": None}, "pending", None),
    ],
)
def test_every_status_string_maps(server: BflStandIn, answer: dict[str, Any], state: str, code: str | None) -> None:
    server.fail_next_poll(200, body={"id": "job-1", **answer})
    status = provider_for(server).poll("job-1", {"polling_url": f"{server.api_base}/get_result?id=job-1"})
    assert status.state == state
    assert status.error_code == code
    assert status.metadata["last_status"] == answer["status"]
    if state == "succeeded":
        assert status.output_urls == ["https://delivery.eu.bfl.ai/x.jpeg"]
    if answer["status"] == "Pending":
        assert status.progress == 0.4
    if code is not None:
        assert status.error_message and answer["status"] in status.error_message
    if answer["status"] == "Error":
        assert "boom" in (status.error_message or "")


@pytest.mark.parametrize("kind", ["Request Moderated", "Content Moderated"])
def test_moderation_fails_the_job_permanently(server: BflStandIn, kind: str) -> None:
    server.moderate_next(kind)
    provider = provider_for(server)
    submission = provider.submit(make_job())
    status = wait_terminal(provider, submission)
    assert (status.state, status.error_code) == ("failed", "provider_content_moderated")
    assert status.error_message == f"BFL status: {kind}"
    assert server.job_status(submission.job_id) == kind


def test_generation_error_and_forgotten_tasks(server: BflStandIn) -> None:
    provider = provider_for(server)
    server.error_next()
    failed = wait_terminal(provider, provider.submit(make_job()))
    assert (failed.state, failed.error_code) == ("failed", "provider_failed")
    assert "The generation failed." in (failed.error_message or "")

    submission = provider.submit(make_job(idempotency_key="k2"))
    server.forget(submission.job_id)
    lost = provider.poll(submission.job_id, submission.metadata)
    assert (lost.state, lost.error_code) == ("failed", "provider_task_not_found")
    unknown = provider.poll("nope", {"polling_url": f"{server.api_base}/get_result?id=nope"})
    assert unknown.error_code == "provider_task_not_found"


# --------------------------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "transient"),
    [
        (402, None, "provider_quota_exceeded", False),
        (429, 7, "provider_rate_limited", True),
        (500, None, "provider_unavailable", True),
        (503, 2, "provider_unavailable", True),
        (400, None, "provider_invalid_request", False),
    ],
)
def test_submit_http_errors_map_to_step_codes(
    server: BflStandIn, status: int, retry_after: int | None, code: str, transient: bool
) -> None:
    server.fail_next_submit(status, body={"detail": f"answer {status}"}, retry_after=retry_after)
    error = raises(provider_for(server).submit, make_job())
    assert (error.code, error.transient) == (code, transient)
    assert error.retry_after == (float(retry_after) if retry_after is not None else None)
    assert f"HTTP {status}" in error.message and f"answer {status}" in error.message


def test_fail_next_submit_counts_down(server: BflStandIn) -> None:
    server.fail_next_submit(503, times=2)
    provider = provider_for(server)
    assert raises(provider.submit, make_job()).code == "provider_unavailable"
    assert raises(provider.submit, make_job()).code == "provider_unavailable"
    assert provider.submit(make_job()).job_id in server.jobs


def test_missing_prompt_is_a_422_validation_error(server: BflStandIn) -> None:
    error = raises(provider_for(server).submit, make_job({"width": 256, "height": 256}))
    assert (error.code, error.transient) == ("provider_invalid_request", False)
    assert "HTTP 422" in error.message and "prompt: Field required" in error.message
    raw = httpx.post(f"{server.api_base}/flux-2-pro", headers={"x-key": KEY}, json={"seed": 1})
    assert raw.status_code == 422
    [item] = raw.json()["detail"]
    assert item["loc"] == ["body", "prompt"] and item["type"] == "missing"


def test_a_bad_key_is_unauthorized_and_never_echoed(server: BflStandIn) -> None:
    wrong = "bfl_wrong_key_that_must_not_leak"
    error = raises(provider_for(server, key=wrong).submit, make_job())
    assert (error.code, error.transient) == ("provider_unauthorized", False)
    assert wrong not in error.message
    missing = httpx.post(f"{server.api_base}/flux-2-pro", json={"prompt": "x"})
    assert missing.status_code == 403 and missing.json()["detail"]
    assert httpx.get(f"{server.api_base}/get_result?id=x").status_code == 403
    assert not server.jobs


def test_error_bodies_are_scrubbed_of_the_key_and_truncated(server: BflStandIn) -> None:
    server.fail_next_submit(400, body={"detail": f"bad request from {KEY} " + "x" * 2000})
    error = raises(provider_for(server).submit, make_job())
    assert KEY not in error.message and "[redacted]" in error.message
    assert len(error.message) <= 500


def test_secrets_are_scrubbed_before_the_error_text_is_bounded(server: BflStandIn) -> None:
    # An echo of both secrets, then the key again across the 500th character of the quoted body: cut first, that
    # last copy would have been a piece of the key the scrub cannot recognise.
    echo = f"{KEY} {SECRET} {KEY} "
    server.fail_next_submit(401, body={"error": echo + "x" * (484 - len('{"error": "') - len(echo)) + KEY + " end"})
    error = raises(provider_for(server, webhook_secret=SECRET).submit, make_job())
    assert KEY[:12] not in error.message and SECRET not in error.message and "[redacted]" in error.message
    assert len(error.message) <= 500


def test_unknown_model_is_not_found(server: BflStandIn) -> None:
    spec = ModelSpec("bfl/flux-9", "FLUX 9", "bfl", "flux-9-nope", ("text_to_image",), "flux2")
    job = StepJob("run1", "step1", "text_to_image", spec, "byok", {"prompt": "x"}, "k")
    error = raises(provider_for(server).submit, job)
    assert (error.code, error.transient) == ("provider_not_found", False)
    bad = ModelSpec("bfl/evil", "evil", "bfl", "../get_result", ("text_to_image",), "flux2")
    error = raises(provider_for(server).submit, StepJob("r", "s", "text_to_image", bad, "byok", {"prompt": "x"}, "k"))
    assert error.code == "provider_invalid_request"
    assert len(server.submits()) == 1


def test_poll_http_errors(server: BflStandIn) -> None:
    provider = provider_for(server)
    submission = provider.submit(make_job())
    server.fail_next_poll(503, retry_after=3)
    error = raises(provider.poll, submission.job_id, submission.metadata)
    assert (error.code, error.transient, error.retry_after) == ("provider_unavailable", True, 3.0)
    server.fail_next_poll(429)
    assert raises(provider.poll, submission.job_id, submission.metadata).transient
    server.fail_next_poll(403)
    assert raises(provider.poll, submission.job_id, submission.metadata).code == "provider_unauthorized"
    server.fail_next_poll(404)
    error = raises(provider.poll, submission.job_id, submission.metadata)
    assert (error.code, error.transient) == ("provider_task_not_found", False)
    server.fail_next_poll(200, body=["not", "an", "object"])
    error = raises(provider.poll, submission.job_id, submission.metadata)
    assert (error.code, error.transient) == ("provider_unexpected_response", True)
    assert wait_terminal(provider, submission).state == "succeeded"  # the job itself was never harmed


def test_network_errors_and_timeouts_are_transient(server: BflStandIn) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = BflProvider(KEY, base_url=f"http://127.0.0.1:{port}/v1", allow_loopback=True)
    error = raises(closed.submit, make_job())
    assert (error.code, error.transient) == ("provider_network_error", True)
    assert KEY not in error.message

    server.stall_next(1.0)
    error = raises(provider_for(server, timeout=0.2).submit, make_job())
    assert (error.code, error.transient) == ("provider_timeout", True)


# --------------------------------------------------------------------------------------------- allowlist


@pytest.mark.parametrize(
    "url",
    [
        "https://api.bfl.ai/v1",
        "https://api.eu.bfl.ai/v1",
        "https://api.us.bfl.ai/v1/",
        "https://api.eu1.bfl.ai/v1",
    ],
)
def test_bfl_hosts_are_allowed(url: str) -> None:
    assert BflProvider(KEY, base_url=url).base_url == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "allow_loopback"),
    [
        ("http://api.bfl.ai/v1", False),
        ("https://api.bfl.ai.evil.com/v1", False),
        ("https://evilbfl.ai/v1", False),
        ("https://bfl.ai.example/v1", False),
        ("https://user:pw@api.bfl.ai/v1", False),
        ("https://api.bfl.ai./v1", False),
        ("https://api.bfl.ai/v1?x=1", False),
        ("http://127.0.0.1:8080/v1", False),
        ("http://localhost:8080/v1", False),
        ("http://10.0.0.5/v1", True),
        ("http://example.com/v1", True),
        ("ftp://127.0.0.1/v1", True),
    ],
)
def test_other_hosts_are_refused(url: str, allow_loopback: bool) -> None:
    with pytest.raises(ConfigurationError, match="base URL"):
        BflProvider(KEY, base_url=url, allow_loopback=allow_loopback)


def test_loopback_is_allowed_only_on_request() -> None:
    assert BflProvider(KEY, base_url="http://127.0.0.1:9/v1", allow_loopback=True).base_url == "http://127.0.0.1:9/v1"
    assert BflProvider(KEY, base_url="http://localhost:9/v1", allow_loopback=True)
    with pytest.raises(ConfigurationError):
        BflProvider("", base_url="https://api.bfl.ai/v1")


def test_submit_refuses_a_polling_url_off_the_allowlist(server: BflStandIn) -> None:
    provider = provider_for(server)
    server.fail_next_submit(200, body={"id": "abc", "polling_url": "https://evil.example/v1/get_result?id=abc"})
    error = raises(provider.submit, make_job())
    assert (error.code, error.transient) == ("provider_request_blocked", False)
    server.fail_next_submit(200, body={"id": "abc", "polling_url": "http://api.eu2.bfl.ai/v1/get_result?id=abc"})
    assert raises(provider.submit, make_job()).code == "provider_request_blocked"
    # Another BFL cluster is fine: polling_url is kept verbatim.
    cluster = "https://api.eu2.bfl.ai/v1/get_result?id=abc"
    server.fail_next_submit(200, body={"id": "abc", "polling_url": cluster, "cost": 3.0})
    submission = provider.submit(make_job())
    assert submission.job_id == "abc"
    assert submission.metadata == {"polling_url": cluster, "endpoint": "flux-2-pro", "cost": 3.0}


@pytest.mark.parametrize("body", [{"id": "abc"}, {"polling_url": "https://api.bfl.ai/v1/get_result?id=a"}, [1], {}])
def test_submit_answer_without_id_or_polling_url_is_unexpected(server: BflStandIn, body: Any) -> None:
    server.fail_next_submit(200, body=body)
    error = raises(provider_for(server).submit, make_job())
    assert (error.code, error.transient) == ("provider_unexpected_response", False)


def test_poll_refuses_a_stored_polling_url_off_the_allowlist(server: BflStandIn) -> None:
    before = len(server.requests)
    error = raises(provider_for(server).poll, "abc", {"polling_url": "https://evil.example/v1/get_result?id=abc"})
    assert (error.code, error.transient) == ("provider_request_blocked", False)
    assert len(server.requests) == before


def test_cancel_is_a_no_op_without_a_request(server: BflStandIn) -> None:
    provider = provider_for(server)
    submission = provider.submit(make_job())
    before = len(server.requests)
    assert provider.cancel(submission.job_id, submission.metadata) is False
    assert len(server.requests) == before


# --------------------------------------------------------------------------------------------- webhooks


def test_webhook_round_trip_is_signed_and_verifies(server: BflStandIn, capture: Capture) -> None:
    provider = provider_for(server, webhook_secret=SECRET)
    submission = provider.submit(make_job(webhook_url=capture.url))
    sent = server.submits()[-1]["json"]
    assert sent["webhook_url"] == capture.url and sent["webhook_secret"] == SECRET
    assert submission.metadata["polling_url"].endswith(submission.job_id)

    [delivery] = server.wait_for_webhooks(1)
    assert delivery["status"] == 200
    [(headers, body)] = capture.received
    payload = json.loads(body)
    assert payload["id"] == submission.job_id and payload["status"] == "Ready"
    assert payload["result"]["sample"].startswith(f"{server.base_url}/delivery/")
    assert provider.parse_webhook(headers, body) == WebhookNotice(submission.job_id, f"{submission.job_id}:Ready")
    lower = {k.lower(): v for k, v in headers.items()}
    assert provider.parse_webhook(lower, body) is not None


def test_error_webhooks_carry_the_failure(server: BflStandIn, capture: Capture) -> None:
    provider = provider_for(server, webhook_secret=SECRET)
    server.error_next()
    submission = provider.submit(make_job(webhook_url=capture.url))
    server.wait_for_webhooks(1)
    [(headers, body)] = capture.received
    payload = json.loads(body)
    assert payload["status"] == "Error" and payload["error"] and payload["message"]
    notice = provider.parse_webhook(headers, body)
    assert notice == WebhookNotice(submission.job_id, f"{submission.job_id}:Error")


def test_no_webhook_is_requested_without_a_secret(server: BflStandIn, capture: Capture) -> None:
    provider = provider_for(server)
    wait_terminal(provider, provider.submit(make_job(webhook_url=capture.url)))
    sent = server.submits()[-1]["json"]
    assert "webhook_url" not in sent and "webhook_secret" not in sent
    assert not capture.received
    with pytest.raises(WebhookRejected, match="secret"):
        provider.parse_webhook({"X-BFL-Signature": "sha256=00"}, b"{}")


def test_callers_cannot_smuggle_webhook_fields(server: BflStandIn) -> None:
    params = {"prompt": "x", "webhook_url": "http://127.0.0.1:1/steal", "webhook_secret": "mine"}
    provider_for(server).submit(make_job(params))
    assert server.submits()[-1]["json"] == {"prompt": "x"}


def test_a_webhook_style_submit_answer_polls_get_result_on_the_base_host(capture: Capture) -> None:
    with BflStandIn(KEY, delay_seconds=0.05, webhook_response="webhook") as server:
        provider = provider_for(server, webhook_secret=SECRET)
        submission = provider.submit(make_job(webhook_url=capture.url))
        assert submission.metadata["polling_url"] == f"{server.api_base}/get_result?id={submission.job_id}"
        assert submission.metadata["polling_url_derived"] is True
        assert wait_terminal(provider, submission).state == "succeeded"
        # Without a webhook request the same answer shape would be a broken AsyncResponse.
        server.fail_next_submit(200, body={"id": "abc", "status": "Pending", "webhook_url": capture.url})
        assert raises(provider_for(server).submit, make_job()).code == "provider_unexpected_response"


def _signed(payload: dict[str, Any], secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-BFL-Signature": signature, "Content-Type": "application/json"}, body


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def test_parse_webhook_accepts_a_good_signature_and_timestamp_forms() -> None:
    provider = BflProvider(KEY, webhook_secret=SECRET)
    for stamp in (_now(), time.time(), int(time.time() * 1000), None):
        payload: dict[str, Any] = {"id": "job-9", "status": "Ready", "result": {"sample": "https://x"}}
        if stamp is not None:
            payload["timestamp"] = stamp
        headers, body = _signed(payload)
        assert provider.parse_webhook(headers, body) == WebhookNotice("job-9", "job-9:Ready")


@pytest.mark.parametrize(
    "case",
    ["missing header", "bad signature", "other secret", "wrong scheme", "stale", "future", "bad timestamp", "no id"],
)
def test_parse_webhook_rejects(case: str) -> None:
    provider = BflProvider(KEY, webhook_secret=SECRET)
    payload: dict[str, Any] = {"id": "job-9", "status": "Ready", "timestamp": _now()}
    if case == "stale":
        payload["timestamp"] = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    if case == "future":
        payload["timestamp"] = time.time() + 900
    if case == "bad timestamp":
        payload["timestamp"] = "yesterday"
    if case == "no id":
        del payload["id"]
    headers, body = _signed(payload, "not-the-secret" if case == "other secret" else SECRET)
    if case == "missing header":
        del headers["X-BFL-Signature"]
    if case == "bad signature":
        body = body.replace(b"job-9", b"job-8")
    if case == "wrong scheme":
        headers["X-BFL-Signature"] = headers["X-BFL-Signature"].replace("sha256=", "sha1=")
    with pytest.raises(WebhookRejected):
        provider.parse_webhook(headers, body)


def test_parse_webhook_rejects_signed_garbage() -> None:
    provider = BflProvider(KEY, webhook_secret=SECRET)
    body = b"not json"
    headers = {"x-bfl-signature": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    with pytest.raises(WebhookRejected, match="JSON"):
        provider.parse_webhook(headers, body)
    with pytest.raises(WebhookRejected):
        provider.parse_webhook({"x-bfl-signature": "sha256=\u00e9\u00e9"}, body)
