"""The step executor: one queue message advances its step by one action, and the steps after it while it can.

take (claim) → submit → (poll or webhook) → copy outputs → complete. The completion claims the next step, which this
executor submits at once when a whole submit still fits in its invocation (otherwise the next step's message is
sent); after the last step the run ends and its callback is enqueued. Every write is a guarded transition keyed by
the step's `seq` or `attempt`, so a duplicate or late message, or a result arriving after cancel, changes nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, cast

from babychain.artifacts import run_prefix
from babychain.chains.catalog import MODELS_BY_ID
from babychain.chains.families import babysea_params
from babychain.engine.webhooks import webhook_url_for
from babychain.errors import ProviderError, UnsafeUrlError
from babychain.media_types import EXTENSION_BY_CONTENT_TYPE, MediaRefused
from babychain.observability import count, duration, logger, metrics_on
from babychain.providers.base import JobStatus, Provider, StepJob, Submission
from babychain.queues import callback_message, step_message
from babychain.security.deadline import total_deadline
from babychain.security.safe_http import FetchError, fetch_bytes
from babychain.services import Services
from babychain.store.rows import StepRun, WorkStep

# What one step message did: submitted a job, found it still running (pending), retried a transient submit error,
# completed or failed the step, or nothing (stale: a duplicate, late or superseded message).
StepOutcome = Literal["submitted", "pending", "retrying", "succeeded", "failed", "stale"]
# A step action's outcome, and the next step when its completion claimed it for this executor to submit.
Advanced = tuple[StepOutcome, WorkStep | None]
TimeLeft = Callable[[], float]
# Kept free at the end of an invocation, beyond the submit and download deadlines, to record what happened.
INVOCATION_MARGIN_SECONDS = 10.0


def backoff_seconds(svc: Services, attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the provider's Retry-After."""
    s = svc.settings
    ceiling = min(s.retry_max_seconds, s.retry_base_seconds * (2 ** max(0, attempt - 1)))
    return max(retry_after or 0.0, random.uniform(ceiling / 2, ceiling))


def handle_step_message(svc: Services, message: dict[str, Any], time_left: TimeLeft | None = None) -> StepOutcome:
    """Returns what happened, for logs and tests.

    `time_left`: seconds this invocation may still run (a Lambda's remaining time); None when unbounded. A step that
    completes here claims and submits the next step in the same invocation only while a whole submit still fits, and
    copies a synchronous result before recording it only while the download still fits.
    """
    polled: Polled | None = None
    if job := message.get("job"):
        # A poll message carries what polling needs: the provider is asked first (a read-only GET, harmless if the
        # message is stale), and a job still running costs one guarded statement, the defer.
        polled = _poll(svc, job["provider"], job["id"], job["metadata"])
        pending = _pending_delay(svc, polled)
        if pending is not None:
            status = polled if isinstance(polled, JobStatus) else None
            return _defer(svc, message["run_id"], message["step_id"], message["seq"], pending, status)
    timeout = svc.settings.submit_timeout_seconds
    taken = svc.store.take_step(message["run_id"], message["step_id"], message["seq"], submit_timeout_seconds=timeout)
    if taken is None:
        return "stale"  # a duplicate, late or superseded message, or the run moved on
    run, step = taken["run"], taken["step"]
    if taken["action"] == "check":
        if job is None or job["id"] != step["provider_job_id"]:
            polled = None
        outcome, claimed = _check(svc, run, step, time_left, polled)
    else:
        outcome, claimed = _start(svc, run, step, time_left)
    while claimed is not None:  # the completion claimed the next step: submit it here, without another message
        outcome, claimed = _start(svc, run, claimed, time_left)
    return outcome


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


def _start(svc: Services, run: StepRun, step: WorkStep, time_left: TimeLeft | None) -> Advanced:
    """Submits a step this executor has just claimed (`step["attempt"]` is the claimed attempt)."""
    claimed_at = time.monotonic()
    attempt = step["attempt"]
    model = MODELS_BY_ID[step["model_identifier"]]
    family = model.family(run["mode"])
    inputs = _step_inputs(svc, step, family)
    if inputs is None:
        message = "Required previous step output is missing."
        return _fail(svc, run, step, "chain_step_params_failed", message, attempt=attempt), None
    params, input_files = inputs
    routes = svc.providers.routes(model)
    provider = routes[route_for_attempt(attempt - 1, svc.settings.max_submit_attempts, len(routes))]
    mode = run["mode"]
    if provider.name == "babysea" and mode != "babysea":
        params, mode = babysea_params(family.describe(params), step["step_kind"]), "babysea"
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
    attempts = list(step["provider_metadata"].get("attempts", []))
    record = {"attempt": attempt, "provider": provider.name, "at": _now()}
    try:
        # The claim holds the step for `submit_timeout_seconds` (then the sweeper gives the attempt back): the submit
        # ends within it, however slowly the provider answers, so no second attempt is ever submitted beside it.
        with total_deadline(svc.settings.submit_timeout_seconds):
            submission = provider.submit(job)
    except ProviderError as exc:
        attempts.append({**record, "error_code": exc.code})
        return _submit_failed(svc, run, step, provider, attempt, attempts, exc, len(routes)), None
    attempts.append({**record, "job_id": submission.job_id})
    # What the claim left to the submission's record: the route taken and what it was given.
    recorded = {"provider": provider.name, "request_params": params, "input_files": input_files}
    metadata = {**submission.metadata, "attempts": attempts}
    if submission.output_urls is not None and _copy_fits(svc, claimed_at, time_left):
        # A synchronous result: copied, then recorded and completed in one statement (the attempt guard decides).
        status = JobStatus("succeeded", output_urls=submission.output_urls, metadata=metadata)
        running = {**step, "provider": provider.name, "provider_job_id": submission.job_id}
        submitted = {**recorded, "provider_job_id": submission.job_id}
        return _succeed(svc, run, cast(WorkStep, running), status, time_left, submission=submitted)
    return _submitted(svc, run, step, provider, attempt, metadata, submission, recorded)


