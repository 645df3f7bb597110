"""The BytePlus ModelArk adapter against the ModelArk stand-in, over real HTTP on loopback, with real media decoded."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from babychain.chains.catalog import MODELS_BY_ID
from babychain.errors import ConfigurationError, ProviderError
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.providers.base import JobStatus, StepJob, Submission, WebhookNotice, WebhookRejected
from babychain.providers.byteplus import BytePlusProvider
from tests.standins.byteplus import BytePlusStandIn

KEY = "ark-test-key-7f3c9a0b"
SEEDREAM = "bytedance/seedream-4.5"
SEEDANCE = "bytedance/seedance-1.5-pro"


@pytest.fixture
def server() -> Iterator[BytePlusStandIn]:
    with BytePlusStandIn(api_key=KEY, delay_seconds=0.1, video_max_side=256, callback_retry_seconds=0.02) as s:
        yield s


@pytest.fixture
def provider(server: BytePlusStandIn) -> Iterator[BytePlusProvider]:
    p = BytePlusProvider(KEY, base_url=server.base_url, allow_loopback=True, timeout=5.0, image_timeout=10.0)
    yield p
    p.close()


def make_job(
    model_id: str, params: dict[str, Any], *, kind: str | None = None, webhook_url: str | None = None, key: str = "k1"
) -> StepJob:
    model = MODELS_BY_ID[model_id]
    return StepJob(
        run_id="run_1",
        step_id="step_1",
        step_key="image_to_video" if model.output_kind == "video" else "text_to_image",
        model=model,
        mode="byok",
        params=params,
        idempotency_key=f"babychain:run_1:{key}:1",
        step_kind=kind or model.output_kind,
        webhook_url=webhook_url,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def poll_until(provider: BytePlusProvider, sub: Submission, states: tuple[str, ...], timeout: float = 5.0) -> JobStatus:
    seen: list[JobStatus] = []

    def done() -> JobStatus | None:
        status = provider.poll(sub.job_id, sub.metadata)
        seen.append(status)
        return status if status.state in states else None

    result: JobStatus = wait_for(done, timeout)
    return result


def raises(call: Callable[[], Any]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call()
    return info.value


def text_to_image(provider: BytePlusProvider, prompt: str = "a red fox", key: str = "t2i") -> Submission:
    return provider.submit(make_job(SEEDREAM, {"prompt": prompt, "size": "1280x720", "seed": 7}, key=key))


class Receiver:
    """Catches ModelArk callbacks: records raw bodies and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                receiver.bodies.append(self.read_body())
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_bytes(status)

        self._server = LoopbackServer(Handler).start()
        self.url = f"{self._server.base_url}/webhooks/byteplus/tok_abc"

    def statuses(self) -> list[str]:
        return [json.loads(b)["status"] for b in self.bodies]

    def close(self) -> None:
        self._server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# ------------------------------------------------------------------------------------------------ Seedream


def test_text_to_image_is_synchronous_with_the_exact_request(server: BytePlusStandIn, provider: BytePlusProvider):
    sub = text_to_image(provider)

    [sent] = server.requests_for("POST", "/api/v3/images/generations")
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert sent["headers"]["x-idempotency-key"] == "babychain:run_1:t2i:1"
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["json"] == {
        "prompt": "a red fox",
        "size": "1280x720",
        "seed": 7,
        "model": "seedream-4-5-251128",
        "response_format": "url",
        "sequential_image_generation": "disabled",
    }
    assert sub.job_id.startswith("seedream-") and sub.job_id.replace("-", "").isalnum()
    assert sub.output_urls and len(sub.output_urls) == 1
    assert sub.metadata["kind"] == "sync_image"
    assert sub.metadata["output_urls"] == sub.output_urls
    assert sub.metadata["usage"]["generated_images"] == 1
    assert sub.metadata["sizes"] == ["1280x720"]
    assert sub.metadata["output_expires_at"] > time.time() + 23 * 3600

    image = Image.open(io.BytesIO(httpx.get(sub.output_urls[0]).content))
    assert image.format == "JPEG" and image.size == (1280, 720)

    # The engine may poll a synchronous job: the result replays from metadata, without another request.
    before = len(server.requests)
    status = provider.poll(sub.job_id, sub.metadata)
    assert status.state == "succeeded" and status.output_urls == sub.output_urls
    assert provider.cancel(sub.job_id, sub.metadata) is False
    assert len(server.requests) == before


