"""Run lifecycle operations behind the API handlers: get, list, cancel (create is `engine.create`).

Nothing here validates a request against the model schemas, so this module imports neither pydantic nor the model
catalog: the handlers that only read or cancel runs start without them. The two listings that show the catalog import
it when called."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from babychain.auth import Principal
from babychain.chains.templates import TEMPLATES, find_template
from babychain.engine.presenter import present_run
from babychain.errors import ProviderError, invalid_input, not_found
from babychain.ids import is_canonical_uuid
from babychain.observability import count, logger
from babychain.queues import callback_message
from babychain.services import Services
from babychain.store.rows import ListedRunRow, RunRow, StepRow

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


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


def _encode_cursor(svc: Services, principal: Principal, run: ListedRunRow) -> str:
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
    from babychain.chains.catalog import MODELS_BY_ID

    mode = svc.settings.provider_mode
    return {
        "object": "list",
        "url": "/api/v1/models",
        "has_more": False,
        "mode": mode,
        "data": [m.summary() for m in MODELS_BY_ID.values()],
    }