def _copy_fits(svc: Services, claimed_at: float, time_left: TimeLeft | None) -> bool:
    """Whether the outputs can be copied before the job id is recorded: within the claim's hold (else the sweeper
    would give the attempt back meanwhile) and within this invocation."""
    s = svc.settings
    held = time.monotonic() - claimed_at + s.download_timeout_seconds < s.submit_timeout_seconds
    return held and (time_left is None or time_left() > s.download_timeout_seconds + INVOCATION_MARGIN_SECONDS)


def _may_continue(svc: Services, time_left: TimeLeft | None) -> float | None:
    """The submit deadline to claim the next step with, when its whole submit fits in this invocation (its copy is
    checked by `_copy_fits`); None: the next step goes by message."""
    s = svc.settings
    if not s.next_step_in_invocation:
        return None
    if time_left is not None and time_left() < s.submit_timeout_seconds + INVOCATION_MARGIN_SECONDS:
        return None
    return s.submit_timeout_seconds


def _step_inputs(svc: Services, step: WorkStep, family: Any) -> tuple[dict[str, Any], list[str] | None] | None:
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
    run: StepRun,
    step: WorkStep,
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
    run: StepRun,
    step: WorkStep,
    provider: Provider,
    attempt: int,
    metadata: dict[str, Any],
    submission: Submission,
    recorded: dict[str, Any],
) -> Advanced:
    delay = svc.settings.poll_interval_seconds
    if submission.output_urls is not None:
        delay = 0  # a result that could not be copied before recording: the check copies it at once
    row = svc.store.record_submission(step["id"], attempt, submission.job_id, metadata, delay, **recorded)
    if row is None:
        # Cancel (or a deadline) won while we were submitting: the job must not run on for nothing.
        provider.cancel(submission.job_id, submission.metadata)
        return "stale", None
    svc.step_queue.send(poll_message(run["id"], row), delay)
    return "submitted", None


def _now() -> str:
    return datetime.now(UTC).isoformat()


Polled = JobStatus | ProviderError  # a provider's answer to a poll, or its error


def _poll(svc: Services, provider_name: str, job_id: str, metadata: dict[str, Any]) -> Polled:
    provider = svc.providers.named(provider_name)
    try:
        return provider.poll(job_id, metadata)
    except ProviderError as exc:
        count("ProviderErrors", provider=provider.name, code=exc.code)
        return exc


def _pending_delay(svc: Services, polled: Polled) -> float | None:
    """When to poll again if the job is still running (or the poll failed transiently); None otherwise."""
    if isinstance(polled, ProviderError):
        return backoff_seconds(svc, 2, polled.retry_after) if polled.transient else None
    return svc.settings.poll_interval_seconds if polled.state == "pending" else None


def _check(svc: Services, run: StepRun, step: WorkStep, time_left: TimeLeft | None, polled: Polled | None) -> Advanced:
    # Only a submitted step is checked (bc_take_step saw its job id), and a submitted step has a provider.
    job_id, provider_name = step["provider_job_id"], step["provider"]
    assert job_id is not None and provider_name is not None
    if polled is None:
        polled = _poll(svc, provider_name, job_id, step["provider_metadata"])
    pending = _pending_delay(svc, polled)
    if pending is not None:
        status = polled if isinstance(polled, JobStatus) else None
        return _defer(svc, run["id"], step["id"], step["seq"], pending, status), None
    if isinstance(polled, ProviderError):
        return _fail(svc, run, step, polled.code, polled.message, seq=step["seq"]), None
    match polled.state:
        case "succeeded":
            return _succeed(svc, run, step, polled, time_left)
        case "canceled":
            message = "The provider canceled the generation."
            return _fail(svc, run, step, "provider_canceled", message, seq=step["seq"]), None
        case _:
            code = polled.error_code or "provider_failed"
            message = polled.error_message or "The provider reported a failed generation."
            return _fail(svc, run, step, code, message, seq=step["seq"]), None