def test_sync_job_id_is_stable_per_idempotency_key(provider: BytePlusProvider):
    a = text_to_image(provider, key="same")
    b = text_to_image(provider, key="same")
    c = text_to_image(provider, key="other")
    assert a.job_id == b.job_id != c.job_id


def test_image_to_image_fetches_the_input(server: BytePlusStandIn, provider: BytePlusProvider):
    source = text_to_image(provider)
    assert source.output_urls
    sub = provider.submit(make_job(SEEDREAM, {"prompt": "as a watercolour", "image": source.output_urls[0]}, key="i2i"))

    assert server.requests_for("POST", "/api/v3/images/generations")[-1]["json"]["image"] == source.output_urls[0]
    fetched = [r for r in server.requests if r["method"] == "GET" and r["path"].startswith("/files/")]
    assert fetched, "the stand-in downloads the input image"
    assert sub.output_urls
    original = Image.open(io.BytesIO(httpx.get(source.output_urls[0]).content)).convert("RGB")
    edited = Image.open(io.BytesIO(httpx.get(sub.output_urls[0]).content)).convert("RGB")
    assert edited.size == original.size
    assert edited.tobytes() != original.tobytes()


@pytest.mark.parametrize("per_image", [False, True])
def test_seedream_moderation_is_permanent(server: BytePlusStandIn, provider: BytePlusProvider, per_image: bool):
    server.moderate_next(per_image=per_image)
    error = raises(lambda: text_to_image(provider))
    assert error.code == "provider_content_moderated"
    assert error.transient is False
    assert "OutputImageSensitiveContentDetected" in error.message


def test_seedream_answer_without_urls_is_unexpected(server: BytePlusStandIn, provider: BytePlusProvider):
    server.fail_next_submit(200, body={"model": "seedream-4-5-251128", "created": 1, "data": [{"url": " "}]})
    error = raises(lambda: text_to_image(provider))
    assert (error.code, error.transient) == ("provider_unexpected_response", False)

    server.fail_next_submit(200, body="<html>gateway</html>")
    error = raises(lambda: text_to_image(provider))
    assert (error.code, error.transient) == ("provider_unexpected_response", False)


def test_seedream_per_image_internal_error_fails_permanently(server: BytePlusStandIn, provider: BytePlusProvider):
    server.fail_next_submit(
        200, body={"created": 1, "data": [{"error": {"code": "InternalServiceError", "message": "boom"}}]}
    )
    error = raises(lambda: text_to_image(provider))
    assert (error.code, error.transient) == ("provider_failed", False)
    assert "InternalServiceError: boom" in error.message


def test_sync_poll_without_recorded_outputs_fails(provider: BytePlusProvider):
    status = provider.poll("seedream-abc", {"kind": "sync_image"})
    assert (status.state, status.error_code) == ("failed", "provider_unexpected_response")


def test_image_timeout_is_transient(server: BytePlusStandIn):
    server.image_delay_seconds = 1.0
    slow = BytePlusProvider(KEY, base_url=server.base_url, allow_loopback=True, image_timeout=0.2)
    error = raises(lambda: text_to_image(slow))
    assert (error.code, error.transient) == ("provider_timeout", True)


# ------------------------------------------------------------------------------------------------ Seedance


