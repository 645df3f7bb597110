"""The step executor: one queue message advances one step by one action.

claim → submit → (poll or webhook) → copy outputs → complete → the next step is enqueued, or the run ends and its
callback is enqueued. Every write is a guarded transition keyed by the step's `seq` or `attempt`, so a duplicate or
late message, or a result arriving after cancel, changes nothing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any, Literal

from babychain.artifacts import run_prefix
from babychain.chains.catalog import MODELS_BY_ID
from babychain.chains.families import babysea_params
from babychain.engine.webhooks import webhook_url_for
from babychain.errors import ProviderError, UnsafeUrlError
from babychain.media_types import EXTENSION_BY_CONTENT_TYPE, MediaRefused
from babychain.observability import count, duration, logger
from babychain.providers.base import JobStatus, Provider, StepJob, Submission
from babychain.queues import callback_message, step_message
from babychain.security.deadline import total_deadline
from babychain.security.safe_http import FetchError, fetch_bytes
from babychain.services import Services
from babychain.store.rows import RunRow, StepRow

# What one step message did: submitted a job, found it still running (pending), retried a transient submit error,
# completed or failed the step, or nothing (stale: a duplicate, late or superseded message).
StepOutcome = Literal["submitted", "pending", "retrying", "succeeded", "failed", "stale"]


def backoff_seconds(svc: Services, attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the provider's Retry-After."""
    s = svc.settings
    ceiling = min(s.retry_max_seconds, s.retry_base_seconds * (2 ** max(0, attempt - 1)))
    return max(retry_after or 0.0, random.uniform(ceiling / 2, ceiling))


def handle_step_message(svc: Services, message: dict[str, Any]) -> StepOutcome:
    """Returns what happened, for logs and tests."""
    run = svc.store.get_run(message["run_id"])
    step = next((s for s in run["steps"] if s["id"] == message["step_id"]), None) if run else None
    if run is None or step is None or step["seq"] != message["seq"]:
        return "stale"
    if run["status"] not in ("queued", "running"):
        return "stale"
    if step["status"] == "queued":
        return _start(svc, run, step)
    if step["status"] == "running" and step["provider_job_id"]:
        return _check(svc, run, step)
    return "stale"


