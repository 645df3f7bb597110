"""Black Forest Labs (BYOK FLUX) adapter: async submit to `POST /v1/<model>`, poll the returned `polling_url`.

Wire facts: reference/providers.md §1; original behaviour: reference/babychain-original.md §5.2. BFL has no cancel
API. Its webhook signature (`X-BFL-Signature: sha256=<hex>`) comes only from BFL's agent-skill doc, so a verified
webhook is a hint to poll, never a result.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from babychain.errors import ProviderError
from babychain.providers.base import JobStatus, Provider, StepJob, Submission, WebhookNotice, WebhookRejected
from babychain.providers.http import (
    ErrorBody,
    HostRule,
    ProviderHttp,
    allowed_url,
    answered,
    check_api_key,
    check_base_url,
    json_or_none,
)
from babychain.security.lean_http import Response

DEFAULT_BASE_URL = "https://api.bfl.ai/v1"
# api.bfl.ai, api.eu.bfl.ai, api.us.bfl.ai and the cluster hosts polling_url points at
HOSTS = HostRule("BFL_API_BASE_URL", domain="bfl.ai")
SAMPLE_LIFETIME = timedelta(minutes=10)  # BFL delivery URLs expire after 10 minutes
MAX_WEBHOOK_BYTES = 1024 * 1024
SIGNATURE_HEADER = "x-bfl-signature"
MODERATED = ("Request Moderated", "Content Moderated")
# Model endpoints are one path segment (flux-2-pro, flux-pro-1.1); anything else would change the request path.
_ENDPOINT = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,63}$")
# Provider-controlled fields: only the adapter sets them, from its own configuration.
_RESERVED_FIELDS = ("webhook_url", "webhook_secret")
_SUBMIT_NUMBERS = ("cost", "input_mp", "output_mp")


class BflProvider(Provider):
    name = "bfl"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        webhook_secret: str | None = None,
        allow_loopback: bool = False,
        timeout: float = 30.0,
        webhook_tolerance_seconds: float = 300.0,
    ) -> None:
        check_api_key(api_key, "BFL_API_KEY")
        self._webhook_secret = webhook_secret or None
        self.allow_loopback = allow_loopback
        self.webhook_tolerance_seconds = webhook_tolerance_seconds
        self.base_url = check_base_url(base_url, HOSTS, allow_loopback).url
        self._http = ProviderHttp(
            "BFL",
            secrets=(api_key, webhook_secret or ""),  # BFL gets both: the key, and the secret it signs webhooks with
            headers={"x-key": api_key, "accept": "application/json"},
            timeout=timeout,
            read_error=_read_error,
        )

    def close(self) -> None:
        self._http.close()

    def is_allowed_url(self, url: str) -> bool:
        """https on bfl.ai's subdomains; loopback (http or https) only when the adapter was built for tests."""
        return allowed_url(url, HOSTS, self.allow_loopback)

    def _get_result_url(self, job_id: str) -> str:
        return f"{self.base_url}/get_result?id={quote(job_id, safe='')}"

    # ------------------------------------------------------------------------------------------ submit

    def submit(self, job: StepJob) -> Submission:
        endpoint = job.model.provider_model
        if not _ENDPOINT.match(endpoint):
            raise ProviderError("provider_invalid_request", f"Not a BFL model endpoint: {endpoint!r}.", transient=False)
        body = self._submit_body(job)
        headers = {"content-type": "application/json", "x-idempotency-key": job.idempotency_key}
        answer = json_or_none(self._http.send("POST", f"{self.base_url}/{endpoint}", body=body, headers=headers))
        if not isinstance(answer, dict):
            raise ProviderError(
                "provider_unexpected_response", "BFL's submit answer is not a JSON object.", transient=False
            )
        job_id, polling_url, derived = self._polling_target(answer, asked_for_webhook="webhook_url" in body)
        metadata: dict[str, Any] = {"polling_url": polling_url, "endpoint": endpoint}
        if derived:
            metadata["polling_url_derived"] = True
        for key in _SUBMIT_NUMBERS:
            if isinstance(answer.get(key), int | float) and not isinstance(answer.get(key), bool):
                metadata[key] = answer[key]
        return Submission(job_id=job_id, metadata=metadata)

    def _submit_body(self, job: StepJob) -> dict[str, Any]:
        body = {k: v for k, v in job.params.items() if k not in _RESERVED_FIELDS}
        # A webhook BFL would send unsigned could never verify, so ask for one only when it will be signed.
        if job.webhook_url and self._webhook_secret:
            body["webhook_url"] = job.webhook_url
            body["webhook_secret"] = self._webhook_secret
        return body

    def _polling_target(self, answer: dict[str, Any], *, asked_for_webhook: bool) -> tuple[str, str, bool]:
        """The job id and where to poll it; True when the polling URL had to be derived."""
        job_id, polling_url = answer.get("id"), answer.get("polling_url")
        derived = False
        if isinstance(job_id, str) and job_id and not polling_url and asked_for_webhook and "webhook_url" in answer:
            # BFL's OpenAPI lets a webhook request be answered with AsyncWebhookResponse {id, status, webhook_url},
            # which has no polling_url; the documented get_result on the host we submitted to still finds the task.
            polling_url, derived = self._get_result_url(job_id), True
        if not isinstance(job_id, str) or not job_id or not isinstance(polling_url, str) or not polling_url:
            raise ProviderError(
                "provider_unexpected_response", "BFL's submit answer lacks id or polling_url.", transient=False
            )
        if not self.is_allowed_url(polling_url):
            # The key goes to the polling host; a foreign one must never receive it.
            raise ProviderError(
                "provider_request_blocked", "BFL returned a polling_url outside its allowed hosts.", transient=False
            )
        return job_id, polling_url, derived

    # ------------------------------------------------------------------------------------------ poll

    def poll(self, job_id: str, metadata: dict[str, Any]) -> JobStatus:
        # The polling_url encodes the cluster that took the job: use it verbatim, never rebuild it.
        polling_url = metadata.get("polling_url") or self._get_result_url(job_id)
        if not isinstance(polling_url, str) or not self.is_allowed_url(polling_url):
            raise ProviderError(
                "provider_request_blocked", "The stored polling_url is outside BFL's allowed hosts.", transient=False
            )
        answer = json_or_none(self._http.send("GET", polling_url, not_found_code="provider_task_not_found"))
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            # A garbled poll answer says nothing about the job; ask again later.
            raise ProviderError(
                "provider_unexpected_response", "BFL's get_result answer has no status.", transient=True
            )
        return self._job_status(answer)

    def _job_status(self, answer: dict[str, Any]) -> JobStatus:
        status: str = answer["status"]
        seen = {"last_status": status}
        if status == "Ready":
            return _ready(answer, seen)
        if status in MODERATED:
            return JobStatus(
                "failed", error_code="provider_content_moderated", error_message=f"BFL status: {status}", metadata=seen
            )
        if status == "Task not found":
            return JobStatus(
                "failed",
                error_code="provider_task_not_found",
                error_message="BFL status: Task not found (unknown or expired task).",
                metadata=seen,
            )
        if status in ("Error", "Failed"):
            detail = _detail(answer)
            message = self._http.scrub(f"BFL status: {status}" + (f": {detail}" if detail else ""))
            return JobStatus("failed", error_code="provider_failed", error_message=message, metadata=seen)
        # Pending, and undocumented statuses as still running; the step deadline bounds the wait.
        return JobStatus("pending", progress=_progress(answer.get("progress")), metadata=seen)

    # ------------------------------------------------------------------------------------------ cancel, webhooks

    def cancel(self, job_id: str, metadata: dict[str, Any]) -> bool:
        return False  # BFL has no cancel API; the engine cancels locally and ignores the late result

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> WebhookNotice | None:
        if not self._webhook_secret:
            raise WebhookRejected("No BFL webhook secret is configured.")
        if len(body) > MAX_WEBHOOK_BYTES:
            raise WebhookRejected("BFL webhook body is too large.")
        signature = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER), None)
        if not signature:
            raise WebhookRejected("Missing X-BFL-Signature header.")
        scheme, _, given = signature.strip().partition("=")
        if scheme.strip().lower() != "sha256" or not given:
            raise WebhookRejected("X-BFL-Signature is not sha256=<hex>.")
        expected = hmac.new(self._webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace")):
            raise WebhookRejected("X-BFL-Signature does not match.")
        try:
            payload = json.loads(body)
        except ValueError:
            raise WebhookRejected("BFL webhook body is not JSON.") from None
        if not isinstance(payload, dict):
            raise WebhookRejected("BFL webhook body is not a JSON object.")
        job_id, status = payload.get("id"), payload.get("status")
        if not isinstance(job_id, str) or not job_id or not isinstance(status, str) or not status:
            raise WebhookRejected("BFL webhook lacks id or status.")
        self._check_timestamp(payload.get("timestamp"))
        return WebhookNotice(job_id=job_id, receipt_id=f"{job_id}:{status}")

    def _check_timestamp(self, value: Any) -> None:
        """A signed body with an old timestamp is a replay; a body without one is accepted (BFL documents none)."""
        if value is None:
            return
        when = _parse_timestamp(value)
        if when is None:
            raise WebhookRejected("BFL webhook timestamp is unreadable.")
        if abs((datetime.now(UTC) - when).total_seconds()) > self.webhook_tolerance_seconds:
            raise WebhookRejected("BFL webhook timestamp is outside the tolerance window.")


def _ready(answer: dict[str, Any], seen: dict[str, Any]) -> JobStatus:
    result = answer.get("result")
    sample = result.get("sample") if isinstance(result, dict) else None
    if not isinstance(sample, str) or not sample:
        return JobStatus(
            "failed",
            error_code="provider_unexpected_response",
            error_message="BFL reported Ready without result.sample.",
            metadata=seen,
        )
    expires = (datetime.now(UTC) + SAMPLE_LIFETIME).isoformat().replace("+00:00", "Z")
    return JobStatus("succeeded", output_urls=[sample], metadata={**seen, "output_expires_at": expires})


def _parse_timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            seconds = value / 1000 if value > 1e11 else value  # milliseconds or seconds since the epoch
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _progress(value: Any) -> float | None:
    """BFL's progress is a number of unstated scale; values above 1 are read as percent."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    fraction = value / 100 if value > 1 else value
    return round(min(1.0, max(0.0, float(fraction))), 4)


def _detail(answer: dict[str, Any]) -> str:
    for key in ("details", "error", "message"):
        value = answer.get(key)
        if value:
            return value if isinstance(value, str) else json.dumps(value)
    return ""


def _read_error(response: Response) -> ErrorBody:
    return ErrorBody(answered("BFL", response.status_code, _describe_error(response)))


def _describe_error(response: Response) -> str:
    """FastAPI-style `{"detail": ...}` as a short readable line; otherwise the raw body (bounded once scrubbed)."""
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    return _validation_errors(detail) or json.dumps(body)


def _validation_errors(detail: Any) -> str:
    """FastAPI's 422 `detail` list as `field: message; ...`."""
    if not isinstance(detail, list):
        return ""
    parts = []
    for item in detail:
        if isinstance(item, dict):
            where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
    return "; ".join(parts)
