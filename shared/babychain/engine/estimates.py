"""Cost estimates at create time: the BYOK price table, BabySea's estimate endpoint, zero on the local provider."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from babychain.chains.catalog import MODELS_BY_ID
from babychain.chains.prices import price_step
from babychain.errors import ProviderError
from babychain.services import Services

if TYPE_CHECKING:  # the plan's steps come from the request validation, which create imports on first use
    from babychain.chains.requests import PlannedStep


def estimate_run(svc: Services, mode: str, steps: list[PlannedStep]) -> dict[str, Any]:
    items = []
    for step in steps:
        model = MODELS_BY_ID[step.model_identifier]
        if mode == "local":
            item: dict[str, Any] = {"amount": 0.0, "basis": "local_provider"}
        elif mode == "babysea":
            item = _babysea_estimate(svc, model.id, step)
        else:
            item = price_step(model, model.family(mode).describe(step.params))
        items.append({"step_key": step.step_key, "model_identifier": step.model_identifier, **item})
    amounts = [i["amount"] for i in items]
    total = None if any(a is None for a in amounts) else round(sum(amounts), 4)
    return {"currency": "USD", "total": total, "steps": items}


def _babysea_estimate(svc: Services, model_id: str, step: PlannedStep) -> dict[str, Any]:
    provider = svc.providers.named("babysea")
    estimate = getattr(provider, "estimate", None)
    if estimate is None:
        return {"amount": None, "basis": "unavailable"}
    try:
        result: dict[str, Any] = estimate(model_id, step.step_kind, step.params)
    except ProviderError as exc:
        # An estimate is advice; the run still goes ahead, and the step records the actual cost.
        return {"amount": None, "basis": "unavailable", "error": exc.code}
    return result
