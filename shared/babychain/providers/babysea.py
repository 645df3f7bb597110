"""BabySea hosted mode: one API in front of several inference providers, with failover inside BabySea.

Wire protocol (see reference/providers.md §3): `POST /v1/generate/{image|video}/{model}` with the unified
`generation_*` body and an `Idempotency-Key`, `GET /v1/content/{generation_id}` to poll,
`POST /v1/content/generation/cancel/{generation_id}` to cancel, `GET /v1/estimate/{model}` for cost. Success answers
are `{status: "success", request_id, data}`, errors `{status: "error", request_id, error: {code: "BSE####", type,
message, retryable, details?, provider_errors?}}`. Webhooks are account-level (no per-request URL) and signed
Stripe-style: `X-BabySea-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">` keyed with the whole secret string.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Any

from babychain.errors import ProviderError
from babychain.providers.base import JobStatus, Provider, StepJob, Submission, WebhookNotice, WebhookRejected
from babychain.providers.http import (
    NOT_FOUND,
    ErrorBody,
    HostRule,
    ProviderHttp,
    answered,
    check_api_key,
    check_base_url,
    json_or_none,
)
from babychain.security.lean_http import Response

DEFAULT_BASE_URL = "https://api.us.babysea.ai"
HOSTS = HostRule(
    "BABYSEA_API_BASE_URL", hosts=frozenset({"api.us.babysea.ai", "api.eu.babysea.ai", "api.jp.babysea.ai"})
)
WEBHOOK_TOLERANCE_SECONDS = 300

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GENERATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_GENERATION_EVENTS = frozenset(
    {"generation.started", "generation.completed", "generation.failed", "generation.canceled"}
)
_MODERATION_CODES = frozenset({"BSE2006"})


def _is_moderation(code: Any, kind: Any = None) -> bool:
    """BSE2006 content_policy_violation, whether it comes as the code, the type, or a provider's own code string."""
    for value in (code, kind):
        if isinstance(value, str) and (
            value.upper() in _MODERATION_CODES or "content_policy" in value.lower() or "moderat" in value.lower()
        ):
            return True
    return False


