"""A loopback stand-in for BabySea's hosted `/v1` API, faithful to the wire protocol in reference/providers.md §3.

It speaks the documented paths, envelopes, BSE error codes, status strings and idempotency rules, serves real media
made by `babychain.local.media`, plays BabySea's failover across a model's provider stack, and sends
account-level webhooks signed the BabySea way. Tests script faults and inspect what was received:

    with BabySeaStandIn(webhook_url=receiver.url, webhook_secret="whsec_x") as server:
        provider = BabySeaProvider(server.api_key, base_url=server.base_url, allow_loopback=True)
        server.fail_next_submit(429, retry_after=7)
        server.fail_providers(["bfl"])
        ...
        server.requests  # every request received: method, path, query, headers, json
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import httpx

from babychain.chains.catalog import MODELS
from babychain.local import media
from babychain.local.loopback import LoopbackServer, QuietHandler

PROVIDER_IDS = ("alibabacloud", "bfl", "byteplus", "cloudflare", "fal", "openai", "replicate", "runway")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_\-:.]{1,255}$")
PROVIDER_ORDER_ITEM = re.compile(r"^[a-z]+$")

# Each model accepts only its fixed provider stack (BabySea docs); these mirror the documented examples.
_STACKS = {"bfl": ("bfl", "replicate", "fal"), "bytedance": ("byteplus", "replicate", "fal")}
IMAGE_PRICES = {"bfl/flux-2-pro": 0.03, "bfl/flux-2-max": 0.07, "bytedance/seedream-4.5": 0.04}
DEFAULT_IMAGE_PRICE = 0.05
VIDEO_PRICE_PER_SECOND = {"480p": 0.03, "720p": 0.06, "1080p": 0.12}
AUDIO_PRICE_PER_SECOND = 0.02

# Default error bodies per HTTP status: BSE codes as listed on docs.babysea.ai/setup/errors (5xx from older docs).
_DEFAULT_ERRORS: dict[int, tuple[str, str, str, bool]] = {
    400: ("BSE2001", "invalid_input", "The request is invalid.", False),
    401: ("BSE1002", "authentication_failed", "Invalid API key.", False),
    402: ("BSE1004", "insufficient_credits", "Not enough credits for this generation.", False),
    403: ("BSE1003", "insufficient_permissions", "The API key lacks the required scope.", False),
    404: ("BSE4001", "generation_not_found", "Generation not found.", False),
    409: ("BSE2015", "idempotency_key_conflict", "Idempotency-Key was used with a different body.", False),
    413: ("BSE2010", "payload_too_large", "Request body is over 100 KB.", False),
    422: ("BSE2002", "invalid_parameter", "A parameter is not valid for this model.", False),
    429: ("BSE1005", "rate_limit_exceeded", "Too many requests.", True),
    500: ("BSE5000", "internal_error", "Internal error.", True),
    502: ("BSE3001", "provider_error", "The inference provider failed.", True),
    503: ("BSE5003", "service_unavailable", "Service unavailable.", True),
    504: ("BSE3002", "provider_timeout", "The inference provider timed out.", True),
}


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """BabySea's scheme: hex HMAC-SHA256 of "t.body", keyed with the whole secret string as UTF-8 bytes."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def error_envelope(
    status: int,
    code: str | None = None,
    message: str | None = None,
    *,
    retryable: bool | None = None,
    details: dict[str, Any] | None = None,
    provider_errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    default = _DEFAULT_ERRORS.get(status, ("BSE5000", "internal_error", "Error.", status >= 500))
    kinds = {c: k for c, k, _, _ in _DEFAULT_ERRORS.values()}
    kinds.update({"BSE1001": "authentication_required", "BSE2016": "idempotency_request_in_progress"})
    kinds.update({"BSE2006": "content_policy_violation", "BSE1009": "concurrency_limit_exceeded"})
    code = code or default[0]
    error: dict[str, Any] = {
        "code": code,
        "type": kinds.get(code, default[1]),
        "message": message or default[2],
        "retryable": default[3] if retryable is None else retryable,
    }
    if details:
        error["details"] = details
    if provider_errors:
        error["provider_errors"] = provider_errors
    return {"status": "error", "request_id": f"req_{uuid.uuid4().hex}", "error": error}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stack(model_id: str) -> tuple[str, ...]:
    return _STACKS.get(model_id.split("/", 1)[0], ("replicate", "fal"))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: httpx.Headers  # case-insensitive
    json: Any
    body: bytes


