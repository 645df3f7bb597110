"""Provider webhooks: verify, deduplicate, and advance the step now instead of at its next poll.

A webhook is only ever a hint: the executor then polls the provider for the job's state, so a forged or replayed
body can at most cause an early poll. Providers that sign nothing (BytePlus) or whose scheme is undocumented (BFL)
are also given a per-step URL carrying an unguessable token; BabySea webhooks are account-level and signed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from babychain.errors import ApiError, ConfigurationError
from babychain.ids import is_canonical_uuid
from babychain.providers.base import WebhookRejected
from babychain.queues import step_message
from babychain.services import Services

# Providers that take a webhook URL per request; BabySea's endpoint is set once in its dashboard.
PER_REQUEST_WEBHOOKS = ("bfl", "byteplus")
MAX_WEBHOOK_BYTES = 1024 * 1024


def _token(svc: Services, provider: str, step_id: str) -> str:
    key = svc.settings.require_callback_secret().encode()
    return hmac.new(key, f"provider-webhook:{provider}:{step_id}".encode(), hashlib.sha256).hexdigest()[:40]


def webhook_url_for(svc: Services, provider: str, step_id: str) -> str | None:
    if not svc.settings.public_base_url or provider not in PER_REQUEST_WEBHOOKS:
        return None
    return f"{svc.settings.public_base_url}/api/v1/webhooks/{provider}/{step_id}/{_token(svc, provider, step_id)}"


@dataclass(frozen=True)
class WebhookOutcome:
    status: str  # "advanced", "duplicate", "ignored"

    def body(self) -> dict[str, Any]:
        return {"received": True, "status": self.status}


def handle_provider_webhook(
    svc: Services,
    provider_name: str,
    headers: dict[str, str],
    body: bytes,
    step_id: str | None = None,
    token: str | None = None,
) -> WebhookOutcome:
    if len(body) > MAX_WEBHOOK_BYTES:
        raise ApiError(413, "payload_too_large", "Webhook body is too large.")
    try:
        provider = svc.providers.named(provider_name)
    except ConfigurationError:
        raise ApiError(404, "webhook_not_configured", f"No {provider_name} provider is configured here.") from None
    if provider_name in PER_REQUEST_WEBHOOKS:
        if step_id is None or token is None or not _valid_step_id(step_id):
            raise ApiError(404, "route_not_found", "No such route.")
        if not hmac.compare_digest(token, _token(svc, provider_name, step_id)):
            raise ApiError(401, "invalid_webhook_signature", "The webhook URL token does not match.")
    try:
        notice = provider.parse_webhook({k.lower(): v for k, v in headers.items()}, body)
    except WebhookRejected as exc:
        raise ApiError(400, "invalid_webhook_signature", f"Webhook rejected: {exc}") from None
    if notice is None:
        return WebhookOutcome("ignored")
    if not svc.store.record_webhook_receipt(provider_name, notice.receipt_id):
        return WebhookOutcome("duplicate")
    step = svc.store.get_step(step_id) if step_id else svc.store.find_step_by_job(provider_name, notice.job_id)
    if step is None or step.get("provider_job_id") != notice.job_id or step["status"] != "running":
        return WebhookOutcome("ignored")
    # The current seq makes this message act once; the pending poll message with the same seq becomes stale.
    svc.step_queue.send(step_message(step["run_id"], step["id"], step["seq"]))
    return WebhookOutcome("advanced")


def _valid_step_id(value: str) -> bool:
    return is_canonical_uuid(value)
