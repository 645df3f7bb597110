"""At-least-once delivery: every message type delivered twice changes nothing; lost work is re-driven."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from babychain.local.lambda_shim import LambdaContext, load_handler, sqs_event
from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from tests.conftest import client_for, wait_for_run
from tests.integration.requests import chain_request


def _deliver(function: str, body: dict[str, Any]) -> dict[str, Any]:
    handler = load_handler(function)
    response: dict[str, Any] = handler(sqs_event(function, [("m-1", body, 1)]), LambdaContext(function))
    assert response == {"batchItemFailures": []}
    return response


def _run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = client.get(f"/api/v1/chains/get/{run_id}").json()
    return run


def test_each_message_type_delivered_twice_changes_nothing(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    engine = make_engine(workers=False)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", receiver.url)).json()["id"]

        # Claim + submit, twice: one provider submission, one attempt.
        claim = engine.step_queue.take(timeout=1)
        assert claim is not None and claim["seq"] == 0
        _deliver("step_executor", claim)
        _deliver("step_executor", claim)
        assert len(engine.provider_server.submissions) == 1
        step = _run(client, run_id)["steps"][0]
        assert (step["status"], step["attempt"]) == ("running", 1)

        # The first poll message; delivered twice after the job is done: one completion, one next-step message.
        poll = engine.step_queue.take(timeout=2)
        assert poll is not None and poll["step_id"] == claim["step_id"]
        time.sleep(0.25)  # the provider's delay
        _deliver("step_executor", poll)
        after_first = _run(client, run_id)
        while after_first["steps"][0]["status"] == "running":  # still pending at the provider: keep polling
            poll = engine.step_queue.take(timeout=2)
            assert poll is not None
            _deliver("step_executor", poll)
            after_first = _run(client, run_id)
        _deliver("step_executor", poll)
        after_second = _run(client, run_id)
        assert after_first["steps"][0]["status"] == "succeeded"
        assert after_second["steps"] == after_first["steps"]
        next_message = engine.step_queue.take(timeout=1)
        assert next_message is not None and next_message["step_id"] == after_first["steps"][1]["id"]
        assert engine.step_queue.take(timeout=0.2) is None  # no second copy of the next-step message

        # Drive the video step to the end.
        message: dict[str, Any] | None = next_message
        while message is not None:
            _deliver("step_executor", message)
            message = engine.step_queue.take(timeout=2)
        run = _run(client, run_id)
        assert run["status"] == "succeeded"
        assert len(engine.provider_server.submissions) == 2

        # The callback message, twice: one delivery.
        callback = engine.callback_queue.take(timeout=1)
        assert callback == {"type": "callback", "run_id": run_id}
        _deliver("callback_sender", callback)
        _deliver("callback_sender", callback)
        assert len(receiver.wait_for(1, timeout=5)) == 1
        time.sleep(0.2)
        assert len(receiver.deliveries) == 1

        # A stale message from the start of the run, delivered late, changes nothing either.
        _deliver("step_executor", claim)
        assert _run(client, run_id)["steps"] == run["steps"]
        assert len(engine.provider_server.submissions) == 2

        # And the sweeper, run twice on a finished run, re-drives nothing of it. (The database is shared with
        # other tests, whose leftovers it may well find.)
        engine.sweep_once()
        engine.sweep_once()
        redriven = [
            m for q in (engine.step_queue, engine.callback_queue) for m in iter(lambda q=q: q.take(timeout=0.1), None)
        ]
        assert [m for m in redriven if m["run_id"] == run_id] == []


def test_callback_is_retried_with_the_same_event_id_and_every_attempt_recorded(
    make_engine: Callable[..., LocalEngine],
) -> None:
    engine = make_engine()
    receiver = WebhookReceiver(engine.settings.callback_secret, answers=[500, 503]).start()
    try:
        with client_for(engine) as client:
            run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", receiver.url)).json()["id"]
            wait_for_run(client, run_id)
            deliveries = receiver.wait_for(3, timeout=10)
            time.sleep(0.5)
            run = _run(client, run_id)
    finally:
        receiver.stop()
    assert [d.answered for d in deliveries] == [500, 503, 204]
    assert len(receiver.deliveries) == 3
    assert {d.headers["webhook-id"] for d in deliveries} == {f"evt_{run_id}"}
    assert all(d.verified for d in deliveries)
    assert run["callback"]["status"] == "delivered" and run["callback"]["attempts"] == 3
    attempts = engine.store.list_callback_deliveries(run_id) if engine.store else []
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
        (1, "failed", 500),
        (2, "failed", 503),
        (3, "delivered", 204),
    ]


def test_callback_gives_up_after_the_schedule(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(callback_schedule_seconds=(0.05,))
    receiver = WebhookReceiver(engine.settings.callback_secret, answers=[500] * 10).start()
    try:
        with client_for(engine) as client:
            run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", receiver.url)).json()["id"]
            wait_for_run(client, run_id)
            receiver.wait_for(2, timeout=10)
            time.sleep(1.0)
            run = _run(client, run_id)
    finally:
        receiver.stop()
    assert len(receiver.deliveries) == 2
    assert run["callback"]["status"] == "failed"


def test_sweeper_redrives_a_lost_step_message(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(workers=False, sweeper_grace_seconds=0.0)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        lost = engine.step_queue.take(timeout=1)
        assert lost is not None  # ...and dropped on the floor
        time.sleep(0.05)
        assert engine.sweep_once()["due_steps"] >= 1
        redriven = [m for m in iter(lambda: engine.step_queue.take(timeout=0.2), None)]
        assert lost in redriven
        _deliver("step_executor", lost)
        assert _run(client, run_id)["steps"][0]["status"] == "running"


def test_sweeper_fails_a_step_past_its_deadline_and_cancels_at_the_provider(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    engine = make_engine(image_step_timeout_seconds=0.3, local_provider_delay_seconds=30.0)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", receiver.url)).json()["id"]
        run = wait_for_run(client, run_id, timeout=15)
    assert run["status"] == "failed"
    assert run["steps"][0]["error"]["code"] == "step_running_timed_out"
    assert [s["status"] for s in run["steps"]] == ["failed", "skipped"]
    assert receiver.wait_for(1, timeout=10)[0].json()["type"] == "chain_run.failed"
    job_id = next(iter((engine.home / "local-provider" / "jobs").glob("*.json"))).stem
    assert engine.provider_server.status(job_id)["status"] == "canceled"