@dataclass(frozen=True)
class WebhookAttempt:
    event: str
    delivery_id: str
    attempt: int
    status: int | None  # the receiver's HTTP status, None when the post failed
    body: bytes


@dataclass
class _Fault:
    status: int
    body: Any  # dict → JSON, str/bytes → plain text (the edge's non-JSON answers)
    retry_after: float | None
    times: int
    stall: float = 0.0


@dataclass
class _Generation:
    record: dict[str, Any]
    kind: str
    params: dict[str, Any]
    cost: float
    created: float
    held: bool
    fail: tuple[str, str] | None = None  # (generation_error_code, generation_error) decided at submit time
    busy: bool = False
    webhook_events: list[str] = field(default_factory=list)


class BabySeaStandIn(LoopbackServer):
    def __init__(
        self,
        api_key: str = "bye_standin_0123456789abcdef",
        *,
        delay_seconds: float = 0.2,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        duplicate_webhooks: bool = False,
        webhook_retry_delays: Iterable[float] = (0.0, 0.05, 0.2),
        credit_balance: float = 100.0,
        hold: bool = False,
        video_max_side: int = 256,
        host: str = "127.0.0.1",
    ) -> None:
        if webhook_url and not webhook_secret:
            raise ValueError("webhook_url needs webhook_secret: BabySea signs every delivery")
        self.api_key = api_key
        self.delay_seconds = delay_seconds
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.duplicate_webhooks = duplicate_webhooks
        self.webhook_retry_delays = tuple(webhook_retry_delays)
        self.credit_balance = credit_balance
        self.hold = hold  # True: new generations stay put until `advance()` moves them
        self.video_max_side = video_max_side
        self.requests: list[RecordedRequest] = []
        self.generations: dict[str, _Generation] = {}
        self.webhook_attempts: list[WebhookAttempt] = []
        self.failing_providers: set[str] = set()
        self._faults: dict[str, list[_Fault]] = {"submit": [], "poll": [], "cancel": [], "estimate": []}
        self._edge_rejects = 0
        self._next_job_fail: list[tuple[str, str]] = []
        self._idempotency: dict[str, tuple[str, dict[str, Any]]] = {}
        self._in_flight: set[str] = set()
        self._files: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.RLock()
        self._webhooks_done = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._workers = [
            threading.Thread(target=self._run_lifecycle, name="babysea-standin-jobs", daemon=True),
            threading.Thread(target=self._run_webhooks, name="babysea-standin-webhooks", daemon=True),
        ]
        super().__init__(self._handler_class(), host=host, name="babysea-standin-http")

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        super().start()
        for thread in self._workers:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        super().stop()
        for thread in self._workers:
            if thread.is_alive():
                thread.join(timeout=5)

    # ---------------------------------------------------------------------------------------- control API

    def fail_next_submit(
        self,
        status: int,
        times: int = 1,
        body: Any = None,
        retry_after: float | None = None,
        *,
        code: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        """The next `times` generate calls answer `status` with a BSE envelope (or `body` verbatim)."""
        self._queue_fault("submit", status, times, body, retry_after, code, retryable)

    def fail_next_poll(
        self, status: int, times: int = 1, body: Any = None, retry_after: float | None = None, **kw: Any
    ) -> None:
        self._queue_fault("poll", status, times, body, retry_after, kw.get("code"), kw.get("retryable"))

    def fail_next_cancel(self, status: int, times: int = 1, body: Any = None) -> None:
        self._queue_fault("cancel", status, times, body, None, None, None)

    def stall_next(self, operation: str, seconds: float, times: int = 1) -> None:
        """The next `times` calls of operation (submit/poll/cancel/estimate) answer normally but `seconds` late."""
        with self._lock:
            self._faults[operation].append(_Fault(0, None, None, times, stall=seconds))

    def edge_reject_next(self, times: int = 1) -> None:
        """The edge validator's plain-text 403 (no JSON envelope) for the next `times` API requests."""
        with self._lock:
            self._edge_rejects += times

    def moderate_next(self) -> None:
        """The next generation created ends `failed` with BSE2006 content_policy_violation."""
        self.fail_next_job("BSE2006", "Content policy violation: the provider's safety filter flagged the input.")

    def fail_next_job(self, code: str = "BSE3001", message: str = "The inference provider failed.") -> None:
        """The next generation created ends `failed` with this generation_error_code / generation_error."""
        with self._lock:
            self._next_job_fail.append((code, message))

    def fail_providers(self, providers: Iterable[str]) -> None:
        """These providers fail every job; BabySea fails over to the next one in generation_provider_order."""
        with self._lock:
            self.failing_providers = set(providers)

    def advance(self, generation_id: str) -> dict[str, Any]:
        """Move a (held) generation one step: pending → processing → its terminal state. Returns the record."""
        with self._lock:
            gen = self.generations[generation_id]
            status = gen.record["generation_status"]
        if status == "pending":
            self._start(gen)
        elif status == "processing":
            self._finish(gen)
        return self.record(generation_id)

    def set_generation(self, generation_id: str, **fields: Any) -> None:
        """Overwrite record fields (e.g. generation_status="processing") to test status mapping; holds the job."""
        with self._lock:
            gen = self.generations[generation_id]
            gen.held = True
            gen.record.update(fields)

    def record(self, generation_id: str) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.generations[generation_id].record))

    def send_webhook(self, event: str, data: dict[str, Any]) -> None:
        """Queue an account-level delivery, e.g. `webhook.test` or `credits.low_balance`."""
        self._outbox.put((event, data))

    def wait_for_webhooks(self, count: int, timeout: float = 5.0) -> list[WebhookAttempt]:
        """Waits until `count` deliveries got a 2xx (duplicates included); returns all attempts so far."""
        with self._webhooks_done:
            self._webhooks_done.wait_for(
                lambda: sum(1 for a in self.webhook_attempts if a.status and 200 <= a.status < 300) >= count, timeout
            )
            return list(self.webhook_attempts)

    def requests_to(self, method: str, prefix: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    # ------------------------------------------------------------------------------------------- internals

    def _queue_fault(
        self,
        operation: str,
        status: int,
        times: int,
        body: Any,
        retry_after: float | None,
        code: str | None,
        retryable: bool | None,
    ) -> None:
        if body is None:
            details = None
            if status == 429:
                details = {"retry_after_seconds": retry_after if retry_after is not None else 60, "limit": 60}
            body = error_envelope(status, code, retryable=retryable, details=details)
        with self._lock:
            self._faults[operation].append(_Fault(status, body, retry_after, times))

    def _take_fault(self, operation: str) -> _Fault | None:
        with self._lock:
            faults = self._faults[operation]
            if not faults:
                return None
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            return fault

    def _price(
        self, model_id: str, kind: str, count: int, duration: int, resolution: str, audio: bool
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"model_identifier": model_id, "model_type": kind, "assets_count": count}
        if kind == "video":
            per_second = VIDEO_PRICE_PER_SECOND[resolution] + (AUDIO_PRICE_PER_SECOND if audio else 0.0)
            per_generation = round(per_second * duration, 3)
            data.update(cost_per_second=per_second, duration_seconds=duration, resolution=resolution)
        else:
            per_generation = IMAGE_PRICES.get(model_id, DEFAULT_IMAGE_PRICE)
        total = round(per_generation * count, 3)
        data.update(
            cost_per_generation=per_generation,
            cost_total_consumed=total,
            credit_balance=round(self.credit_balance, 3),
            credit_balance_can_afford=self.credit_balance >= total,
            credit_balance_max_affordable=int(self.credit_balance // per_generation) if per_generation else 0,
        )
        return data

    @staticmethod
    def _model_kind(model_id: str) -> str | None:
        for model in MODELS:
            if model.id == model_id and "babysea" in model.modes:
                return model.output_kind
        return None

    def _validate(self, kind: str, model_id: str, body: dict[str, Any]) -> tuple[str, str] | None:
        """(field, message) of the first problem, the way BabySea's BSE2001 names it."""
        model_kind = self._model_kind(model_id)
        if model_kind is None:
            return "model_identifier", f"Unknown model_identifier {model_id!r}."
        if model_kind != kind:
            return "model_identifier", f"{model_id} is a {model_kind} model; use /v1/generate/{model_kind}/."
        for key in body:
            if not key.startswith("generation_"):
                return key, f"Unknown field {key!r}; BabySea takes the unified generation_* fields."
        prompt = body.get("generation_prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "generation_prompt", "generation_prompt is required."
        if kind == "video":
            duration = body.get("generation_duration")
            if isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= 15:
                return "generation_duration", "generation_duration (seconds, 1-15) is required for video."
            if body.get("generation_resolution", "720p") not in VIDEO_PRICE_PER_SECOND:
                return "generation_resolution", "generation_resolution must be 480p, 720p or 1080p."
        files = body.get("generation_input_file")
        if files is not None and (
            not isinstance(files, list)
            or len(files) > 4
            or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in files)
        ):
            return "generation_input_file", "generation_input_file must be a list of public URLs."
        formats = ("mp4",) if kind == "video" else ("png", "jpg", "jpeg", "webp")
        if body.get("generation_output_format", formats[0]) not in formats:
            return "generation_output_format", f"generation_output_format must be one of {', '.join(formats)}."
        number = body.get("generation_output_number", 1)
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 4:
            return "generation_output_number", "generation_output_number must be 1-4."
        order = body.get("generation_provider_order", "fastest")
        if not isinstance(order, str):
            return "generation_provider_order", "generation_provider_order must be a string."
        if order.strip() != "fastest":
            items = [p.strip() for p in order.split(",")]
            if not all(PROVIDER_ORDER_ITEM.match(p) and p in _stack(model_id) for p in items):
                return "generation_provider_order", f"{model_id} is served by {', '.join(_stack(model_id))} only."
        return None

    def _create(self, kind: str, model_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        problem = self._validate(kind, model_id, body)
        if problem is not None:
            return 400, error_envelope(400, "BSE2001", problem[1], details={"field": problem[0]})
        price = self._price(
            model_id,
            kind,
            body.get("generation_output_number", 1),
            body.get("generation_duration", 5),
            body.get("generation_resolution", "720p"),
            bool(body.get("generation_generate_audio")),
        )
        order_text = body.get("generation_provider_order", "fastest").strip()
        # "fastest": the router's pick; with no live latency data it falls back to the static stack order.
        order = list(_stack(model_id)) if order_text == "fastest" else [p.strip() for p in order_text.split(",")]
        with self._lock:
            cost = price["cost_total_consumed"]
            if self.credit_balance < cost:
                details = {"required": cost, "balance": round(self.credit_balance, 3)}
                return 402, error_envelope(402, "BSE1004", details=details)
            self.credit_balance -= cost  # reserved now, charged on success, refunded on failure or cancel
            generation_id = str(uuid.uuid4())
            record: dict[str, Any] = {
                **body,  # the inputs echoed back; the fields below are BabySea's own and win
                "account_id": "acct_standin",
                "generation_id": generation_id,
                "model_identifier": model_id,
                "generation_provider_order": order,
                "generation_provider_used": None,
                "generation_prediction_id": f"pred_{secrets.token_hex(8)}",
                "generation_status": "pending",
                "generation_output_file": [],
                "generation_created_at": _now_iso(),
                "generation_started_at": None,
                "generation_completed_at": None,
                "generation_metrics_total_time": None,
                "generation_metrics_predict_time": None,
                "generation_error": None,
                "generation_error_code": None,
                "generation_removed": False,
            }
            if kind == "video":
                record.setdefault("generation_resolution", "720p")
                record.setdefault("generation_generate_audio", False)
                record["generation_audio_mode"] = "generated" if record["generation_generate_audio"] else "none"
            gen = _Generation(record, kind, dict(body), cost, time.monotonic(), self.hold)
            gen.fail = self._next_job_fail.pop(0) if self._next_job_fail else None
            self.generations[generation_id] = gen
        return 200, self._success(
            "Generation started.",
            {
                "model_identifier": model_id,
                "generation_provider_order": order,
                "generation_prediction_id": record["generation_prediction_id"],
                "generation_id": generation_id,
                "generation_initialized": True,
            },
        )

    @staticmethod
    def _success(message: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "success",
            "request_id": f"req_{uuid.uuid4().hex}",
            "message": message,
            "timestamp": _now_iso(),
            "data": data,
        }

    def _run_lifecycle(self) -> None:
        while not self._stop.wait(0.01):
            now = time.monotonic()
            with self._lock:
                due = [
                    (g, g.record["generation_status"])
                    for g in self.generations.values()
                    if not g.held and not g.busy and g.record["generation_status"] in ("pending", "processing")
                ]
            for gen, status in due:
                if status == "pending" and now - gen.created >= self.delay_seconds / 3:
                    self._start(gen)
                elif status == "processing" and now - gen.created >= self.delay_seconds:
                    self._finish(gen)

    def _start(self, gen: _Generation) -> None:
        with self._lock:
            if gen.record["generation_status"] != "pending":
                return
            gen.record.update(generation_status="processing", generation_started_at=_now_iso())
        self._emit("generation.started", gen)

    def _finish(self, gen: _Generation) -> None:
        with self._lock:
            if gen.busy or gen.record["generation_status"] != "processing":
                return
            gen.busy = True
            order = list(gen.record["generation_provider_order"])
            failing = set(self.failing_providers)
        began = time.monotonic()
        served = next((p for p in order if p not in failing), None)
        outputs: list[str] = []
        error = gen.fail
        if error is None and served is None:
            error = ("BSE3003", f"All providers failed: {', '.join(order)}.")
        if error is None:
            try:
                outputs = self._render(gen)
            except (ValueError, httpx.HTTPError) as exc:
                error = ("BSE2003", f"Could not process generation_input_file: {exc}")
        with self._lock:
            gen.busy = False
            if gen.record["generation_status"] != "processing":
                return  # canceled while rendering: the cancel wins
            gen.record.update(
                generation_provider_used=served,
                generation_completed_at=_now_iso(),
                generation_metrics_total_time=round(time.monotonic() - gen.created, 3),
                generation_metrics_predict_time=round(time.monotonic() - began, 3),
            )
            if error is None:
                gen.record.update(generation_status="succeeded", generation_output_file=outputs)
            else:
                self.credit_balance += gen.cost
                gen.record.update(generation_status="failed", generation_error_code=error[0], generation_error=error[1])
        self._emit("generation.completed" if error is None else "generation.failed", gen)

    def _fetch_input(self, url: str) -> bytes:
        host = (urlsplit(url).hostname or "").lower()
        if host not in ("127.0.0.1", "localhost", "::1"):
            # The stand-in never leaves the machine; a real BabySea would download any public URL.
            raise ValueError(f"the stand-in only fetches loopback URLs, not {host!r}")
        response = httpx.get(url, timeout=10.0)
        response.raise_for_status()
        return response.content

    def _render(self, gen: _Generation) -> list[str]:
        params = gen.params
        prompt = params["generation_prompt"]
        seed = params.get("generation_seed")
        inputs = params.get("generation_input_file") or []
        source = self._fetch_input(inputs[0]) if inputs else None
        gen_id = gen.record["generation_id"]
        produced: list[tuple[bytes, str]] = []
        if gen.kind == "video":
            if source is None:  # text-to-video: start from a rendered still
                source = media.text_to_image(prompt, seed=seed, width=512, height=512, output_format="jpeg")
            video = media.image_to_video(
                source,
                prompt,
                seed=seed,
                duration_seconds=float(params["generation_duration"]),
                ratio=params.get("generation_ratio"),
                max_side=self.video_max_side,
            )
            produced.append((video, "mp4"))
        else:
            fmt = params.get("generation_output_format", "png").replace("jpg", "jpeg")
            width, height = _ratio_size(params.get("generation_ratio"))
            for i in range(int(params.get("generation_output_number", 1))):
                item_seed = None if seed is None else seed + i
                if source is not None:
                    image = media.image_to_image(source, prompt, seed=item_seed, output_format=fmt)
                else:
                    image = media.text_to_image(prompt, seed=item_seed, width=width, height=height, output_format=fmt)
                produced.append((image, fmt))
        urls = []
        with self._lock:
            for i, (content, fmt) in enumerate(produced):
                name = f"{gen_id}-{i}{media.extension_for(fmt)}"
                self._files[name] = (content, media.content_type_for(fmt))
                urls.append(f"{self.base_url}/files/{name}")
        return urls

    def _cancel(self, generation_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            gen = self.generations.get(generation_id)
            if gen is None:
                return 404, error_envelope(404, "BSE4001")
            status = gen.record["generation_status"]
            if status in ("succeeded", "failed"):
                return 400, error_envelope(400, "BSE2001", f"Generation is {status} and cannot be canceled.")
            sent = status == "processing"  # only a job already at the upstream provider needs a cancel there
            if status != "canceled":
                self.credit_balance += gen.cost
                gen.record.update(generation_status="canceled", generation_completed_at=_now_iso())
                gen.record["credits_refunded"] = True
                gen.record["provider_cancel_sent"] = sent
                emit = True
            else:
                emit = False
            data = {
                "generation_id": generation_id,
                "generation_status": "canceled",
                "provider_cancel_sent": gen.record.get("provider_cancel_sent", False),
                "credits_refunded": gen.record.get("credits_refunded", False),
            }
        if emit:
            self._emit("generation.canceled", gen)
        return 200, self._success("Generation canceled.", data)

    def _estimate(self, model_id: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        kind = self._model_kind(model_id)
        if kind is None:
            return 400, error_envelope(400, "BSE2001", f"Unknown model_identifier {model_id!r}.")
        try:
            count = int(query.get("count", "1"))
            duration = int(query.get("duration", "5"))
        except ValueError:
            return 400, error_envelope(400, "BSE2001", "count and duration must be integers.")
        resolution = query.get("resolution", "720p")
        if not 1 <= count <= 100 or not 1 <= duration <= 15 or resolution not in VIDEO_PRICE_PER_SECOND:
            return 400, error_envelope(400, "BSE2001", "count is 1-100, duration 1-15, resolution 480p/720p/1080p.")
        audio = query.get("audio", "false").lower() == "true"
        with self._lock:
            return 200, self._success("Estimate.", self._price(model_id, kind, count, duration, resolution, audio))

    # ------------------------------------------------------------------------------------------- webhooks

    def _emit(self, event: str, gen: _Generation) -> None:
        if not self.webhook_url:
            return
        with self._lock:
            record = gen.record
            data: dict[str, Any] = {
                "account_id": record["account_id"],
                "model_identifier": record["model_identifier"],
                "generation_provider_initialize": record["generation_provider_order"][0],
                "generation_status": record["generation_status"],
                "generation_prediction_id": record["generation_prediction_id"],
                "generation_id": record["generation_id"],
            }
            if record["generation_provider_used"]:
                data["generation_provider_used"] = record["generation_provider_used"]
            if event == "generation.completed":
                data["generation_output_file"] = list(record["generation_output_file"])
            if event == "generation.failed":
                data.update(
                    generation_error=record["generation_error"],
                    generation_error_code=record["generation_error_code"],
                    credits_refunded=True,
                )
            if event == "generation.canceled":
                data["credits_refunded"] = record.get("credits_refunded", False)
            gen.webhook_events.append(event)
        self._outbox.put((event, data))

    def _run_webhooks(self) -> None:
        with httpx.Client(timeout=10.0, follow_redirects=False) as client:
            while True:
                item = self._outbox.get()
                if item is None or self._stop.is_set():
                    return
                event, data = item
                delivery_id = str(uuid.uuid4())
                body = json.dumps(
                    {
                        "webhook_event": event,
                        "webhook_timestamp": _now_iso(),
                        "webhook_delivery_id": delivery_id,
                        "webhook_data": data,
                    }
                ).encode()
                delivered = self._deliver(client, event, delivery_id, body)
                if delivered and self.duplicate_webhooks:
                    self._deliver(client, event, delivery_id, body)  # at-least-once: the same delivery again

    def _deliver(self, client: httpx.Client, event: str, delivery_id: str, body: bytes) -> bool:
        assert self.webhook_url and self.webhook_secret
        for attempt, delay in enumerate(self.webhook_retry_delays, start=1):
            if self._stop.wait(delay):
                return False
            headers = {
                "Content-Type": "application/json",
                "X-BabySea-Signature": sign_webhook(self.webhook_secret, int(time.time()), body),
                "X-BabySea-Event": event,
                "X-BabySea-Delivery-Id": delivery_id,
                "X-BabySea-Timestamp": _now_iso(),
            }
            try:
                status: int | None = client.post(self.webhook_url, content=body, headers=headers).status_code
            except httpx.HTTPError:
                status = None
            with self._webhooks_done:
                self.webhook_attempts.append(WebhookAttempt(event, delivery_id, attempt, status, body))
                self._webhooks_done.notify_all()
            if status is not None and 200 <= status < 300:  # a 3xx is a failure, never followed
                return True
        return False

    # ---------------------------------------------------------------------------------------------- HTTP

    def _handler_class(self) -> type[QuietHandler]:
        server = self

        class Handler(QuietHandler):
            def _send(
                self, status: int, body: Any, headers: dict[str, str] | None = None, content_type: str | None = None
            ) -> None:
                if isinstance(body, dict):
                    data, ctype = json.dumps(body).encode(), "application/json"
                else:
                    data = body.encode() if isinstance(body, str) else bytes(body)
                    ctype = "text/plain; charset=utf-8"
                limits = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "59"}
                limits["X-RateLimit-Reset"] = str(int(time.time()) + 60)
                self.send_bytes(status, data, content_type or ctype, {**limits, **(headers or {})})

            def _fault(self, operation: str) -> bool:
                fault = server._take_fault(operation)
                if fault is None:
                    return False
                if fault.stall:
                    time.sleep(fault.stall)
                    return False
                headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else {}
                self._send(fault.status, fault.body, headers)
                return True

            def _handle(self) -> None:
                method = self.command
                raw = self.read_body()
                split = urlsplit(self.path)
                path, query = split.path, dict(parse_qsl(split.query))
                try:
                    parsed: Any = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                with server._lock:
                    server.requests.append(
                        RecordedRequest(method, path, query, httpx.Headers(dict(self.headers.items())), parsed, raw)
                    )
                if method == "GET" and path.startswith("/files/"):
                    return self._file(path.removeprefix("/files/"))
                route = _route(method, path)
                with server._lock:
                    edge = server._edge_rejects > 0
                    server._edge_rejects -= 1 if edge else 0
                if route is None or edge:
                    return self._send(403, "Forbidden")  # the edge validator: no BSE envelope
                auth = self.headers.get("Authorization") or ""
                if not auth.startswith("Bearer "):
                    return self._send(401, error_envelope(401, "BSE1001", "Authorization: Bearer <key> is required."))
                if not hmac.compare_digest(auth.removeprefix("Bearer ").encode(), server.api_key.encode()):
                    return self._send(401, error_envelope(401, "BSE1002"))
                name, arg = route
                if name == "generate":
                    if raw and not isinstance(parsed, dict):
                        return self._send(403, "Forbidden")  # not the OpenAPI shape: refused at the edge
                    return self._generate(arg, parsed or {}, raw)
                if self._fault({"content": "poll", "cancel": "cancel", "estimate": "estimate"}[name]):
                    return None
                if name == "content":
                    with server._lock:
                        gen = server.generations.get(arg)
                        record = json.loads(json.dumps(gen.record)) if gen else None
                    if record is None:
                        return self._send(404, error_envelope(404, "BSE4001"))
                    return self._send(200, server._success("Generation.", record))
                if name == "cancel":
                    return self._send(*server._cancel(arg))
                return self._send(*server._estimate(arg, query))

            def _generate(self, target: str, body: dict[str, Any], raw: bytes) -> None:
                kind, model_id = target.split("/", 1)
                if self._fault("submit"):
                    return
                key = self.headers.get("Idempotency-Key")
                if key is not None and not IDEMPOTENCY_KEY.match(key):
                    error = error_envelope(400, "BSE2001", "Idempotency-Key must be 1-255 of [A-Za-z0-9_-:.].")
                    return self._send(400, error)
                fingerprint = hashlib.sha256(target.encode() + b"\n" + json.dumps(body, sort_keys=True).encode())
                if key is not None:
                    with server._lock:
                        if key in server._in_flight:
                            return self._send(409, error_envelope(409, "BSE2016", "The original request is running."))
                        seen = server._idempotency.get(key)
                        if seen is None:
                            server._in_flight.add(key)
                    if seen is not None:
                        if seen[0] != fingerprint.hexdigest():
                            return self._send(409, error_envelope(409, "BSE2015"))
                        return self._send(200, server._replay(seen[1]), {"Idempotency-Replayed": "true"})
                try:
                    status, answer = server._create(kind, model_id, body)
                finally:
                    if key is not None:
                        with server._lock:
                            server._in_flight.discard(key)
                if key is not None and status == 200:
                    with server._lock:
                        server._idempotency[key] = (fingerprint.hexdigest(), answer)
                self._send(status, answer)

            def _file(self, name: str) -> None:
                with server._lock:
                    stored = server._files.get(name)
                if stored is None:
                    return self._send(404, error_envelope(404, "BSE4001", "File not found."))
                self._send(200, stored[0], content_type=stored[1])

            do_GET = do_POST = do_DELETE = _handle  # one router for every method (self.command)

        return Handler

    def _replay(self, original: dict[str, Any]) -> dict[str, Any]:
        """The original answer; for a job canceled since, BabySea answers with its id and status instead."""
        generation_id = original["data"]["generation_id"]
        with self._lock:
            status = self.generations[generation_id].record["generation_status"]
        if status == "canceled":
            return {**original, "data": {"generation_id": generation_id, "generation_status": "canceled"}}
        return original


_ROUTES = (
    ("POST", re.compile(r"^/v1/generate/((?:image|video)/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+)$"), "generate"),
    ("GET", re.compile(r"^/v1/content/([A-Za-z0-9-]+)$"), "content"),
    ("POST", re.compile(r"^/v1/content/generation/cancel/([A-Za-z0-9-]+)$"), "cancel"),
    ("GET", re.compile(r"^/v1/estimate/([A-Za-z0-9._-]+/[A-Za-z0-9._-]+)$"), "estimate"),
)


def _route(method: str, path: str) -> tuple[str, str] | None:
    for route_method, pattern, name in _ROUTES:
        match = pattern.match(path)
        if match and method == route_method and (name != "content" or match.group(1) != "list"):
            return name, match.group(1)
    return None


def _ratio_size(ratio: str | None, long_side: int = 1024) -> tuple[int, int]:
    if not ratio or ":" not in ratio:
        return long_side, long_side
    w, h = (int(x) for x in ratio.split(":", 1))
    if w <= 0 or h <= 0:
        return long_side, long_side
    if w >= h:
        return long_side, max(64, round(long_side * h / w))
    return max(64, round(long_side * w / h)), long_side
