"""BabySeaProvider against the BabySea stand-in over real loopback HTTP, with real media decoded."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from babychain.chains.catalog import MODELS_BY_ID
from babychain.errors import ConfigurationError, ProviderError
from babychain.local.receiver import WebhookReceiver
from babychain.providers.babysea import BabySeaProvider
from babychain.providers.base import JobStatus, StepJob, WebhookNotice, WebhookRejected
from tests.standins.babysea import BabySeaStandIn, sign_webhook

WEBHOOK_SECRET = "whsec_c3RhbmRpbi13ZWJob29rLXNlY3JldC0zMi1ieXRlcyE="
IMAGE_MODEL = "bytedance/seedream-4.5"
FLUX_MODEL = "bfl/flux-2-pro"
VIDEO_MODEL = "bytedance/seedance-1.5-pro"


@pytest.fixture
def server() -> Iterator[BabySeaStandIn]:
    with BabySeaStandIn(delay_seconds=0.15) as stand_in:
        yield stand_in


@pytest.fixture
def provider(server: BabySeaStandIn) -> Iterator[BabySeaProvider]:
    adapter = BabySeaProvider(
        server.api_key, base_url=server.base_url, allow_loopback=True, webhook_secret=WEBHOOK_SECRET, timeout=5
    )
    yield adapter
    adapter.close()


def make_job(model_id: str, params: dict[str, Any], *, step_kind: str = "image", key: str | None = None) -> StepJob:
    return StepJob(
        run_id="run_1",
        step_id="step_1",
        step_key="text_to_image" if step_kind == "image" else "image_to_video",
        model=MODELS_BY_ID[model_id],
        mode="babysea",
        params=params,
        idempotency_key=key or f"babychain:{uuid.uuid4()}:step:1",
        step_kind=step_kind,
    )


def wait_terminal(provider: BabySeaProvider, job_id: str, timeout: float = 8.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = provider.poll(job_id, {})
        if status.state != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.03)


def raises(call: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call()
    return info.value


# ------------------------------------------------------------------------------------------------ submit + poll


def test_image_submit_sends_the_documented_request_and_polls_to_a_real_png(
    server: BabySeaStandIn, provider: BabySeaProvider
) -> None:
    params = {
        "generation_prompt": "a lighthouse at dusk",
        "generation_ratio": "16:9",
        "generation_output_format": "png",
        "generation_provider_order": "byteplus, replicate, fal",
    }
    job = make_job(IMAGE_MODEL, params, key="babychain:run_1:text_to_image:1")
    submission = provider.submit(job)

    [sent] = server.requests_to("POST", "/v1/generate/")
    assert sent.path == "/v1/generate/image/bytedance/seedream-4.5"
    assert sent.headers["Authorization"] == f"Bearer {server.api_key}"
    assert sent.headers["Idempotency-Key"] == "babychain:run_1:text_to_image:1"
    assert sent.json == params
    assert submission.job_id in server.generations
    assert submission.output_urls is None
    meta = submission.metadata
    assert meta["request_id"].startswith("req_")
    assert meta["prediction_id"] == server.record(submission.job_id)["generation_prediction_id"]
    assert meta["provider_order"] == ["byteplus", "replicate", "fal"]
    assert meta["idempotency_replayed"] is False

    status = wait_terminal(provider, submission.job_id)
    assert status.state == "succeeded", status
    assert status.metadata["provider_used"] == "byteplus"
    assert status.metadata["metrics"]["total_time"] > 0
    [url] = status.output_urls
    image = Image.open(io.BytesIO(httpx.get(url).content))
    assert image.format == "PNG"
    assert image.size == (1024, 576)
    assert server.requests_to("GET", f"/v1/content/{submission.job_id}")


def test_video_step_uses_the_video_route_and_returns_a_real_mp4(
    server: BabySeaStandIn, provider: BabySeaProvider
) -> None:
    still = provider.submit(
        make_job(FLUX_MODEL, {"generation_prompt": "a red kite", "generation_output_format": "jpg"})
    )
    [image_url] = wait_terminal(provider, still.job_id).output_urls

    params = {
        "generation_prompt": "the kite drifts",
        "generation_duration": 1,
        "generation_ratio": "1:1",
        "generation_input_file": [image_url],
    }
    submission = provider.submit(make_job(VIDEO_MODEL, params, step_kind="video"))
    sent = server.requests_to("POST", "/v1/generate/video/")[-1]
    assert sent.path == "/v1/generate/video/bytedance/seedance-1.5-pro"
    assert sent.json == params

    status = wait_terminal(provider, submission.job_id)
    assert status.state == "succeeded", status
    [video_url] = status.output_urls
    assert video_url.endswith(".mp4")
    with av.open(io.BytesIO(httpx.get(video_url).content), mode="r") as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    assert len(frames) >= 10
    assert frames[0].width == frames[0].height  # the 1:1 ratio was honoured
    # The stand-in fetched the image from the URL we passed.
    assert server.requests_to("GET", "/files/" + image_url.rsplit("/", 1)[-1])


def test_every_status_string_is_mapped(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.hold = True
    job_id = provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "held"})).job_id

    pending = provider.poll(job_id, {})
    assert (pending.state, pending.metadata["last_status"]) == ("pending", "pending")
    server.advance(job_id)
    processing = provider.poll(job_id, {})
    assert (processing.state, processing.metadata["last_status"]) == ("pending", "processing")
    server.advance(job_id)
    assert provider.poll(job_id, {}).state == "succeeded"

    server.set_generation(job_id, generation_status="failed", generation_error_code="BSE3001", generation_error="boom")
    failed = provider.poll(job_id, {})
    assert (failed.state, failed.error_code, failed.error_message) == ("failed", "provider_failed", "boom")
    assert failed.metadata["provider_error_code"] == "BSE3001"

    server.set_generation(job_id, generation_status="canceled")
    assert provider.poll(job_id, {}).state == "canceled"

    server.set_generation(job_id, generation_status="warming_up")  # undocumented: not an answer yet
    assert provider.poll(job_id, {}).state == "pending"

    server.set_generation(job_id, generation_status="succeeded", generation_output_file=[])
    empty = provider.poll(job_id, {})
    assert (empty.state, empty.error_code) == ("failed", "provider_unexpected_response")

    server.set_generation(job_id, generation_output_file=["http://x/y.png"], generation_removed=True)
    removed = provider.poll(job_id, {})
    assert (removed.state, removed.error_code) == ("failed", "provider_expired")


def test_moderated_generation_is_permanent_content_moderated(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.moderate_next()
    status = wait_terminal(provider, provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})).job_id)
    assert status.state == "failed"
    assert status.error_code == "provider_content_moderated"
    assert "Content policy" in (status.error_message or "")


def test_failed_generation_maps_to_provider_failed(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.fail_next_job("BSE3002", "The inference provider timed out.")
    status = wait_terminal(provider, provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})).job_id)
    assert (status.state, status.error_code) == ("failed", "provider_failed")
    assert status.error_message == "The inference provider timed out."


def test_failover_serves_from_the_next_provider_in_order(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.fail_providers(["bfl"])
    params = {"generation_prompt": "failover", "generation_provider_order": "bfl, replicate, fal"}
    status = wait_terminal(provider, provider.submit(make_job(FLUX_MODEL, params)).job_id)
    assert status.state == "succeeded"
    assert status.metadata["provider_used"] == "replicate"

    server.fail_providers(["bfl", "replicate", "fal"])
    exhausted = wait_terminal(provider, provider.submit(make_job(FLUX_MODEL, params)).job_id)
    assert (exhausted.state, exhausted.error_code) == ("failed", "provider_failed")
    assert exhausted.metadata["provider_error_code"] == "BSE3003"


def test_poll_of_an_unknown_generation_is_task_not_found(provider: BabySeaProvider) -> None:
    error = raises(lambda: provider.poll(str(uuid.uuid4()), {}))
    assert (error.code, error.transient) == ("provider_task_not_found", False)
    assert raises(lambda: provider.poll("../v1/estimate", {})).code == "provider_task_not_found"


# -------------------------------------------------------------------------------------------------- idempotency


def test_same_idempotency_key_replays_instead_of_submitting_twice(
    server: BabySeaStandIn, provider: BabySeaProvider
) -> None:
    job = make_job(IMAGE_MODEL, {"generation_prompt": "once"})
    first = provider.submit(job)
    again = provider.submit(job)
    assert again.job_id == first.job_id
    assert again.metadata["idempotency_replayed"] is True
    assert len(server.generations) == 1

    different = make_job(IMAGE_MODEL, {"generation_prompt": "other"}, key=job.idempotency_key)
    error = raises(lambda: provider.submit(different))
    assert (error.code, error.transient) == ("provider_invalid_request", False)
    assert "BSE2015" in error.message
    assert len(server.generations) == 1


def test_replay_of_a_canceled_job_reports_its_status(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.hold = True
    job = make_job(IMAGE_MODEL, {"generation_prompt": "gone"})
    first = provider.submit(job)
    assert provider.cancel(first.job_id, first.metadata) is True
    again = provider.submit(job)
    assert again.job_id == first.job_id
    assert again.metadata["generation_status"] == "canceled"


def test_original_still_running_is_transient(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.fail_next_submit(409, code="BSE2016")
    error = raises(lambda: provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient) == ("provider_idempotency_in_progress", True)


# ------------------------------------------------------------------------------------------------------- errors


def test_validation_errors_are_permanent_invalid_request(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    error = raises(lambda: provider.submit(make_job(IMAGE_MODEL, {"generation_ratio": "1:1"})))
    assert (error.code, error.transient) == ("provider_invalid_request", False)
    assert "generation_prompt" in error.message
    video = make_job(VIDEO_MODEL, {"generation_prompt": "no duration"}, step_kind="video")
    error = raises(lambda: provider.submit(video))
    assert (error.code, error.transient) == ("provider_invalid_request", False)
    assert "generation_duration" in error.message
    assert not server.generations


def test_insufficient_credits_is_permanent_quota_exceeded(provider: BabySeaProvider) -> None:
    with BabySeaStandIn(credit_balance=0.01) as poor:
        adapter = BabySeaProvider(poor.api_key, base_url=poor.base_url, allow_loopback=True)
        error = raises(lambda: adapter.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient) == ("provider_quota_exceeded", False)
    assert "BSE1004" in error.message


def test_402_fault_is_quota_exceeded(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.fail_next_submit(402)
    error = raises(lambda: provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient) == ("provider_quota_exceeded", False)


def test_rate_limit_is_transient_with_retry_after(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.fail_next_submit(429, retry_after=7)
    error = raises(lambda: provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient, error.retry_after) == ("provider_rate_limited", True, 7.0)
    # Without the header, details.retry_after_seconds still says how long to wait.
    body = {
        "status": "error",
        "request_id": "req_1",
        "error": {
            "code": "BSE1009",
            "type": "concurrency_limit_exceeded",
            "message": "Too many in-flight generations.",
            "retryable": True,
            "details": {"retry_after_seconds": 12},
        },
    }
    server.fail_next_poll(429, body=body)
    error = raises(lambda: provider.poll(str(uuid.uuid4()), {}))
    assert (error.code, error.transient, error.retry_after) == ("provider_rate_limited", True, 12.0)


def test_server_errors_follow_the_retryable_flag(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    job = make_job(IMAGE_MODEL, {"generation_prompt": "x"})
    server.fail_next_submit(503)
    error = raises(lambda: provider.submit(job))
    assert (error.code, error.transient) == ("provider_unavailable", True)
    server.fail_next_submit(500, body="upstream connect error")  # not even JSON
    assert raises(lambda: provider.submit(job)).transient is True
    server.fail_next_submit(502, code="BSE3003", retryable=False)
    error = raises(lambda: provider.submit(job))
    assert (error.code, error.transient) == ("provider_failed", False)
    assert provider.submit(job).job_id in server.generations  # the fault queue is drained


def test_content_policy_at_submit_is_moderated(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.fail_next_submit(422, code="BSE2006")
    error = raises(lambda: provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient) == ("provider_content_moderated", False)


def test_bad_key_is_unauthorized_and_the_key_never_leaks(server: BabySeaStandIn) -> None:
    wrong = BabySeaProvider("bye_wrong_key_123", base_url=server.base_url, allow_loopback=True)
    error = raises(lambda: wrong.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient) == ("provider_unauthorized", False)
    assert "BSE1002" in error.message

    adapter = BabySeaProvider(server.api_key, base_url=server.base_url, allow_loopback=True)
    echo = {"status": "error", "error": {"code": "BSE2001", "message": f"bad key {server.api_key} " + "x" * 900}}
    server.fail_next_submit(400, body=echo)
    error = raises(lambda: adapter.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert server.api_key not in error.message
    assert "[redacted]" in error.message
    assert len(error.message) <= 500


def test_plain_edge_403_is_unauthorized(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.edge_reject_next()
    error = raises(lambda: provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient) == ("provider_unauthorized", False)
    assert "edge" in error.message


def test_network_errors_and_timeouts_are_transient(server: BabySeaStandIn) -> None:
    with BabySeaStandIn() as gone:
        base = gone.base_url
    closed = BabySeaProvider("bye_k", base_url=base, allow_loopback=True)
    error = raises(lambda: closed.poll(str(uuid.uuid4()), {}))
    assert (error.code, error.transient) == ("provider_network_error", True)

    slow = BabySeaProvider(server.api_key, base_url=server.base_url, allow_loopback=True, timeout=0.2)
    server.stall_next("submit", 0.6)
    error = raises(lambda: slow.submit(make_job(IMAGE_MODEL, {"generation_prompt": "x"})))
    assert (error.code, error.transient) == ("provider_timeout", True)


# ----------------------------------------------------------------------------------------------------- allowlist


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.us.babysea.ai", "https://api.us.babysea.ai"),
        ("https://api.eu.babysea.ai/v1/", "https://api.eu.babysea.ai"),
        ("https://API.JP.babysea.ai", "https://api.jp.babysea.ai"),
    ],
)
def test_allowlisted_regional_hosts(base_url: str, expected: str) -> None:
    assert BabySeaProvider("bye_k", base_url=base_url).base_url == expected


@pytest.mark.parametrize(
    ("base_url", "allow_loopback"),
    [
        ("http://api.us.babysea.ai", False),
        ("https://api.babysea.ai", False),  # the superseded legacy API
        ("https://api.us.babysea.ai.evil.com", False),
        ("https://evil.com", True),
        ("https://user:pw@api.us.babysea.ai", False),
        ("https://api.us.babysea.ai:8443", False),
        ("https://api.us.babysea.ai/other", False),
        ("http://127.0.0.1:8080", False),
        ("http://10.0.0.5:8080", True),
    ],
)
def test_other_hosts_are_refused(base_url: str, allow_loopback: bool) -> None:
    with pytest.raises(ConfigurationError):
        BabySeaProvider("bye_k", base_url=base_url, allow_loopback=allow_loopback)


def test_loopback_only_with_the_flag() -> None:
    assert BabySeaProvider("bye_k", base_url="http://localhost:9", allow_loopback=True).base_url == "http://localhost:9"
    with pytest.raises(ConfigurationError):
        BabySeaProvider("", base_url="http://localhost:9", allow_loopback=True)


# -------------------------------------------------------------------------------------------------------- cancel


def test_cancel_pending_job_then_poll_reports_canceled(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    server.hold = True
    job_id = provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "stop"})).job_id
    server.advance(job_id)  # processing: at the upstream provider
    assert provider.cancel(job_id, {}) is True
    [sent] = server.requests_to("POST", "/v1/content/generation/cancel/")
    assert sent.path == f"/v1/content/generation/cancel/{job_id}"
    assert sent.headers["Authorization"] == f"Bearer {server.api_key}"
    assert server.record(job_id)["provider_cancel_sent"] is True
    assert provider.poll(job_id, {}).state == "canceled"
    assert provider.cancel(job_id, {}) is True  # canceling twice is fine


def test_cancel_never_raises(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    job_id = provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "done"})).job_id
    assert wait_terminal(provider, job_id).state == "succeeded"
    assert provider.cancel(job_id, {}) is False  # terminal: cannot cancel
    assert provider.cancel(str(uuid.uuid4()), {}) is False  # unknown
    server.fail_next_cancel(503)
    assert provider.cancel(job_id, {}) is False
    # A 200 that does not say "canceled" is not an accepted cancel.
    server.fail_next_cancel(
        200, body={"status": "success", "data": {"generation_id": job_id, "generation_status": "succeeded"}}
    )
    assert provider.cancel(job_id, {}) is False
    assert len(server.requests_to("POST", "/v1/content/generation/cancel/")) == 4


# ------------------------------------------------------------------------------------------------------ estimate


def test_estimate_image_and_video(server: BabySeaStandIn, provider: BabySeaProvider) -> None:
    image = provider.estimate(FLUX_MODEL, "image", {"generation_prompt": "x", "generation_output_number": 2})
    assert image == {
        "amount": 0.06,
        "currency": "USD",
        "basis": "babysea_estimate",
        "details": image["details"],
    }
    assert image["details"]["cost_per_generation"] == 0.03
    params = {"generation_duration": 4, "generation_resolution": "1080p", "generation_generate_audio": True}
    video = provider.estimate(VIDEO_MODEL, "video", params)
    assert video["amount"] == pytest.approx(0.56)
    assert video["details"]["duration_seconds"] == 4
    sent = server.requests_to("GET", "/v1/estimate/")
    assert [r.path for r in sent] == ["/v1/estimate/bfl/flux-2-pro", "/v1/estimate/bytedance/seedance-1.5-pro"]
    assert sent[0].query == {"count": "2"}
    assert sent[1].query == {"count": "1", "duration": "4", "resolution": "1080p", "audio": "true"}


# ------------------------------------------------------------------------------------------------------ webhooks


def signed(
    body: bytes, *, secret: str = WEBHOOK_SECRET, at: float | None = None, delivery: str = "d-1"
) -> dict[str, str]:
    return {
        "X-BabySea-Signature": sign_webhook(secret, int(at if at is not None else time.time()), body),
        "X-BabySea-Delivery-Id": delivery,
        "X-BabySea-Event": "generation.completed",
        "Content-Type": "application/json",
    }


def event_body(event: str, data: dict[str, Any], delivery: str = "d-1") -> bytes:
    return json.dumps(
        {
            "webhook_event": event,
            "webhook_timestamp": "2026-05-23T00:00:00Z",
            "webhook_delivery_id": delivery,
            "webhook_data": data,
        }
    ).encode()


def test_webhooks_from_the_stand_in_verify_and_name_the_generation() -> None:
    receiver = WebhookReceiver("unused").start()
    try:
        with BabySeaStandIn(
            delay_seconds=0.1, webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, duplicate_webhooks=True
        ) as server:
            provider = BabySeaProvider(
                server.api_key, base_url=server.base_url, allow_loopback=True, webhook_secret=WEBHOOK_SECRET
            )
            server.fail_providers(["byteplus"])
            job_id = provider.submit(make_job(IMAGE_MODEL, {"generation_prompt": "hook"})).job_id
            deliveries = receiver.wait_for(4, timeout=5)  # started + completed, each delivered twice
    finally:
        receiver.stop()
    assert len(deliveries) == 4
    notices = [provider.parse_webhook(d.headers, d.body) for d in deliveries]
    assert all(n is not None and n.job_id == job_id for n in notices)
    receipts = [n.receipt_id for n in notices if n is not None]
    assert receipts[0] == receipts[1] != receipts[2] == receipts[3]  # the duplicate carries the same delivery id
    assert receipts[0] == deliveries[0].headers["x-babysea-delivery-id"]
    completed = deliveries[-1].json()
    assert completed["webhook_event"] == "generation.completed"
    assert completed["webhook_data"]["generation_provider_used"] == "replicate"
    assert completed["webhook_data"]["generation_output_file"]
    assert deliveries[0].headers["x-babysea-event"] == "generation.started"


def test_webhook_retries_until_2xx() -> None:
    receiver = WebhookReceiver("unused", answers=[500, 302]).start()
    try:
        with BabySeaStandIn(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET) as server:
            server.send_webhook("webhook.test", {"account_id": "acct_standin"})
            attempts = server.wait_for_webhooks(1)
    finally:
        receiver.stop()
    assert [a.status for a in attempts] == [500, 302, 204]  # a redirect is a failure, not followed
    assert len({a.delivery_id for a in attempts}) == 1


def test_events_without_a_job_verify_but_return_none(provider: BabySeaProvider) -> None:
    low = event_body("credits.low_balance", {"account_id": "a", "current_balance": 1.5, "thresholds_crossed": []})
    assert provider.parse_webhook(signed(low), low) is None
    ping = event_body("webhook.test", {"account_id": "a"})
    assert provider.parse_webhook(signed(ping), ping) is None
    done = event_body("generation.failed", {"generation_id": "gen-42", "generation_status": "failed"})
    assert provider.parse_webhook(signed(done), done) == WebhookNotice(job_id="gen-42", receipt_id="d-1")


def test_bad_webhooks_are_rejected(provider: BabySeaProvider) -> None:
    body = event_body("generation.completed", {"generation_id": "gen-1", "generation_status": "succeeded"})
    good = signed(body)
    assert provider.parse_webhook(good, body) is not None

    def rejected(headers: dict[str, str], payload: bytes = body) -> None:
        with pytest.raises(WebhookRejected):
            provider.parse_webhook(headers, payload)

    rejected(good, body.replace(b"gen-1", b"gen-2"))  # tampered body
    rejected(signed(body, secret="whsec_other"))  # wrong secret
    rejected(signed(body, at=time.time() - 301))  # stale
    rejected(signed(body, at=time.time() + 301))  # from the future
    rejected({k: v for k, v in good.items() if k != "X-BabySea-Signature"})
    rejected({k: v for k, v in good.items() if k != "X-BabySea-Delivery-Id"})
    rejected({**good, "X-BabySea-Delivery-Id": "d-2"})  # header and body disagree
    rejected({**good, "X-BabySea-Signature": "t=abc,v1=00"})
    # Standard Webhooks would key the HMAC with the base64-decoded secret; BabySea uses the string itself.
    decoded = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    t = int(time.time())
    wrong_key = hmac.new(decoded, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    rejected({**good, "X-BabySea-Signature": f"t={t},v1={wrong_key}"})
    no_id = event_body("generation.completed", {"generation_status": "succeeded"})
    rejected(signed(no_id), no_id)


def test_without_a_secret_every_webhook_is_rejected(server: BabySeaStandIn) -> None:
    adapter = BabySeaProvider(server.api_key, base_url=server.base_url, allow_loopback=True)
    body = event_body("generation.completed", {"generation_id": "gen-1"})
    with pytest.raises(WebhookRejected):
        adapter.parse_webhook(signed(body), body)