def test_video_task_lifecycle_with_callbacks(server: BytePlusStandIn, provider: BytePlusProvider, receiver: Receiver):
    frame = text_to_image(provider, "a lighthouse")
    assert frame.output_urls
    params = {
        "content": [
            {"type": "text", "text": "slow push in"},
            {"type": "image_url", "image_url": {"url": frame.output_urls[0]}, "role": "first_frame"},
        ],
        "ratio": "16:9",
        "duration": 2,
        "watermark": False,
        "return_last_frame": True,
    }
    server.hold_queued(True)
    sub = provider.submit(make_job(SEEDANCE, params, webhook_url=receiver.url, key="i2v"))

    [sent] = server.requests_for("POST", "/api/v3/contents/generations/tasks")
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert sent["headers"]["x-idempotency-key"] == "babychain:run_1:i2v:1"
    assert sent["json"] == {**params, "model": "seedance-1-5-pro-251215", "callback_url": receiver.url}
    assert sub.job_id.startswith("cgt-") and sub.output_urls is None
    assert sub.metadata == {"kind": "video_task", "task_id": sub.job_id}

    queued = provider.poll(sub.job_id, sub.metadata)
    assert (queued.state, queued.metadata["provider_status"]) == ("pending", "queued")
    server.hold_running(True)
    server.hold_queued(False)
    running = wait_for(
        lambda: (s := provider.poll(sub.job_id, sub.metadata)).metadata["provider_status"] == "running" and s
    )
    assert running.state == "pending" and running.output_urls == []
    server.hold_running(False)
    done = poll_until(provider, sub, ("succeeded", "failed"))

    assert done.state == "succeeded", done.error_message
    [video_url] = done.output_urls
    assert done.metadata["usage"]["completion_tokens"] == done.metadata["usage"]["total_tokens"] > 0
    assert done.metadata["duration"] == 2 and done.metadata["ratio"] == "16:9"
    with av.open(io.BytesIO(httpx.get(video_url).content), mode="r") as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert frames >= 20 and stream.width / stream.height == pytest.approx(16 / 9, rel=0.05)
    last_frame = Image.open(io.BytesIO(httpx.get(done.metadata["last_frame_url"]).content))
    assert last_frame.format == "PNG" and last_frame.width / last_frame.height == pytest.approx(16 / 9, rel=0.05)

    # Unsigned callbacks with the GET-task body arrive for each documented transition; each parses to a hint.
    wait_for(lambda: "succeeded" in receiver.statuses())
    assert receiver.statuses() == ["queued", "running", "succeeded"]
    assert all("authorization" not in h for h in receiver.headers)
    notices = [provider.parse_webhook(h, b) for h, b in zip(receiver.headers, receiver.bodies, strict=True)]
    for notice, body in zip(notices, receiver.bodies, strict=True):
        task = json.loads(body)
        assert notice == WebhookNotice(sub.job_id, f"{sub.job_id}:{task['status']}:{task['updated_at']}")
    assert json.loads(receiver.bodies[-1])["content"]["video_url"] == video_url


def test_text_only_video_and_no_callback_without_webhook_url(server: BytePlusStandIn, provider: BytePlusProvider):
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "waves"}], "duration": 2}))
    assert "callback_url" not in server.requests_for("POST", "/api/v3/contents/generations/tasks")[0]["json"]
    done = poll_until(provider, sub, ("succeeded", "failed"))
    assert done.state == "succeeded" and "last_frame_url" not in done.metadata
    assert server.callbacks == []


def test_seedance_model_is_a_video_task_whatever_the_step_kind(server: BytePlusStandIn, provider: BytePlusProvider):
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]}, kind="image"))
    assert sub.metadata["kind"] == "video_task"
    assert len(server.requests_for("POST", "/api/v3/contents/generations/tasks")) == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("OutputVideoSensitiveContentDetected", "provider_content_moderated"),
        ("InputImageSensitiveContentDetected", "provider_content_moderated"),
        ("SensitiveContentDetected.SevereViolation", "provider_content_moderated"),
    ],
)
def test_moderated_video_task(server: BytePlusStandIn, provider: BytePlusProvider, code: str, expected: str):
    server.moderate_next(code)
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}], "duration": 2}))
    done = poll_until(provider, sub, ("succeeded", "failed"))
    assert (done.state, done.error_code) == ("failed", expected)
    assert done.error_message and code in done.error_message
    assert done.metadata["provider_error_code"] == code


def test_failed_and_expired_video_tasks(server: BytePlusStandIn, provider: BytePlusProvider):
    server.fail_next_job("InternalServiceError", "The service encountered an unexpected internal error.")
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]}, key="a"))
    failed = poll_until(provider, sub, ("failed", "succeeded"))
    assert (failed.state, failed.error_code) == ("failed", "provider_failed")
    assert failed.error_message and failed.error_message.startswith("InternalServiceError: The service")

    server.expire_next()
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]}, key="b"))
    expired = poll_until(provider, sub, ("failed", "succeeded"))
    assert (expired.state, expired.error_code, expired.metadata["provider_status"]) == (
        "failed",
        "provider_expired",
        "expired",
    )