def _header(headers: dict[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


class BabySeaProvider(Provider):
    """The adapter for BabySea's public `/v1` API (BABYCHAIN_PROVIDER_MODE=babysea)."""

    name = "babysea"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        webhook_secret: str | None = None,
        allow_loopback: bool = False,
        timeout: float = 60.0,
        webhook_tolerance_seconds: int = WEBHOOK_TOLERANCE_SECONDS,
    ) -> None:
        check_api_key(api_key, "BABYSEA_API_KEY")
        self.base_url = _checked_base_url(base_url, allow_loopback)
        self._webhook_secret = webhook_secret or None
        self._webhook_tolerance = webhook_tolerance_seconds
        self._http = ProviderHttp(
            "BabySea",
            secrets=(api_key, webhook_secret or ""),  # BabySea signs its webhooks with the secret it holds
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": "babychain-python",
            },
            timeout=timeout,
            read_error=_read_error,
        )

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------------------------------------ HTTP

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        not_found_code: str = NOT_FOUND,
    ) -> tuple[Response, dict[str, Any]]:
        """One call; returns the response and its `data`, or raises ProviderError with a stable code."""
        response = self._http.send(
            method, self.base_url + path, body=body, params=params, headers=headers, not_found_code=not_found_code
        )
        envelope = json_or_none(response)
        if not isinstance(envelope, dict) or envelope.get("status") == "error":
            raise self._http.error(response, not_found_code=not_found_code)
        data = envelope.get("data")
        if envelope.get("status") != "success" or not isinstance(data, dict):
            raise ProviderError(
                "provider_unexpected_response",
                f"BabySea answered {method} {path} without a success envelope.",
                transient=False,
            )
        return response, data

    # ------------------------------------------------------------------------------------------ contract

    @staticmethod
    def _model_path(model_id: str) -> str:
        if not _MODEL_ID.match(model_id) or ".." in model_id:
            raise ProviderError("provider_invalid_request", f"Not a BabySea model id: {model_id!r}.", transient=False)
        return model_id

    @staticmethod
    def _generation_path(generation_id: str) -> str:
        if not isinstance(generation_id, str) or not _GENERATION_ID.match(generation_id):
            raise ProviderError("provider_task_not_found", "Not a BabySea generation id.", transient=False)
        return generation_id

    def submit(self, job: StepJob) -> Submission:
        # The step kind decides the route; the model's own kind is the fallback when a caller leaves the default.
        kind = "video" if job.step_kind == "video" or job.model.output_kind == "video" else "image"
        path = f"/v1/generate/{kind}/{self._model_path(job.model.id)}"
        response, data = self._request("POST", path, body=job.params, headers={"Idempotency-Key": job.idempotency_key})
        generation_id = data.get("generation_id")
        if not isinstance(generation_id, str) or not _GENERATION_ID.match(generation_id):
            raise ProviderError(
                "provider_unexpected_response",
                "BabySea accepted the job but returned no usable generation_id.",
                transient=False,
            )
        metadata: dict[str, Any] = {
            "request_id": self._request_id(response),
            "prediction_id": data.get("generation_prediction_id"),
            "provider_order": data.get("generation_provider_order"),
            "idempotency_replayed": response.headers.get("Idempotency-Replayed", "").strip().lower() == "true",
        }
        if data.get("generation_status"):
            # A replay of a job that was canceled meanwhile answers with its status instead of the create data.
            metadata["generation_status"] = data["generation_status"]
        return Submission(job_id=generation_id, metadata=metadata)

    @staticmethod
    def _request_id(response: Response) -> str | None:
        # The envelope carries it; older docs put it in X-Request-ID.
        value = response.json().get("request_id") or response.headers.get("X-Request-ID")
        return value if isinstance(value, str) else None

    def poll(self, job_id: str, metadata: dict[str, Any]) -> JobStatus:
        _, record = self._request(
            "GET", f"/v1/content/{self._generation_path(job_id)}", not_found_code="provider_task_not_found"
        )
        status = record.get("generation_status")
        info: dict[str, Any] = {"last_status": status}
        if record.get("generation_prediction_id"):
            info["prediction_id"] = record["generation_prediction_id"]
        if record.get("generation_provider_used"):
            info["provider_used"] = record["generation_provider_used"]
        match status:
            case "succeeded":
                return _succeeded(record, info)
            case "failed":
                error_code = record.get("generation_error_code")
                info["provider_error_code"] = error_code
                code = "provider_content_moderated" if _is_moderation(error_code) else "provider_failed"
                message = str(record.get("generation_error") or f"BabySea generation failed ({error_code}).")
                return JobStatus("failed", error_code=code, error_message=self._http.scrub(message), metadata=info)
            case "canceled" | "cancelled":
                return JobStatus("canceled", metadata=info)
            case _:
                # pending, processing, or an undocumented status: not an answer yet; the step's deadline bounds it.
                return JobStatus("pending", metadata=info)

    def cancel(self, job_id: str, metadata: dict[str, Any]) -> bool:
        try:
            _, data = self._request("POST", f"/v1/content/generation/cancel/{self._generation_path(job_id)}")
        except ProviderError:
            return False  # already terminal, unknown, or unreachable: the engine cancels locally either way
        return data.get("generation_status") == "canceled"

    def estimate(self, model_id: str, step_kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """BabySea's own price for this request (1 credit = 1 USD)."""
        query: dict[str, str] = {"count": str(int(params.get("generation_output_number") or 1))}
        if step_kind == "video":
            if params.get("generation_duration") is not None:
                query["duration"] = str(params["generation_duration"])
            if params.get("generation_resolution"):
                query["resolution"] = str(params["generation_resolution"])
            if params.get("generation_generate_audio") is not None:
                query["audio"] = "true" if params["generation_generate_audio"] else "false"
        _, data = self._request("GET", f"/v1/estimate/{self._model_path(model_id)}", params=query)
        amount = data.get("cost_total_consumed")
        if not isinstance(amount, int | float) or isinstance(amount, bool):
            raise ProviderError(
                "provider_unexpected_response", "BabySea estimate has no cost_total_consumed.", transient=False
            )
        return {"amount": float(amount), "currency": "USD", "basis": "babysea_estimate", "details": data}

    # ------------------------------------------------------------------------------------------- webhooks

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> WebhookNotice | None:
        if not self._webhook_secret:
            raise WebhookRejected("No BabySea webhook secret is configured.")
        delivery_id = self._verified_delivery(headers, body, self._webhook_secret)
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise WebhookRejected("BabySea webhook body is not JSON.") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("webhook_event"), str):
            raise WebhookRejected("BabySea webhook body has no webhook_event.")
        body_delivery = payload.get("webhook_delivery_id")
        if body_delivery is not None and body_delivery != delivery_id:
            raise WebhookRejected("X-BabySea-Delivery-Id does not match webhook_delivery_id.")
        if payload["webhook_event"] not in _GENERATION_EVENTS:
            return None  # webhook.test, credits.low_balance and future events concern no job
        data = payload.get("webhook_data")
        generation_id = data.get("generation_id") if isinstance(data, dict) else None
        if not isinstance(generation_id, str) or not _GENERATION_ID.match(generation_id):
            raise WebhookRejected("BabySea generation event without a generation_id.")
        return WebhookNotice(job_id=generation_id, receipt_id=delivery_id)

    def _verified_delivery(self, headers: dict[str, str], body: bytes, secret: str) -> str:
        """Checks X-BabySea-Signature over `t.body`; returns the delivery id."""
        signature = _header(headers, "X-BabySea-Signature")
        if not signature:
            raise WebhookRejected("Missing X-BabySea-Signature.")
        delivery_id = (_header(headers, "X-BabySea-Delivery-Id") or "").strip()
        if not _DELIVERY_ID.match(delivery_id):
            raise WebhookRejected("Missing or malformed X-BabySea-Delivery-Id.")
        timestamp, candidates = _signature_parts(signature)
        if not timestamp.isdigit() or not candidates:
            raise WebhookRejected("Malformed X-BabySea-Signature.")
        if abs(time.time() - int(timestamp)) > self._webhook_tolerance:
            raise WebhookRejected("BabySea webhook timestamp is outside the tolerance.")
        # The key is the whole secret string as UTF-8 (whsec_ included, no base64), unlike Standard Webhooks.
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            raise WebhookRejected("BabySea webhook signature does not match.")
        return delivery_id


