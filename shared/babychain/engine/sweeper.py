"""The scheduled safety net: deadlines, lost messages, due callbacks."""

from __future__ import annotations

import contextlib
from typing import Any, cast

from babychain.errors import ProviderError
from babychain.observability import count
from babychain.queues import callback_message, step_message
from babychain.services import Services
from babychain.store.rows import TimedOutStep

BATCH_LIMIT = 500


def sweep(svc: Services) -> dict[str, int]:
    s = svc.settings
    result = svc.store.sweep(
        {
            "grace_seconds": s.sweeper_grace_seconds,
            "limit": BATCH_LIMIT,
            "image_step_timeout_seconds": s.image_step_timeout_seconds,
            "video_step_timeout_seconds": s.video_step_timeout_seconds,
            "callback_stale_seconds": s.callback_stale_seconds,
        }
    )
    for step in result["timed_out_steps"]:
        _cancel_quietly(svc, step)
    svc.step_queue.send_many(
        [step_message(i["run_id"], i["step_id"], i["seq"]) for i in [*result["requeued_steps"], *result["due_steps"]]]
    )
    svc.callback_queue.send_many([callback_message(run_id) for run_id in result["due_callbacks"]])
    for key in ("timed_out_runs", "timed_out_steps"):
        if result[key]:
            count("RunsFailed", len(result[key]), reason=key)
    return {key: len(cast(list[Any], value)) for key, value in result.items()}


def _cancel_quietly(svc: Services, step: TimedOutStep) -> None:
    job_id, provider = step["provider_job_id"], step["provider"]
    if job_id is None or provider is None:
        return  # never submitted: nothing runs at a provider
    with contextlib.suppress(ProviderError):  # best effort: the step has failed here either way
        svc.providers.named(provider).cancel(job_id, step["provider_metadata"] or {})