TASK: dict[str, Any] = {
    "id": "cgt-20250101000000-abcde",
    "model": "seedance-1-5-pro-251215",
    "created_at": 1,
    "updated_at": 2,
}


@pytest.mark.parametrize(
    ("task", "state", "code"),
    [
        ({"status": "queued", "error": None}, "pending", None),
        ({"status": "running", "error": None}, "pending", None),
        ({"status": "succeeded", "content": {"video_url": "https://x.example/v.mp4"}}, "succeeded", None),
        ({"status": "succeeded", "content": {}}, "failed", "provider_unexpected_response"),
        ({"status": "failed", "error": {"code": "InternalServiceError", "message": "m"}}, "failed", "provider_failed"),
        ({"status": "failed", "error": None}, "failed", "provider_failed"),
        (
            {"status": "failed", "error": {"code": "InputTextSensitiveContentDetected", "message": "m"}},
            "failed",
            "provider_content_moderated",
        ),
        ({"status": "expired", "error": None}, "failed", "provider_expired"),
        ({"status": "cancelled", "error": None}, "canceled", None),
        ({"status": "some_new_state"}, "pending", None),
    ],
)
def test_every_task_status_maps(provider: BytePlusProvider, task: dict[str, Any], state: str, code: str | None):
    status = provider.task_status({**TASK, **task})
    assert (status.state, status.error_code) == (state, code)
    assert status.metadata["provider_status"] == task["status"]


def test_task_without_status_is_unexpected(provider: BytePlusProvider):
    assert raises(lambda: provider.task_status(dict(TASK))).code == "provider_unexpected_response"


def test_unknown_or_deleted_task_is_not_found(server: BytePlusStandIn, provider: BytePlusProvider):
    error = raises(lambda: provider.poll("cgt-20250101000000-zzzzz", {"kind": "video_task"}))
    assert (error.code, error.transient) == ("provider_task_not_found", False)

    # A finished task's record can be deleted (e.g. from the console); afterwards it is gone for good.
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}], "duration": 2}))
    poll_until(provider, sub, ("succeeded",))
    deleted = httpx.delete(
        f"{server.base_url}/contents/generations/tasks/{sub.job_id}", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert raises(lambda: provider.poll(sub.job_id, sub.metadata)).code == "provider_task_not_found"


def test_invalid_video_request_is_permanent(server: BytePlusStandIn, provider: BytePlusProvider):
    # Bypasses the engine's schema on purpose: the stand-in validates like ModelArk does.
    job = make_job(SEEDANCE, {"content": [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]})
    error = raises(lambda: provider.submit(job))
    assert (error.code, error.transient) == ("provider_invalid_request", False)
    assert "MissingParameter" in error.message


# ------------------------------------------------------------------------------------------------ cancel


def test_cancel_queued_task(server: BytePlusStandIn, provider: BytePlusProvider):
    server.hold_queued(True)
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]}))
    assert provider.cancel(sub.job_id, sub.metadata) is True
    assert len(server.requests_for("DELETE", f"/api/v3/contents/generations/tasks/{sub.job_id}")) == 1
    assert provider.poll(sub.job_id, sub.metadata).state == "canceled"
    assert provider.cancel(sub.job_id, sub.metadata) is True  # already cancelled: nothing more to send
    assert len(server.requests_for("DELETE", f"/api/v3/contents/generations/tasks/{sub.job_id}")) == 1


def test_running_task_cannot_be_cancelled(server: BytePlusStandIn, provider: BytePlusProvider):
    server.hold_queued(True)
    server.hold_running(True)
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}], "duration": 2}))
    # The task starts between our read and the DELETE: ModelArk refuses, and cancel says False without raising.
    server.race_next_delete()
    assert provider.cancel(sub.job_id, sub.metadata) is False
    assert (server.task(sub.job_id) or {}).get("status") == "running"
    assert len(server.requests_for("DELETE", f"/api/v3/contents/generations/tasks/{sub.job_id}")) == 1
    # Read as running: no DELETE is sent at all.
    assert provider.cancel(sub.job_id, sub.metadata) is False
    assert len(server.requests_for("DELETE", f"/api/v3/contents/generations/tasks/{sub.job_id}")) == 1
    server.hold_running(False)
    assert poll_until(provider, sub, ("succeeded", "failed")).state == "succeeded"


