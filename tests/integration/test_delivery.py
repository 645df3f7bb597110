"""The callback's retry schedule: retried with the same event id, every attempt recorded, given up when spent.

(Duplicate, out-of-order and lost messages, crashes, deadlines and the other faults are scenarios of the fault suite,
test_fault_suite.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from tests.conftest import client_for, wait_for_run
from tests.integration.requests import chain_request


def _run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = client.get(f"/api/v1/chains/get/{run_id}").json()
    return run


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