def _defer(
    svc: Services, run_id: str, step_id: str, seq: int, delay: float, status: JobStatus | None = None
) -> StepOutcome:
    metadata = dict(status.metadata) if status else {}
    if status and status.progress is not None:
        metadata["progress"] = status.progress
    deferred = svc.store.defer_step(step_id, seq, delay, metadata)
    if deferred is None:
        return "stale"
    svc.step_queue.send(poll_message(run_id, deferred), delay)
    return "pending"


def poll_message(run_id: str, step: WorkStep) -> dict[str, Any]:
    """A step message for a submitted job, carrying what its poll needs (the provider's metadata, without the
    engine's attempt history) so that a job still running costs one statement."""
    job_id, provider = step["provider_job_id"], step["provider"]
    assert job_id is not None and provider is not None
    metadata = {k: v for k, v in step["provider_metadata"].items() if k != "attempts"}
    job = {"provider": provider, "id": job_id, "metadata": metadata}
    return step_message(run_id, step["id"], step["seq"]) | {"job": job}


def _succeed(
    svc: Services,
    run: StepRun,
    step: WorkStep,
    status: JobStatus,
    time_left: TimeLeft | None,
    submission: dict[str, Any] | None = None,
) -> Advanced:
    """Copies the outputs and completes the step. `submission`: the step's submit is not recorded yet (a synchronous
    result); it is recorded with the completion, and failures before it are guarded by the attempt."""
    durable = _copy_outputs(svc, run, step, status, submission)
    if not isinstance(durable, list):
        return durable, None
    result = svc.store.complete_step(
        step["id"],
        step["attempt"],
        durable,
        dict(status.metadata),
        submission=submission,
        claim_next_timeout_seconds=_may_continue(svc, time_left),
    )
    if result is None:
        if submission:  # cancel (or a deadline) won meanwhile; as for any submission that lost, stop the job
            provider = svc.providers.named(submission["provider"])
            provider.cancel(submission["provider_job_id"], status.metadata)
        return "stale", None  # canceled or timed out meanwhile: the late result is ignored
    if (started_at := step["started_at"]) and metrics_on():  # two datetimes per step only for a metric kept
        started = datetime.fromisoformat(started_at)
        duration("StepDuration", (datetime.now(UTC) - started).total_seconds(), model=step["model_identifier"])
    logger.info("step succeeded", extra={"run_id": run["id"], "step": step["step_key"]})
    if result["run_status"] == "succeeded":
        count("RunsSucceeded")
    next_step = result.get("next_step")
    if next_step is not None and result["next_claimed"]:
        return "succeeded", next_step
    if next_step is not None:
        svc.step_queue.send(step_message(run["id"], next_step["id"], next_step["seq"]))
    elif result["run_status"] != "running" and run.get("webhook_url"):
        svc.callback_queue.send(callback_message(run["id"]))
    return "succeeded", None


def _copy_outputs(
    svc: Services, run: StepRun, step: WorkStep, status: JobStatus, submission: dict[str, Any] | None
) -> list[str] | StepOutcome:
    """The outputs' durable URLs, or what happened instead (the step failed, or the copy is left to a later check)."""
    # Before the submission is recorded the attempt is the guard; after it, the message's seq.
    attempt, seq = (step["attempt"], None) if submission else (None, step["seq"])
    try:
        durable = [_copy_output(svc, run, step, i, url) for i, url in enumerate(status.output_urls)]
    except FetchError as exc:
        if not exc.transient:
            message = f"Could not copy the provider's output: {exc}"
            return _fail(svc, run, step, "output_copy_failed", message, attempt=attempt, seq=seq)
        if submission:  # record the submission; a check copies the outputs after a backoff
            delay = backoff_seconds(svc, 2)
            fields = {k: v for k, v in submission.items() if k != "provider_job_id"}
            job_id = submission["provider_job_id"]
            row = svc.store.record_submission(step["id"], step["attempt"], job_id, status.metadata, delay, **fields)
            if row is None:
                return "stale"
            svc.step_queue.send(poll_message(run["id"], row), delay)
            return "pending"
        return _defer(svc, run["id"], step["id"], step["seq"], backoff_seconds(svc, 2))
    except UnsafeUrlError as exc:
        message = f"Provider output URL refused: {exc.message}"
        return _fail(svc, run, step, "output_copy_failed", message, attempt=attempt, seq=seq)
    except MediaRefused as exc:
        message = f"The provider's output is not a usable {step['step_kind']}: {exc.message}"
        return _fail(svc, run, step, "output_media_refused", message, attempt=attempt, seq=seq)
    if not durable:
        message = "The provider returned no output."
        return _fail(svc, run, step, "provider_unexpected_response", message, attempt=attempt, seq=seq)
    return durable


def _copy_output(svc: Services, run: StepRun, step: WorkStep, index: int, url: str) -> str:
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
    run: StepRun,
    step: WorkStep,
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