def _signature_parts(signature: str) -> tuple[str, list[str]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]` as the timestamp and the well-formed v1 candidates."""
    timestamp = ""
    candidates: list[str] = []
    for part in signature.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1" and _HEX.match(value):
            candidates.append(value.lower())
    return timestamp, candidates


def _checked_base_url(base_url: str, allow_loopback: bool) -> str:
    checked = check_base_url(base_url, HOSTS, allow_loopback)
    # The docs write the base with or without `/v1`; every path below adds it.
    if checked.path not in ("", "/v1"):
        raise HOSTS.error("a path other than /v1: use a bare origin")
    return checked.origin


def _succeeded(record: dict[str, Any], info: dict[str, Any]) -> JobStatus:
    if record.get("generation_removed"):
        return JobStatus(
            "failed",
            error_code="provider_expired",
            error_message="BabySea deleted this generation's files.",
            metadata=info,
        )
    outputs = record.get("generation_output_file")
    urls = [u for u in outputs if isinstance(u, str) and u] if isinstance(outputs, list) else []
    if not urls:
        return JobStatus(
            "failed",
            error_code="provider_unexpected_response",
            error_message="BabySea reported success without output files.",
            metadata=info,
        )
    info["metrics"] = {
        "total_time": record.get("generation_metrics_total_time"),
        "predict_time": record.get("generation_metrics_predict_time"),
    }
    if record.get("generation_completed_at"):
        info["completed_at"] = record["generation_completed_at"]
    return JobStatus("succeeded", output_urls=urls, metadata=info)


# ------------------------------------------------------------------------------------------------ error bodies


def _read_error(response: Response) -> ErrorBody:
    """A BSE error envelope, or the plain answer of whatever stood in front of the API."""
    envelope = json_or_none(response)
    error = envelope.get("error") if isinstance(envelope, dict) else None
    if not isinstance(error, dict):
        return _plain_error(response)
    code, kind = str(error.get("code") or ""), str(error.get("type") or "")
    message = _error_text(response.status_code, code, kind, error, envelope)
    retry_after = _retry_after_seconds(error.get("details"))
    step_code = _step_code(code, kind, response.status_code)
    if step_code:
        in_progress = step_code == "provider_idempotency_in_progress"
        return ErrorBody(message, code=step_code, transient=in_progress, retry_after=retry_after)
    # BabySea says to follow `retryable`, not the status alone (some provider 5xx are final).
    retryable = error.get("retryable")
    return ErrorBody(message, transient=retryable if isinstance(retryable, bool) else None, retry_after=retry_after)


def _plain_error(response: Response) -> ErrorBody:
    # Requests that miss the OpenAPI shape are refused at the edge with a plain 403, not a BSE error.
    status = response.status_code
    message = answered("BabySea's edge" if status == 403 else "BabySea", status, response.text.strip())
    if 200 <= status < 300:
        return ErrorBody(message, code="provider_unexpected_response")
    return ErrorBody(message)


def _step_code(code: str, kind: str, status: int) -> str | None:
    """What the body says beyond the status, in order of precedence."""
    if code == "BSE1004" or status == 402:
        return "provider_quota_exceeded"
    if _is_moderation(code, kind):
        return "provider_content_moderated"
    if code == "BSE2015":  # same Idempotency-Key, different body: a bug on our side, retrying cannot help
        return "provider_invalid_request"
    if code == "BSE2016":  # the original request with this key is still being processed: ask again shortly
        return "provider_idempotency_in_progress"
    return None


def _error_text(status: int, code: str, kind: str, error: dict[str, Any], envelope: dict[str, Any]) -> str:
    text = f"BabySea {status} {code or 'error'}" + (f" {kind}" if kind else "")
    text += f": {error.get('message') or 'no message'}"
    providers = error.get("provider_errors")
    if isinstance(providers, list):
        tried = [f"{p.get('provider')}: {p.get('code') or p.get('type')}" for p in providers if isinstance(p, dict)]
        text += f" (providers tried: {'; '.join(tried)})" if tried else ""
    if envelope.get("request_id"):
        text += f" [request_id {envelope['request_id']}]"
    return text


def _retry_after_seconds(details: Any) -> float | None:
    """`details.retry_after_seconds`, which BabySea sends where a Retry-After header may be missing."""
    seconds = details.get("retry_after_seconds") if isinstance(details, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return max(0.0, float(seconds))
    return None
