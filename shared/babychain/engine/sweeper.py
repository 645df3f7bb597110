"""The scheduled safety net: deadlines, lost messages, due callbacks; and retention (old finished runs deleted)."""

from __future__ import annotations

import contextlib
from typing import Any, cast

from babychain.errors import ProviderError
from babychain.observability import count, logger
from babychain.queues import callback_message, step_message
from babychain.services import Services
from babychain.store.rows import TimedOutStep

BATCH_LIMIT = 500
# Retention: runs deleted per statement, and statements per sweep. Each batch is its own short transaction, so a
# backlog (the first sweep after retention is turned on, or lowered) drains over several ticks without a long lock.
# A run costs the purge ~30-60 us of server time (the run, 3 steps, their job ids, its callback attempts; the steps
# and attempts still go by one cascade statement per run), so 16 runs and 64 receipts keep a call near 1 ms at any
# history and under custom plans too (bench/history.py: 32 and 128 took 1.7-4 ms as a whole call at 1,000,000 runs).
# Keeping up: runs expire as fast as they were made, and a sweep deletes up to 16 x 640 = 10,240 runs, so the purge
# keeps pace with 170 runs/s at the AWS schedule (one sweep a minute; the target is 150 runs/s) and 5,120
# runs/s locally (one every 2 s); a full sweep is 640 calls of ~1 ms, about a second of database time, and only
# while there is a backlog. Receipts cascade to nothing and arrive a few per run (one per provider webhook), so they
# get 4 times the batch: 64 x 640 = 40,960 a sweep (680/s at the AWS schedule).
PURGE_BATCH = 16
PURGE_RECEIPT_BATCH = 64
PURGE_BATCHES_PER_SWEEP = 640
# Provider webhook receipts only deduplicate a provider's retried deliveries (minutes to hours; a late duplicate of a
# finished step is refused by the step's own state anyway), so they are kept a week, or the run window if shorter,
# and go even when runs are kept forever: otherwise the table grows with every webhook ever received.
WEBHOOK_RECEIPT_DAYS = 7


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
    counts = {key: len(cast(list[Any], value)) for key, value in result.items()}
    return counts | purge_expired(svc)


def purge_expired(
    svc: Services,
    *,
    batch: int = PURGE_BATCH,
    receipt_batch: int = PURGE_RECEIPT_BATCH,
    batches: int = PURGE_BATCHES_PER_SWEEP,
) -> dict[str, int]:
    """Deletes finished runs older than `BABYCHAIN_RETENTION_DAYS` (with their steps, callback attempts and local
    artifact files; 0 keeps them all) and webhook receipts older than WEBHOOK_RECEIPT_DAYS (or the run window if
    shorter): at most `batches` statements of at most `batch` runs and `receipt_batch` receipts each.

    Runs go first, their files after (a file never outlives its run by more than this call). Returns the counts.
    """
    days = svc.settings.retention_days
    receipt_days = min(days, WEBHOOK_RECEIPT_DAYS) if days > 0 else WEBHOOK_RECEIPT_DAYS
    purged = {"purged_runs": 0, "purged_receipts": 0, "purge_batches": 0}
    for _ in range(batches):
        result = svc.store.purge_expired_runs(days, batch, receipt_days, receipt_limit=receipt_batch)
        purged["purge_batches"] += 1
        _delete_artifacts(svc, result["run_ids"])
        purged["purged_runs"] += len(result["run_ids"])
        purged["purged_receipts"] += result["receipts"]
        if result["busy"]:
            logger.warning("retention purge skipped a batch: rows were locked", extra={"retention_days": days})
            break
        if len(result["run_ids"]) < batch and result["receipts"] < receipt_batch:
            break  # nothing more is due now
    if purged["purged_runs"] or purged["purged_receipts"]:
        count("RunsPurged", purged["purged_runs"])
        count("WebhookReceiptsPurged", purged["purged_receipts"])
        logger.info("retention purge", extra={**purged, "retention_days": days, "receipt_days": receipt_days})
    return purged


def _delete_artifacts(svc: Services, run_ids: list[str]) -> None:
    for run_id in run_ids:
        try:
            svc.artifacts.delete_run(run_id)
        except OSError as exc:  # one unremovable folder must not keep the others (or the next batch) from going
            logger.warning("retention: artifact files not removed", extra={"run_id": run_id, "error": str(exc)})


def _cancel_quietly(svc: Services, step: TimedOutStep) -> None:
    job_id, provider = step["provider_job_id"], step["provider"]
    if job_id is None or provider is None:
        return  # never submitted: nothing runs at a provider
    with contextlib.suppress(ProviderError):  # best effort: the step has failed here either way
        svc.providers.named(provider).cancel(job_id, step["provider_metadata"] or {})
