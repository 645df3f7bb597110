"""Run lifecycle operations behind the API handlers: create, get, list, cancel."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from typing import Any

from babychain.auth import Principal
from babychain.chains.catalog import MODELS_BY_ID
from babychain.chains.requests import plan_run
from babychain.chains.templates import TEMPLATES, find_template
from babychain.engine.estimates import estimate_run
from babychain.engine.presenter import present_run
from babychain.errors import ApiError, ProviderError, invalid_input, not_found
from babychain.ids import is_canonical_uuid
from babychain.observability import count, logger
from babychain.queues import callback_message, step_message
from babychain.services import Services
from babychain.store.rows import RunRow, StepRow

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Created:
    run: dict[str, Any]
    replayed: bool


def create_run(svc: Services, principal: Principal, slug: str, body: Any, idempotency_key: str | None) -> Created:
    template = find_template(slug)
    if template is None:
        raise not_found("chain_not_found", f"No chain template {slug!r}. GET /api/v1/chains lists them.")
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise invalid_input(
            "Idempotency-Key must be 1-255 characters of A-Z a-z 0-9 _ . : -.",
            "Idempotency-Key",
            code="invalid_idempotency_key",
        )
    mode = svc.settings.provider_mode
    plan = plan_run(
        template, body, mode=mode, resolver=svc.resolver, allow_loopback_http=svc.settings.allow_loopback_http
    )
    for step in plan.steps:
        svc.providers.check_configured(MODELS_BY_ID[step.model_identifier], f"input.chain_models.{step.step_key}_model")
    run_id = str(uuid.uuid4())
    result = svc.store.create_run(
        {
            "id": run_id,
            "owner_id": principal.owner_id,
            "chain_slug": template.slug,
            "chain_version": template.version,
            "mode": mode,
            "input": plan.input,
            "metadata": plan.metadata,
            "webhook_url": plan.webhook_url,
            "idempotency_key": idempotency_key,
            "request_hash": plan.request_hash,
            "run_timeout_seconds": svc.settings.run_timeout_seconds,
            "callback_event_id": f"evt_{run_id}",
            "steps": [s.row() for s in plan.steps],
            "estimate": estimate_run(svc, mode, plan.steps),
        }
    )
    run = result["run"]
    if not result["created"]:
        if run["request_hash"] != plan.request_hash:
            raise ApiError(
                409,
                "idempotency_conflict",
                "This Idempotency-Key was already used with a different request.",
                field="Idempotency-Key",
                details={"run_id": run["id"]},
            )
        return Created(present_run(run, svc.artifacts.shareable), replayed=True)
    count("RunsCreated", mode=mode, chain=template.slug)
    logger.info("run created", extra={"run_id": run["id"], "chain": template.slug, "mode": mode})
    first = run["steps"][0]
    # If this send is lost, the sweeper re-drives the step: it is due from now on.
    svc.step_queue.send(step_message(run["id"], first["id"], first["seq"]))
    return Created(present_run(run, svc.artifacts.shareable), replayed=False)


def get_run(svc: Services, principal: Principal, run_id: str) -> dict[str, Any]:
    return present_run(_owned_run(svc, principal, run_id), svc.artifacts.shareable)


def _owned_run(svc: Services, principal: Principal, run_id: str) -> RunRow:
    if not is_canonical_uuid(run_id):
        raise invalid_input("run_id must be a UUID.", "run_id", code="invalid_run_id")
    run = svc.store.get_run(run_id, principal.owner_id)
    if run is None:  # another caller's run looks exactly like a missing one
        raise not_found("run_not_found", f"No run {run_id}.")
    return run


def cancel_run(svc: Services, principal: Principal, run_id: str) -> dict[str, Any]:
    _owned_run(svc, principal, run_id)
    result = svc.store.cancel_run(run_id)
    run = result["run"]
    if result["canceled"]:
        in_flight = [step for step in result["steps"] if step.get("provider_job_id")]
        for step in in_flight:
            _cancel_at_provider(svc, step)
        if in_flight:  # the steps now say whether the provider stopped
            run = svc.store.get_run(run_id) or run
        if run.get("webhook_url"):
            svc.callback_queue.send(callback_message(run_id))
        count("RunsCanceled")
        logger.info("run canceled", extra={"run_id": run_id, "in_flight_steps": len(in_flight)})
    return present_run(run, svc.artifacts.shareable)


def _cancel_at_provider(svc: Services, step: StepRow) -> None:
    job_id, provider = step["provider_job_id"], step["provider"]
    if job_id is None or provider is None:
        return  # never submitted: nothing runs at a provider
    try:
        accepted = svc.providers.named(provider).cancel(job_id, step.get("provider_metadata") or {})
    except ProviderError:
        accepted = False  # best effort: the run is canceled here either way, and late results are ignored
    # Say so on the step when the provider could not stop the job (e.g. a running Seedance task): it may still
    # finish and bill, but its result is ignored.
    svc.store.note_step(step["id"], {"provider_cancel": "accepted" if accepted else "not_possible"})


def list_runs(
    svc: Services,
    principal: Principal,
    *,
    limit: int = 20,
    cursor: str | None = None,
    status: str | None = None,
    chain_slug: str | None = None,
) -> dict[str, Any]:
    """A page of the caller's runs, newest first (the handler has typed the query; the bounds hold here too)."""
    if not 1 <= limit <= 100:
        raise invalid_input("limit must be between 1 and 100.", "limit", code="invalid_request")
    if status is not None and status not in RUN_STATUSES:
        raise invalid_input(f"status must be one of {', '.join(RUN_STATUSES)}.", "status", code="invalid_request")
    slug = None
    if chain_slug is not None:
        template = find_template(chain_slug)
        if template is None:
            raise invalid_input(f"Unknown chain {chain_slug!r}.", "chain_slug", code="invalid_request")
        slug = template.slug
    position = _decode_cursor(svc, principal, cursor) if cursor else None
    rows = svc.store.list_runs(principal.owner_id, limit=limit + 1, status=status, chain_slug=slug, cursor=position)
    page = rows[:limit]
    has_more = len(rows) > limit
    return {
        "object": "list",
        "url": "/api/v1/chains/runs",
        "data": [present_run(r, svc.artifacts.shareable) for r in page],
        "has_more": has_more,
        "next_cursor": _encode_cursor(svc, principal, page[-1]) if has_more else None,
    }


