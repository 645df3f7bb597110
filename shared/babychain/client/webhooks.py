"""Verifying the run's callback with the Standard Webhooks reference library (`standardwebhooks`)."""

from __future__ import annotations

import binascii
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from babychain.client.errors import BabyChainError, WebhookVerificationError
from babychain.client.models import Run, WebhookEvent, _time


def _library() -> Any:
    try:
        from standardwebhooks import webhooks
    except ImportError as exc:  # the client's own dependency; say so plainly if it is missing
        raise BabyChainError("verify_webhook needs the standardwebhooks package: pip install standardwebhooks") from exc
    return webhooks


def _signing_key(secret: str | bytes) -> str | bytes:
    """The engine's rule: a `whsec_<base64>` secret means its decoded bytes (the library does that itself); any other
    string is used as its UTF-8 bytes (the library would base64-decode it, so it gets the bytes)."""
    if not secret:
        raise ValueError("the webhook secret is empty")
    if isinstance(secret, bytes) or secret.startswith("whsec_"):
        return secret
    return secret.encode()


def verify_webhook(
    headers: Mapping[str, str], body: bytes | str, secret: str | bytes, *, check_timestamp: bool = True
) -> WebhookEvent:
    """Checks a callback delivery and returns its event; raises `WebhookVerificationError` when it is not genuine.

    `headers` are the request's headers (any case), `body` its raw bytes exactly as received (not re-serialized JSON),
    `secret` the deployment's `BABYCHAIN_CALLBACK_SECRET`. The library refuses a `webhook-timestamp` more than five
    minutes from now (replay protection); `check_timestamp=False` checks the signature alone, e.g. for a delivery saved
    long ago.
    """
    library = _library()
    try:
        webhook = library.Webhook(_signing_key(secret))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the webhook secret is not a valid whsec_<base64> secret") from exc
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    try:
        text = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise WebhookVerificationError("the body is not UTF-8") from exc
    try:
        if check_timestamp:
            webhook.verify(text, lowered, json_parse=False)
        else:
            _verify_signature_only(webhook, text, lowered)
    except library.WebhookVerificationError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    except (ValueError, binascii.Error) as exc:  # the library's split/b64decode on a malformed header
        raise WebhookVerificationError("malformed webhook-signature or webhook-timestamp header") from exc
    return _event(lowered["webhook-id"], text)


def _verify_signature_only(webhook: Any, text: str, headers: dict[str, str]) -> None:
    msg_id, timestamp = headers.get("webhook-id"), headers.get("webhook-timestamp", "")
    if not (msg_id and timestamp.isdigit() and headers.get("webhook-signature")):
        raise WebhookVerificationError("missing or invalid webhook-id, webhook-timestamp or webhook-signature header")
    expected = webhook.sign(msg_id, datetime.fromtimestamp(int(timestamp), UTC), text).partition(",")[2]
    for entry in headers["webhook-signature"].split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()):
            return
    raise WebhookVerificationError("No matching signature found")


def _event(msg_id: str, text: str) -> WebhookEvent:
    try:
        payload = json.loads(text)
        return WebhookEvent(
            id=msg_id,
            type=str(payload["type"]),
            timestamp=_time(payload.get("timestamp")),
            run=Run.from_dict(payload["data"]),
            raw=payload,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WebhookVerificationError(f"signed, but not a BabyChain callback event: {exc}") from exc
