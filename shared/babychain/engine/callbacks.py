"""The final callback: one signed event per run, delivered at least once on an exponential schedule."""

from __future__ import annotations

import json
import os
import random
import socket
import time
from datetime import UTC, datetime
from typing import Any

from babychain.engine.presenter import Share, present_run
from babychain.errors import UnsafeUrlError
from babychain.observability import count, logger
from babychain.queues import callback_message
from babychain.security.safe_http import FetchError, post_json
from babychain.security.webhooks import signature_headers
from babychain.services import Services
from babychain.store.rows import RunRow

USER_AGENT = "BabyChain/0.1 (+standard-webhooks)"


def callback_payload(run: RunRow, share: Share) -> dict[str, Any]:
    return {
        "type": f"chain_run.{run['status']}",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": present_run(run, share),
    }


def retry_delay(svc: Services, attempt: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after `attempt` failed, or None when the schedule is spent."""
    schedule = svc.settings.callback_schedule_seconds
    if attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    return max(retry_after or 0.0, base * random.uniform(0.9, 1.1))


PROC = "/proc"


def process_name(pid: int | str) -> str | None:
    """`<pid>@<start time>` of a process running on this host (Linux), None when it is gone or a zombie.

    The start time tells a process from a later one that the kernel gave the same pid (pids wrap, at 32768 on many
    machines, within minutes on a busy one): a sender that died never passes for alive because its pid came back.
    """
    try:
        with open(f"{PROC}/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # fields[0]: the state; fields[19]: the start time (field 22)
        return None
    return f"{pid}@{fields[19]}"


def sender_identity() -> str:
    """`<host>/<pid>@<start time>` (`<host>/<pid>` without /proc): the process that holds a callback attempt, so a
    supervisor that sees it die can end its lease."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{process_name(pid) or pid}"


def recover_dead_senders(svc: Services) -> int:
    """Re-sends at once the callbacks whose attempts were held by processes on this host that are gone (Linux).

    For a supervisor of local senders: it runs where they ran, and knows a sender died before its lease ran out.
    Without /proc it cannot tell who lives, and leaves the leases to end on their own.
    """
    if not os.path.isdir(PROC):
        return 0
    live = [name for pid in os.listdir(PROC) if pid.isdigit() and (name := process_name(pid)) is not None]
    due = svc.store.end_callback_leases(socket.gethostname(), live, max_attempts(svc))
    svc.callback_queue.send_many([callback_message(run_id) for run_id in due])
    if due:
        count("CallbackAttemptsAbandoned", len(due))
    return len(due)


def max_attempts(svc: Services) -> int:
    return len(svc.settings.callback_schedule_seconds) + 1


def deliver_callback(svc: Services, run_id: str, deferrals: int = 0) -> str:
    s = svc.settings
    # If the receiver is busy: waits grow per message (0.5 s, 1 s, 2 s ... up to one attempt's deadline), so a
    # backlog for one slow receiver costs a few claims a second while a fast receiver's turn comes round quickly.
    wait = min(s.callback_timeout_seconds, 0.5 * 2**deferrals) * random.uniform(1.0, 1.5)
    claim = svc.store.claim_callback(
        run_id,
        lease_seconds=s.callback_stale_seconds,
        max_attempts=max_attempts(svc),
        origin_limit=s.callback_receiver_concurrency,
        defer_seconds=wait,
        holder=sender_identity(),
    )
    if claim is None:
        return "not_due"
    if "busy" in claim:
        # Come back when the attempt in flight has run out its lease, or (a little after) the callback is due again.
        delay = claim["retry_in"] + 0.5 if claim["busy"] == "attempt" else wait + 0.2
        count("CallbacksDeferred", reason=claim["busy"])
        svc.callback_queue.send(callback_message(run_id, deferrals + 1), delay)
        return "deferred"
    run, attempt = claim["run"], claim["attempt"]
    webhook_url = run["webhook_url"]
    assert webhook_url is not None  # only a run with a webhook_url has a callback to claim
    body = json.dumps(callback_payload(run, svc.artifacts.shareable), separators=(",", ":")).encode()
    # `timeout` is the attempt's whole deadline (connect, send, read), however the receiver paces its answer: the
    # claim's lease outlasts it, so no other sender can take this attempt over while it may still succeed.
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signature_headers(svc.settings.require_callback_secret(), run["callback_event_id"], body),
    }
    started = time.monotonic()
    status_code: int | None = None
    excerpt: str | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        result = post_json(
            webhook_url,
            body,
            headers,
            resolver=svc.resolver,
            timeout=svc.settings.callback_timeout_seconds,
            allow_loopback_http=svc.settings.allow_loopback_http,
        )
        status_code, excerpt, retry_after = result.status_code, result.body_excerpt, result.retry_after
    except (FetchError, UnsafeUrlError) as exc:
        error = str(exc)[:2000]
    delivered = status_code is not None and 200 <= status_code < 300
    if delivered or status_code == 410:
        retry_in = None
    else:
        retry_in = retry_delay(svc, attempt, retry_after)
        if status_code is not None and error is None:
            error = f"Receiver answered HTTP {status_code}."
    count("CallbackAttempts", outcome="delivered" if delivered else "failed")
    logger.info(
        "callback attempt",
        extra={"run_id": run_id, "attempt": attempt, "status_code": status_code, "delivered": delivered},
    )
    svc.store.record_callback_attempt(
        {
            "run_id": run_id,
            "attempt": attempt,
            "event_id": run["callback_event_id"],
            "outcome": "delivered" if delivered else "failed",
            "status_code": status_code,
            "error": error,
            "response_excerpt": excerpt,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "retry_in_seconds": retry_in,
        }
    )
    if delivered:
        return "delivered"
    if retry_in is not None:
        # SQS delays stop at 15 minutes; a later attempt is re-driven by the sweeper when due.
        svc.callback_queue.send(callback_message(run_id), retry_in)
        return "retrying"
    return "gave_up"