def route_for_attempt(attempts_made: int, budget: int, route_count: int) -> int:
    """The route (index into the model's routes) that the next submit goes to.

    Each route gets the full retry budget; when it is spent on transient errors the next route takes over, and the
    last route keeps any attempts beyond that.
    """
    return min(attempts_made // budget, route_count - 1)


def retry_number(attempt: int, budget: int, route_count: int) -> int | None:
    """After attempt `attempt` (1-based) failed transiently: that attempt's number within its route, which sets the
    backoff before the retry; None when every route's budget is spent."""
    if attempt >= budget * route_count:
        return None
    return (attempt - 1) % budget + 1


def _start(svc: Services, run: RunRow, step: StepRow) -> StepOutcome:
    if not _producers_done(run, step):
        # A message that arrived ahead of its producer's completion (out of order): the completion enqueues the
        # step itself, so this one changes nothing.
        return "stale"
    model = MODELS_BY_ID[step["model_identifier"]]
    family = model.family(run["mode"])
    inputs = _step_inputs(svc, step, family)
    if inputs is None:
        return _fail(svc, run, step, "chain_step_params_failed", "Required previous step output is missing.")
    params, input_files = inputs
    routes = svc.providers.routes(model)
    provider = routes[route_for_attempt(step["attempt"], svc.settings.max_submit_attempts, len(routes))]
    mode = run["mode"]
    if provider.name == "babysea" and mode != "babysea":
        params, mode = babysea_params(family.describe(params), step["step_kind"]), "babysea"
    claimed = svc.store.claim_step(
        step["id"],
        step["seq"],
        provider=provider.name,
        request_params=params,
        input_files=input_files,
        submit_timeout_seconds=svc.settings.submit_timeout_seconds,
    )
    if claimed is None:
        return "stale"
    attempt = claimed["attempt"]
    job = StepJob(
        run_id=run["id"],
        step_id=step["id"],
        step_key=step["step_key"],
        model=model,
        mode=mode,
        params=params,
        idempotency_key=f"babychain:{run['id']}:{step['step_key']}:{attempt}",
        step_kind=step["step_kind"],
        webhook_url=webhook_url_for(svc, provider.name, step["id"]),
    )
    attempts = list(claimed["provider_metadata"].get("attempts", []))
    record = {"attempt": attempt, "provider": provider.name, "at": _now()}
    try:
        # The claim holds the step for `submit_timeout_seconds` (then the sweeper gives the attempt back): the submit
        # ends within it, however slowly the provider answers, so no second attempt is ever submitted beside it.
        with total_deadline(svc.settings.submit_timeout_seconds):
            submission = provider.submit(job)
    except ProviderError as exc:
        attempts.append({**record, "error_code": exc.code})
        return _submit_failed(svc, run, step, provider, attempt, attempts, exc, len(routes))
    attempts.append({**record, "job_id": submission.job_id})
    return _submitted(svc, run, step, provider, attempt, attempts, submission)


def _producers_done(run: RunRow, step: StepRow) -> bool:
    succeeded = {s["step_key"] for s in run["steps"] if s["status"] == "succeeded"}
    return set(step["depends_on"]) <= succeeded


def _step_inputs(svc: Services, step: StepRow, family: Any) -> tuple[dict[str, Any], list[str] | None] | None:
    """The params to submit (a dependent step gets its producer's output injected) and the step's input files;
    None when a dependent step has no input to work on."""
    params = step["params"]
    input_files = step.get("input_files")
    if step["depends_on"]:
        if not input_files:
            return None
        return family.inject_input(params, svc.artifacts.shareable(input_files[0])), input_files
    return params, family.input_urls(params) or input_files


def _submit_failed(
    svc: Services,
    run: RunRow,
    step: StepRow,
    provider: Provider,
    attempt: int,
    attempts: list[dict[str, Any]],
    exc: ProviderError,
    route_count: int,
) -> StepOutcome:
    """A transient error is retried with backoff while any route's budget is left; anything else fails the step."""
    count("ProviderErrors", provider=provider.name, code=exc.code)
    logger.warning(
        "submit failed",
        extra={
            "run_id": run["id"],
            "step": step["step_key"],
            "code": exc.code,
            "transient": exc.transient,
            "attempt": attempt,
        },
    )
    retry = retry_number(attempt, svc.settings.max_submit_attempts, route_count) if exc.transient else None
    if retry is None:
        return _fail(svc, run, step, exc.code, exc.message, attempt=attempt, metadata={"attempts": attempts})
    delay = backoff_seconds(svc, retry, exc.retry_after)
    retried = svc.store.retry_step(step["id"], attempt, delay, exc.code, exc.message, {"attempts": attempts})
    if retried is not None:
        svc.step_queue.send(step_message(run["id"], step["id"], retried["seq"]), delay)
    return "retrying"


def _submitted(
    svc: Services,
    run: RunRow,
    step: StepRow,
    provider: Provider,
    attempt: int,
    attempts: list[dict[str, Any]],
    submission: Submission,
) -> StepOutcome:
    recorded = svc.store.record_submission(
        step["id"],
        attempt,
        submission.job_id,
        {**submission.metadata, "attempts": attempts},
        svc.settings.poll_interval_seconds,
    )
    if recorded is None:
        # Cancel (or a deadline) won while we were submitting: the job must not run on for nothing.
        provider.cancel(submission.job_id, submission.metadata)
        return "stale"
    if submission.output_urls is not None:  # a synchronous provider answered with the result itself
        return _succeed(svc, run, recorded, JobStatus("succeeded", output_urls=submission.output_urls))
    svc.step_queue.send(step_message(run["id"], step["id"], recorded["seq"]), svc.settings.poll_interval_seconds)
    return "submitted"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _check(svc: Services, run: RunRow, step: StepRow) -> StepOutcome:
    # Only a submitted step is checked (handle_step_message saw its job id), and a submitted step has a provider.
    job_id, provider_name = step["provider_job_id"], step["provider"]
    assert job_id is not None and provider_name is not None
    provider = svc.providers.named(provider_name)
    try:
        status = provider.poll(job_id, step["provider_metadata"])
    except ProviderError as exc:
        count("ProviderErrors", provider=provider.name, code=exc.code)
        if exc.transient:
            return _defer(svc, run, step, backoff_seconds(svc, 2, exc.retry_after))
        return _fail(svc, run, step, exc.code, exc.message, seq=step["seq"])
    match status.state:
        case "pending":
            return _defer(svc, run, step, svc.settings.poll_interval_seconds, status)
        case "succeeded":
            return _succeed(svc, run, step, status)
        case "canceled":
            return _fail(svc, run, step, "provider_canceled", "The provider canceled the generation.", seq=step["seq"])
        case _:
            return _fail(
                svc,
                run,
                step,
                status.error_code or "provider_failed",
                status.error_message or "The provider reported a failed generation.",
                seq=step["seq"],
            )


def _defer(svc: Services, run: RunRow, step: StepRow, delay: float, status: JobStatus | None = None) -> StepOutcome:
    metadata = dict(status.metadata) if status else {}
    if status and status.progress is not None:
        metadata["progress"] = status.progress
    deferred = svc.store.defer_step(step["id"], step["seq"], delay, metadata)
    if deferred is None:
        return "stale"
    svc.step_queue.send(step_message(run["id"], step["id"], deferred["seq"]), delay)
    return "pending"


def _succeed(svc: Services, run: RunRow, step: StepRow, status: JobStatus) -> StepOutcome:
    try:
        durable = [_copy_output(svc, run, step, i, url) for i, url in enumerate(status.output_urls)]
    except FetchError as exc:
        if exc.transient:
            return _defer(svc, run, step, backoff_seconds(svc, 2))
        return _fail(
            svc, run, step, "output_copy_failed", f"Could not copy the provider's output: {exc}", seq=step["seq"]
        )
    except UnsafeUrlError as exc:
        return _fail(
            svc, run, step, "output_copy_failed", f"Provider output URL refused: {exc.message}", seq=step["seq"]
        )
    except MediaRefused as exc:
        message = f"The provider's output is not a usable {step['step_kind']}: {exc.message}"
        return _fail(svc, run, step, "output_media_refused", message, seq=step["seq"])
    if not durable:
        return _fail(
            svc, run, step, "provider_unexpected_response", "The provider returned no output.", seq=step["seq"]
        )
    result = svc.store.complete_step(step["id"], step["attempt"], durable, dict(status.metadata))
    if result is None:
        return "stale"  # canceled or timed out meanwhile: the late result is ignored
    if started_at := step["started_at"]:
        started = datetime.fromisoformat(started_at)
        duration("StepDuration", (datetime.now(UTC) - started).total_seconds(), model=step["model_identifier"])
    logger.info("step succeeded", extra={"run_id": run["id"], "step": step["step_key"]})
    if result["run_status"] == "succeeded":
        count("RunsSucceeded")
    next_step = result.get("next_step")
    if next_step is not None:
        svc.step_queue.send(step_message(run["id"], next_step["id"], next_step["seq"]))
    elif result["run_status"] != "running" and run.get("webhook_url"):
        svc.callback_queue.send(callback_message(run["id"]))
    return "succeeded"


def _copy_output(svc: Services, run: RunRow, step: StepRow, index: int, url: str) -> str:
    """Copies one output into the artifact store, after checking it is the kind of media the step makes."""
    provider = step["provider"]
    fetched = fetch_bytes(
        url,
        resolver=svc.resolver,
        max_bytes=svc.settings.max_output_bytes,
        total_timeout=svc.settings.download_timeout_seconds,
        allow_loopback_http=svc.settings.allow_loopback_http
        or (provider is not None and svc.providers.named(provider).outputs_on_loopback),
        media_kind=step["step_kind"],
    )
    key = f"{run_prefix(run['id'])}{step['step_key']}/output-{index}{EXTENSION_BY_CONTENT_TYPE[fetched.content_type]}"
    return svc.artifacts.put(key, fetched.content, fetched.content_type)


def _fail(
    svc: Services,
    run: RunRow,
    step: StepRow,
    code: str,
    message: str,
    *,
    attempt: int | None = None,
    seq: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> StepOutcome:
    failed = svc.store.fail_step(step["id"], code, message[:2000], attempt=attempt, seq=seq, provider_metadata=metadata)
    if failed is None:
        return "stale"
    count("RunsFailed", reason=code)
    logger.info("step failed", extra={"run_id": run["id"], "step": step["step_key"], "code": code})
    if run.get("webhook_url"):
        svc.callback_queue.send(callback_message(run["id"]))
    return "failed"