def test_cancel_of_finished_or_unknown_task_deletes_nothing(server: BytePlusStandIn, provider: BytePlusProvider):
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}], "duration": 2}))
    poll_until(provider, sub, ("succeeded",))
    assert provider.cancel(sub.job_id, sub.metadata) is False
    assert provider.cancel("cgt-20250101000000-zzzzz", {}) is False
    assert not [r for r in server.requests if r["method"] == "DELETE"]
    assert provider.poll(sub.job_id, sub.metadata).state == "succeeded"  # the record is still there


def test_cancel_never_raises_when_unreachable(server: BytePlusStandIn):
    p = BytePlusProvider(KEY, base_url="http://127.0.0.1:9/api/v3", allow_loopback=True, timeout=1.0)
    assert p.cancel("cgt-20250101000000-abcde", {"kind": "video_task"}) is False


# ------------------------------------------------------------------------------------------------ HTTP errors


@pytest.mark.parametrize("kind", ["image", "video"])
def test_rate_limit_is_transient_with_retry_after(server: BytePlusStandIn, provider: BytePlusProvider, kind: str):
    server.fail_next_submit(429, retry_after=7)
    params = {"prompt": "x"} if kind == "image" else {"content": [{"type": "text", "text": "x"}]}
    error = raises(lambda: provider.submit(make_job(SEEDREAM if kind == "image" else SEEDANCE, params)))
    assert (error.code, error.transient, error.retry_after) == ("provider_rate_limited", True, 7.0)
    assert "RateLimitExceeded" in error.message


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient_and_a_retry_submits_once_more(
    server: BytePlusStandIn, provider: BytePlusProvider, status: int
):
    server.fail_next_submit(status)
    error = raises(lambda: provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]})))
    assert (error.code, error.transient) == ("provider_unavailable", True)
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]}))
    assert sub.job_id.startswith("cgt-")
    assert len(server.requests_for("POST", "/api/v3/contents/generations/tasks")) == 2
    assert len(server.tasks) == 1


def test_overdue_account_is_quota_not_unauthorized(server: BytePlusStandIn, provider: BytePlusProvider):
    sub = provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]}))
    server.overdue(True)
    for call in (lambda: text_to_image(provider), lambda: provider.poll(sub.job_id, sub.metadata)):
        error = raises(call)
        assert (error.code, error.transient) == ("provider_quota_exceeded", False)
        assert "AccountOverdueError" in error.message


def test_payment_required_is_quota(server: BytePlusStandIn, provider: BytePlusProvider):
    server.fail_next_submit(402, body={"error": {"code": "InsufficientBalance", "message": "top up"}})
    error = raises(lambda: text_to_image(provider))
    assert (error.code, error.transient) == ("provider_quota_exceeded", False)


def test_bad_key_is_unauthorized_and_never_echoed(server: BytePlusStandIn):
    wrong = "ark-wrong-key-123456"
    p = BytePlusProvider(wrong, base_url=server.base_url, allow_loopback=True)
    error = raises(lambda: text_to_image(p))
    assert (error.code, error.transient) == ("provider_unauthorized", False)
    assert "AuthenticationError" in error.message and wrong not in error.message
    server.fail_next_submit(403, body={"error": {"code": "AccessDenied", "message": "no access"}})
    assert raises(lambda: text_to_image(BytePlusProvider(KEY, base_url=server.base_url, allow_loopback=True))).code == (
        "provider_unauthorized"
    )


def test_error_text_is_scrubbed_and_truncated(server: BytePlusStandIn, provider: BytePlusProvider):
    server.fail_next_submit(400, body={"error": {"code": "InvalidParameter", "message": f"bad {KEY} " + "x" * 2000}})
    error = raises(lambda: text_to_image(provider))
    assert error.code == "provider_invalid_request"
    assert KEY not in error.message and "[redacted]" in error.message
    assert len(error.message) <= 500


def test_flat_string_error_body_is_kept(server: BytePlusStandIn, provider: BytePlusProvider):
    server.fail_next_submit(400, body={"error": "prompt too long"})
    error = raises(lambda: text_to_image(provider))
    assert error.code == "provider_invalid_request" and "prompt too long" in error.message


