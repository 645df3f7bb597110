"""Creating a run: the request validated against the chain template and each step's model schema (pydantic), priced,
stored, and its first step queued. Its own module, so that the handlers that only read or cancel runs
(`engine.runs`) do not import the validation at cold start.

The validation (`chains.requests`: pydantic and the model schemas) is imported by the first create, not when the
handler starts; SnapStart's snapshot and the one-machine fork server load it beforehand (`aws.snapstart`)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from babychain.auth import Principal
from babychain.aws.snapstart import warm_before_snapshot
from babychain.chains.catalog import MODELS_BY_ID
from babychain.chains.templates import find_template
from babychain.engine.estimates import estimate_run
from babychain.engine.presenter import present_run
from babychain.errors import ApiError, invalid_input, not_found
from babychain.observability import count, logger
from babychain.queues import STEP_MESSAGE, step_message
from babychain.services import Services

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


def load_validation() -> None:
    """Imports the request validation: pydantic, and the model schemas, whose validators are built as they load."""
    import babychain.chains.requests  # noqa: F401


warm_before_snapshot(load_validation)


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
    from babychain.chains.requests import plan_run

    mode = svc.settings.provider_mode
    plan = plan_run(
        template, body, mode=mode, resolver=svc.resolver, allow_loopback_http=svc.settings.allow_loopback_http
    )
    for step in plan.steps:
        svc.providers.check_configured(MODELS_BY_ID[step.model_identifier], f"input.chain_models.{step.step_key}_model")
    run_id = str(uuid.uuid4())
    # The one-machine shape's step queue lives in the same database: the first step's message goes with the create.
    queue = svc.step_queue.in_store(svc.store)
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
        },
        queue=queue,
        message=STEP_MESSAGE,
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
    if queue is None:
        first = run["steps"][0]
        # If this send is lost, the sweeper re-drives the step: it is due from now on.
        svc.step_queue.send(step_message(run["id"], first["id"], first["seq"]))
    return Created(present_run(run, svc.artifacts.shareable), replayed=False)