def _encode_cursor(svc: Services, principal: Principal, run: RunRow) -> str:
    """`<position>.<mac>`: the position (the last run's created_at and id) signed for this caller, so a cursor is one
    this API returned, never a value for the store to interpret."""
    position = base64.urlsafe_b64encode(f"{run['created_at']}|{run['id']}".encode()).decode().rstrip("=")
    return f"{position}.{_cursor_mac(svc, principal, position)}"


def _decode_cursor(svc: Services, principal: Principal, cursor: str) -> tuple[str, str]:
    position, _, mac = cursor.partition(".")
    if not cursor.isascii() or not mac or not hmac.compare_digest(mac, _cursor_mac(svc, principal, position)):
        raise invalid_input("cursor is not one this API returned.", "cursor", code="invalid_request")
    created_at, _, run_id = base64.urlsafe_b64decode(position + "=" * (-len(position) % 4)).decode().partition("|")
    return created_at, run_id


def _cursor_mac(svc: Services, principal: Principal, position: str) -> str:
    key = hashlib.sha256(b"babychain-cursor:" + svc.settings.require_callback_secret().encode()).digest()
    message = f"{principal.owner_id}|{position}".encode()
    return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()[:18]).decode()


def list_chains(svc: Services) -> dict[str, Any]:
    mode = svc.settings.provider_mode
    return {"object": "list", "url": "/api/v1/chains", "has_more": False, "data": [t.summary(mode) for t in TEMPLATES]}


def list_models(svc: Services) -> dict[str, Any]:
    mode = svc.settings.provider_mode
    return {
        "object": "list",
        "url": "/api/v1/models",
        "has_more": False,
        "mode": mode,
        "data": [m.summary() for m in MODELS_BY_ID.values()],
    }
