"""A loopback stand-in for Black Forest Labs' FLUX API (reference/providers.md §1), for adapter and engine tests.

It speaks the documented protocol: `POST /v1/<model>` with `x-key`, FastAPI-style 422 bodies, `{id, polling_url,
cost, input_mp, output_mp}` answers, `GET /v1/get_result?id=` with the exact status strings, delivery URLs that
expire like signed URLs, and webhooks signed `X-BFL-Signature: sha256=<hex>` when a request asks for one. Outputs
are real images made by `babychain.local.media`.

    with BflStandIn() as server:
        provider = BflProvider(server.api_key, base_url=server.base_url + "/v1", allow_loopback=True)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx

from babychain.local import media
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.security.urls import is_loopback_address


@dataclass(frozen=True)
class _Model:
    default_format: str
    first_mp: float  # credits for the first output megapixel (1 credit = $0.01), per BFL's skill price list
    extra_mp: float  # credits per further megapixel, and per input megapixel
    formats: tuple[str, ...] = ("jpeg", "png")
    default_size: tuple[int, int] = (1024, 1024)


MODELS: dict[str, _Model] = {
    "flux-2-pro": _Model("jpeg", 3.0, 1.5),
    "flux-2-max": _Model("jpeg", 7.0, 3.0),
    "flux-2-flex": _Model("jpeg", 5.0, 5.0),
    "flux-2-klein-4b": _Model("jpeg", 1.4, 1.4),
    "flux-2-klein-9b": _Model("jpeg", 1.5, 1.5),
    "flux-kontext-pro": _Model("png", 4.0, 0.0),
    "flux-kontext-max": _Model("png", 8.0, 0.0),
    "flux-pro-1.1": _Model("jpeg", 4.0, 0.0, default_size=(1024, 768)),
}
MODERATION_KINDS = ("Request Moderated", "Content Moderated")


@dataclass
class _Fault:
    status: int
    body: Any
    retry_after: float | None
    times: int


@dataclass
class _Job:
    id: str
    model: str
    request: dict[str, Any]
    outcome: str | None  # None: generate; "Error", "Request Moderated" or "Content Moderated": end that way
    created_at: float
    ready_at: float
    status: str = "Pending"
    result: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    content: bytes = b""
    content_type: str = ""
    sample_name: str = ""
    sample_expires_at: float = 0.0
    forgotten: bool = False
    webhook_sent: bool = False
    timer: threading.Timer | None = field(default=None, repr=False)


class BflStandIn(LoopbackServer):
    """The stand-in server. Control API: fail_next_submit, fail_next_poll, moderate_next, error_next (alias
    fail_next_job), forget, stall_next, expire_samples, serve_next_sample; records in `requests` and
    `webhook_deliveries`."""

    def __init__(
        self,
        api_key: str = "bfl_standin_key_0001",
        *,
        delay_seconds: float = 0.2,
        sample_ttl_seconds: float = 600.0,
        webhook_response: Literal["async", "webhook"] = "async",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.delay_seconds = delay_seconds
        self.sample_ttl_seconds = sample_ttl_seconds  # read when a job turns Ready
        # "async": the submit answer is AsyncResponse {id, polling_url, ...} (what the brief and the reference show);
        # "webhook": a request with webhook_url gets AsyncWebhookResponse {id, status, webhook_url} (BFL's OpenAPI).
        self.webhook_response = webhook_response
        self.requests: list[dict[str, Any]] = []  # method, path, headers (lower-case names), json
        self.webhook_deliveries: list[dict[str, Any]] = []  # url, headers, body, status (or error)
        self.jobs: dict[str, _Job] = {}
        self._signing_key = secrets.token_bytes(32)  # signs delivery URLs, like a storage SAS key
        self._submit_faults: list[_Fault] = []
        self._poll_faults: list[_Fault] = []
        self._outcomes: list[str] = []
        self._stalls: list[float] = []
        self._samples: list[tuple[bytes, str]] = []
        self._lock = threading.Lock()
        self._webhook_done = threading.Condition(self._lock)
        super().__init__(self._handler_class(), host=host, port=port, name="bfl-standin")

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def api_base(self) -> str:
        """The API lives under `/v1` of `base_url` (the adapter's base URL)."""
        return self.base_url + "/v1"

    def stop(self) -> None:
        with self._lock:
            for job in self.jobs.values():
                if job.timer is not None:
                    job.timer.cancel()
        super().stop()

    # ------------------------------------------------------------------------------------------ control API

    def fail_next_submit(self, status: int, times: int = 1, body: Any = None, retry_after: float | None = None) -> None:
        """The next `times` submits (after the key check) answer `status` with `body` (default a FastAPI detail).

        A 2xx status with a body scripts the submit answer itself, e.g. one without `polling_url`.
        """
        with self._lock:
            self._submit_faults.append(_Fault(status, body, retry_after, times))

    def fail_next_poll(self, status: int, times: int = 1, body: Any = None, retry_after: float | None = None) -> None:
        """The next `times` get_result calls answer `status` with `body`; 200 with a body scripts any status."""
        with self._lock:
            self._poll_faults.append(_Fault(status, body, retry_after, times))

    def moderate_next(self, kind: str = "Request Moderated") -> None:
        """The next job ends moderated: "Request Moderated" at once, "Content Moderated" after generation."""
        if kind not in MODERATION_KINDS:
            raise ValueError(f"kind must be one of {MODERATION_KINDS}")
        with self._lock:
            self._outcomes.append(kind)

    def error_next(self) -> None:
        """The next job ends with status "Error"."""
        with self._lock:
            self._outcomes.append("Error")

    def fail_next_job(self) -> None:
        self.error_next()

    def forget(self, job_id: str) -> None:
        """get_result answers "Task not found" for this job from now on (as for an expired task)."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None:
                job.forgotten = True

    def stall_next(self, seconds: float) -> None:
        """The next request of any kind waits `seconds` before answering (for client timeouts)."""
        with self._lock:
            self._stalls.append(seconds)

    def expire_samples(self) -> None:
        """Every delivery URL handed out so far expires now."""
        with self._lock:
            for job in self.jobs.values():
                job.sample_expires_at = min(job.sample_expires_at, time.time() - 1)

    def serve_next_sample(self, content: bytes, content_type: str) -> None:
        """The next job that turns Ready delivers these bytes with this Content-Type instead of its image (a delivery
        host that serves something else, or labels it wrongly)."""
        with self._lock:
            self._samples.append((content, content_type))

    def submits(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST"]

    def wait_for_webhooks(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._webhook_done:
            while len(self.webhook_deliveries) < count and time.monotonic() < deadline:
                self._webhook_done.wait(max(0.0, deadline - time.monotonic()))
            return list(self.webhook_deliveries)

    def job_status(self, job_id: str) -> str | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return job.status if job else None

    # ------------------------------------------------------------------------------------------ protocol

    def _take(self, faults: list[_Fault]) -> _Fault | None:
        if not faults:
            return None
        fault = faults[0]
        fault.times -= 1
        if fault.times <= 0:
            faults.pop(0)
        return fault

    def _take_stall(self) -> float:
        with self._lock:
            return self._stalls.pop(0) if self._stalls else 0.0

    def _submit(self, model: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            fault = self._take(self._submit_faults)
        if fault is not None:
            return _fault_answer(fault)
        errors = _validate(MODELS[model], body)
        if errors:
            return 422, {"detail": errors}, {}
        spec = MODELS[model]
        width, height = _size(spec, body)
        input_mp = 0.0
        if body.get("input_image"):
            input_mp = 1.0  # the real API measures the fetched image; one megapixel is close enough here
        output_mp = round(width * height / 1_000_000, 2)
        cost = round(spec.first_mp + spec.extra_mp * (max(0, math.ceil(output_mp) - 1) + input_mp), 2)
        now = time.time()
        with self._lock:
            outcome = self._outcomes.pop(0) if self._outcomes else None
            job = _Job(
                id=str(uuid.uuid4()),
                model=model,
                request=body,
                outcome=outcome,
                created_at=now,
                ready_at=now + self.delay_seconds,
            )
            self.jobs[job.id] = job
            if outcome == "Request Moderated":
                # Input moderation happens before any work: the task is terminal at once.
                job.status = outcome
                job.result = None
            else:
                job.timer = threading.Timer(self.delay_seconds, self._finish, (job.id,))
                job.timer.daemon = True
                job.timer.start()
        if outcome == "Request Moderated":
            self._send_webhook_async(job)
        if body.get("webhook_url") and self.webhook_response == "webhook":
            return 200, {"id": job.id, "status": "Pending", "webhook_url": body["webhook_url"]}, {}
        answer = {
            "id": job.id,
            "polling_url": f"{self.base_url}/v1/get_result?id={job.id}",
            "cost": cost,
            "input_mp": input_mp,
            "output_mp": output_mp,
        }
        return 200, answer, {}

    def _finish(self, job_id: str) -> None:
        with self._lock:
            job = self.jobs[job_id]
            if job.status != "Pending":
                return
            outcome = job.outcome
        if outcome == "Error":
            self._end(job, "Error", details={"error": "generation_failed", "message": "The generation failed."})
        elif outcome == "Content Moderated":
            self._end(job, "Content Moderated")
        else:
            try:
                content, fmt = self._render(job)
            except (ValueError, OSError, httpx.HTTPError) as exc:
                self._end(job, "Error", details={"error": "input_error", "message": str(exc)[:300]})
            else:
                self._ready(job, content, fmt)
        self._send_webhook(job)

    def _end(self, job: _Job, status: str, details: dict[str, Any] | None = None) -> None:
        with self._lock:
            job.status = status
            job.details = details

    def _ready(self, job: _Job, content: bytes, fmt: str) -> None:
        with self._lock:
            job.content = content
            job.content_type = media.content_type_for(fmt)
            if self._samples:
                job.content, job.content_type = self._samples.pop(0)
            job.sample_name = f"{job.id}.{fmt}"
            job.sample_expires_at = time.time() + self.sample_ttl_seconds
            job.result = {
                "sample": self._sample_url(job),
                "prompt": job.request.get("prompt"),
                "seed": job.request.get("seed"),
                "start_time": job.created_at,
                "end_time": time.time(),
                "duration": round(time.time() - job.created_at, 3),
            }
            job.status = "Ready"

    def _sample_url(self, job: _Job) -> str:
        expires = repr(job.sample_expires_at)
        return f"{self.base_url}/delivery/{job.sample_name}?se={expires}&sig={self._sign(job.sample_name, expires)}"

    def _sign(self, name: str, expires: str) -> str:
        return hmac.new(self._signing_key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _render(self, job: _Job) -> tuple[bytes, str]:
        spec = MODELS[job.model]
        body = job.request
        fmt = body.get("output_format") or spec.default_format
        width, height = _size(spec, body)
        source = body.get("input_image")
        if not source:
            return media.text_to_image(
                body["prompt"], seed=body.get("seed"), width=width, height=height, output_format=fmt
            ), fmt
        image = _load_input(source)
        return media.image_to_image(
            image,
            body["prompt"],
            seed=body.get("seed"),
            output_format=fmt,
            width=body.get("width"),
            height=body.get("height"),
        ), fmt

    def _result(self, job_id: str) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            fault = self._take(self._poll_faults)
            if fault is not None:
                return _fault_answer(fault)
            job = self.jobs.get(job_id)
            if job is None or job.forgotten:
                return 200, {"id": job_id, "status": "Task not found", "result": None, "progress": None}, {}
            answer: dict[str, Any] = {"id": job.id, "status": job.status, "result": job.result, "progress": None}
            if job.status == "Pending":
                elapsed = time.time() - job.created_at
                answer["progress"] = round(min(0.99, elapsed / max(self.delay_seconds, 1e-6)), 2)
            if job.details is not None:
                answer["details"] = job.details
            return 200, answer, {}

    def _delivery(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        name = path.removeprefix("/delivery/")
        expires, signature = query.get("se", [""])[0], query.get("sig", [""])[0]
        with self._lock:
            job = next((j for j in self.jobs.values() if j.sample_name and j.sample_name == name), None)
        if job is None:
            return 404, _blob_error("BlobNotFound", "The specified blob does not exist."), "application/xml"
        valid = hmac.compare_digest(signature, self._sign(name, expires))
        try:
            deadline = min(float(expires), job.sample_expires_at)
        except ValueError:
            valid = False
            deadline = 0.0
        if not valid or time.time() > deadline:
            return 403, _blob_error("AuthenticationFailed", "Signed expiry time has passed."), "application/xml"
        return 200, job.content, job.content_type

    # ------------------------------------------------------------------------------------------ webhooks

    def _webhook_payload(self, job: _Job) -> dict[str, Any]:
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        if job.status == "Ready":
            result = job.result or {}
            return {
                "id": job.id,
                "status": "Ready",
                "result": {"sample": result.get("sample"), "prompt": result.get("prompt"), "seed": result.get("seed")},
                "timestamp": stamp,
            }
        details = job.details or {}
        return {
            "id": job.id,
            "status": job.status,
            "error": details.get("error", job.status),
            "message": details.get("message", f"Task ended with status {job.status}."),
            "timestamp": stamp,
        }

    def _send_webhook_async(self, job: _Job) -> None:
        threading.Thread(target=self._send_webhook, args=(job,), daemon=True).start()

    def _send_webhook(self, job: _Job) -> None:
        url = job.request.get("webhook_url")
        with self._lock:
            if not url or job.webhook_sent:
                return
            job.webhook_sent = True
            payload = self._webhook_payload(job)
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        secret = job.request.get("webhook_secret")
        if secret:
            headers["X-BFL-Signature"] = "sha256=" + hmac.new(str(secret).encode(), data, hashlib.sha256).hexdigest()
        record: dict[str, Any] = {"url": url, "headers": headers, "body": data}
        try:
            if not _is_loopback_url(str(url)):
                raise ValueError("the stand-in only delivers webhooks to loopback URLs")
            response = httpx.post(str(url), content=data, headers=headers, timeout=5.0)
            record["status"] = response.status_code
        except (httpx.HTTPError, ValueError) as exc:
            record["error"] = str(exc)
        with self._webhook_done:
            self.webhook_deliveries.append(record)
            self._webhook_done.notify_all()

    # ------------------------------------------------------------------------------------------ HTTP

    def _handler_class(self) -> type[QuietHandler]:
        server = self

        class Handler(QuietHandler):
            def _record(self, body: Any) -> None:
                with server._lock:
                    server.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "json": body,
                        }
                    )

            def _authorized(self) -> bool:
                given = self.headers.get("x-key")
                if not given:
                    self.send_json(403, {"detail": "Not authenticated"})
                    return False
                if not hmac.compare_digest(given.encode(), server.api_key.encode()):
                    self.send_json(403, {"detail": "Invalid API key"})
                    return False
                return True

            def do_POST(self) -> None:
                stall = server._take_stall()
                raw = self.read_body()
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                    parsed_ok = False
                else:
                    parsed_ok = True
                self._record(body)
                time.sleep(stall)
                path = urlsplit(self.path).path
                model = path.removeprefix("/v1/")
                if not path.startswith("/v1/") or model not in MODELS:
                    return self.send_json(404, {"detail": "Not Found"})
                if not self._authorized():
                    return None
                if not parsed_ok:
                    error = {"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error", "input": {}}
                    return self.send_json(422, {"detail": [error]})
                if not isinstance(body, dict):
                    error = {
                        "type": "model_attributes_type",
                        "loc": ["body"],
                        "msg": "Input should be a valid dictionary or object to extract fields from",
                        "input": body,
                    }
                    return self.send_json(422, {"detail": [error]})
                status, answer, headers = server._submit(model, body)
                return self.send_json(status, answer, headers)

            def do_GET(self) -> None:
                stall = server._take_stall()
                self._record(None)
                time.sleep(stall)
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path.startswith("/delivery/"):
                    # Delivery URLs are signed and need no key, like BFL's delivery hosts.
                    status, data, content_type = server._delivery(url.path, query)
                    return self.send_bytes(status, data, content_type)
                if url.path != "/v1/get_result":
                    return self.send_json(404, {"detail": "Not Found"})
                if not self._authorized():
                    return None
                job_id = query.get("id", [""])[0]
                if not job_id:
                    error = {"type": "missing", "loc": ["query", "id"], "msg": "Field required", "input": None}
                    return self.send_json(422, {"detail": [error]})
                status, answer, headers = server._result(job_id)
                return self.send_json(status, answer, headers)

        return Handler


def _fault_answer(fault: _Fault) -> tuple[int, Any, dict[str, str]]:
    headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else {}
    body = fault.body if fault.body is not None else {"detail": f"Injected HTTP {fault.status}"}
    return fault.status, body, headers


def _missing(name: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": body}


def _validate(spec: _Model, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A few of the checks FastAPI runs on BFL's input models, with its error item shape."""
    errors: list[dict[str, Any]] = []
    prompt = body.get("prompt")
    if prompt is None:
        errors.append(_missing("prompt", body))
    elif not isinstance(prompt, str):
        errors.append({"type": "string_type", "loc": ["body", "prompt"], "msg": "Input should be a valid string"})
    for name in ("width", "height", "seed"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            errors.append({"type": "int_type", "loc": ["body", name], "msg": "Input should be a valid integer"})
    fmt = body.get("output_format")
    if fmt is not None and fmt not in spec.formats:
        allowed = " or ".join(repr(f) for f in spec.formats)
        errors.append({"type": "enum", "loc": ["body", "output_format"], "msg": f"Input should be {allowed}"})
    for name in ("webhook_url", "webhook_secret", "input_image"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors.append({"type": "string_type", "loc": ["body", name], "msg": "Input should be a valid string"})
    return errors


def _size(spec: _Model, body: dict[str, Any]) -> tuple[int, int]:
    width = body.get("width") or spec.default_size[0]
    height = body.get("height") or spec.default_size[1]
    return int(width), int(height)


def _is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme in ("http", "https") and (host == "localhost" or is_loopback_address(host))


def _load_input(source: str) -> bytes:
    """BFL accepts an input image as a URL (fetched by the API) or base64; the stand-in fetches loopback only."""
    if source.startswith(("http://", "https://")):
        if not _is_loopback_url(source):
            raise ValueError("the stand-in only fetches input images from loopback URLs")
        response = httpx.get(source, timeout=10.0)
        if response.status_code != 200:
            raise ValueError(f"input_image download failed with HTTP {response.status_code}")
        return response.content
    data = source.split(",", 1)[1] if source.startswith("data:") else source
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("input_image is neither a URL nor base64") from exc


def _blob_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
    )