def test_input_moderation_at_submit_is_permanent(server: BytePlusStandIn, provider: BytePlusProvider):
    body = {"error": {"code": "InputTextSensitiveContentDetected", "message": "The input text may be sensitive."}}
    server.fail_next_submit(400, body=body)
    error = raises(lambda: provider.submit(make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}]})))
    assert (error.code, error.transient) == ("provider_content_moderated", False)


def test_connection_error_is_transient():
    p = BytePlusProvider(KEY, base_url="http://127.0.0.1:9/api/v3", allow_loopback=True, timeout=1.0)
    error = raises(lambda: text_to_image(p))
    assert (error.code, error.transient) == ("provider_network_error", True)


# ------------------------------------------------------------------------------------------------ config & webhooks


@pytest.mark.parametrize(
    "url",
    [
        "https://ark.ap-southeast.bytepluses.com/api/v3",
        "https://ark.ap-southeast.bytepluses.com/api/v3/",
        "https://ARK.ap-southeast.bytepluses.com:443/api/v3",
    ],
)
def test_allowlisted_base_url(url: str):
    assert BytePlusProvider(KEY, base_url=url).base_url.endswith("/api/v3")


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://ark.ap-southeast.bytepluses.com/api/v3", False),
        ("https://ark.cn-beijing.volces.com/api/v3", False),
        ("https://ark.ap-southeast.bytepluses.com.evil.example/api/v3", False),
        ("https://evil.example/ark.ap-southeast.bytepluses.com/api/v3", False),
        ("https://user:pw@ark.ap-southeast.bytepluses.com/api/v3", False),
        ("https://ark.ap-southeast.bytepluses.com:8443/api/v3", False),
        ("https://ark.ap-southeast.bytepluses.com/api/v3?x=1", False),
        ("http://127.0.0.1:8080/api/v3", False),
        ("http://localhost:8080/api/v3", False),
        ("http://10.0.0.5/api/v3", True),
        ("http://169.254.169.254/api/v3", True),
        ("ftp://127.0.0.1/api/v3", True),
    ],
)
def test_base_url_outside_the_allowlist_is_refused(url: str, loopback: bool):
    with pytest.raises(ConfigurationError):
        BytePlusProvider(KEY, base_url=url, allow_loopback=loopback)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/api/v3", "http://localhost:1/api/v3", "http://[::1]:2/api/v3"])
def test_loopback_only_when_allowed(url: str):
    assert BytePlusProvider(KEY, base_url=url, allow_loopback=True).base_url == url


def test_empty_key_is_refused():
    with pytest.raises(ConfigurationError):
        BytePlusProvider("")


def test_webhook_notice_from_a_task_body(provider: BytePlusProvider):
    body = json.dumps({**TASK, "status": "succeeded", "content": {"video_url": "https://x.example/v.mp4"}}).encode()
    notice = provider.parse_webhook({}, body)
    assert notice == WebhookNotice(TASK["id"], f"{TASK['id']}:succeeded:2")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"status": "succeeded"}).encode(),
        json.dumps({"id": "../../etc", "status": "succeeded"}).encode(),
        json.dumps({"id": "cgt-1\n", "status": "succeeded"}).encode(),
        json.dumps({"id": "cgt-1", "status": None}).encode(),
        json.dumps({"id": "cgt-1", "status": "Succeeded; drop"}).encode(),
        json.dumps({"id": "cgt-1", "status": "running", "updated_at": "yesterday"}).encode(),
    ],
)
def test_malformed_webhook_is_rejected(provider: BytePlusProvider, body: bytes):
    with pytest.raises(WebhookRejected):
        provider.parse_webhook({}, body)


def test_standin_retries_unacknowledged_terminal_callbacks(server: BytePlusStandIn, provider: BytePlusProvider):
    failing = Receiver(status=500)
    try:
        job = make_job(SEEDANCE, {"content": [{"type": "text", "text": "x"}], "duration": 2}, webhook_url=failing.url)
        provider.submit(job)
        wait_for(lambda: failing.statuses().count("succeeded") == 4)
        time.sleep(0.1)
        assert failing.statuses().count("succeeded") == 4  # the first delivery plus 3 retries, then it gives up
        assert failing.statuses().count("running") == 1  # non-terminal deliveries are not retried
    finally:
        failing.close()
