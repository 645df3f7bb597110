"""One caller's slow receivers never hold up another caller's callback, and a slow receiver gets no extra attempts.

The receivers here answer 200 a byte at a time, forever: each attempt runs to its deadline
(BABYCHAIN_CALLBACK_TIMEOUT_SECONDS). The engine under test is the real local one: one callback sender to begin
with, more started while every sender is busy and callbacks wait, and a per-receiver limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from babychain.services import services
from tests.conftest import CALLBACK_SECRET, client_for, wait_for_run, wait_until
from tests.integration.requests import chain_request
from tests.standins.trickle import TrickleReceiver

ATTEMPT_DEADLINE = 6.0
SCHEDULE = (0.5,)  # two attempts per event


@pytest.fixture
def tricklers() -> Iterator[Callable[[], TrickleReceiver]]:
    made: list[TrickleReceiver] = []

    def make() -> TrickleReceiver:
        made.append(TrickleReceiver("body", body_bytes=1_000_000))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def _engine(make_engine: Callable[..., LocalEngine], **overrides: Any) -> LocalEngine:
    return make_engine(
        callback_timeout_seconds=ATTEMPT_DEADLINE,
        callback_stale_seconds=ATTEMPT_DEADLINE + 5,
        callback_schedule_seconds=SCHEDULE,
        **overrides,
    )


def _start(client: httpx.Client, webhook_url: str) -> dict[str, Any]:
    response = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", webhook_url))
    assert response.status_code == 202, response.text
    return response.json()


def _healthy_delay(client: httpx.Client, healthy: WebhookReceiver, run_id: str) -> float:
    """Seconds from the healthy run's end to its callback's arrival at the receiver."""
    run = wait_for_run(client, run_id)
    assert run["status"] == "succeeded"
    (delivery,) = healthy.wait_for(1, timeout=60)
    assert delivery.json()["data"]["id"] == run_id
    ended = datetime.fromisoformat(run["completed_at"])
    return (delivery.received_at - ended).total_seconds()


def _settled(run_id: str) -> bool:
    run = services().store.get_run(run_id)
    return run is not None and run["callback_status"] in ("delivered", "failed")


def test_four_endless_receivers_do_not_delay_a_healthy_one(
    make_engine: Callable[..., LocalEngine], tricklers: Callable[[], TrickleReceiver]
) -> None:
    engine = _engine(make_engine)
    slow = [tricklers() for _ in range(4)]
    with client_for(engine) as client, WebhookReceiver(CALLBACK_SECRET) as healthy:
        slow_runs = [_start(client, receiver.url) for receiver in slow]
        # Every slow callback is in its first attempt: with one sender to begin with, all senders are held.
        assert wait_until(lambda: all(receiver.attempts for receiver in slow), timeout=60)
        healthy_run = _start(client, healthy.url)
        delay = _healthy_delay(client, healthy, healthy_run["id"])
        # Had it waited for a sender to come free, it would have waited for a slow attempt's deadline.
        assert delay < ATTEMPT_DEADLINE / 2, delay
        assert wait_until(lambda: all(_settled(run["id"]) for run in slow_runs), timeout=120)

    for receiver, run in zip(slow, slow_runs, strict=True):
        stored = services().store.get_run(run["id"])
        assert stored is not None and stored["callback_status"] == "failed"
        # Exactly the schedule: one attempt plus one retry, each cut off at its deadline, each recorded once.
        assert receiver.attempts == {stored["callback_event_id"]: 1 + len(SCHEDULE)}, receiver.attempts
        rows = services().store.list_callback_deliveries(run["id"])
        assert [(row["attempt"], row["outcome"]) for row in rows] == [(1, "failed"), (2, "failed")]
        assert all(row["error"] == "Request timed out." for row in rows)
        assert all(row["duration_ms"] < (ATTEMPT_DEADLINE + 2) * 1000 for row in rows)
        assert receiver.completed == 0


def test_one_slow_receiver_holds_no_more_senders_than_its_limit(
    make_engine: Callable[..., LocalEngine], tricklers: Callable[[], TrickleReceiver]
) -> None:
    engine = _engine(make_engine, callback_receiver_concurrency=2)
    slow = tricklers()
    with client_for(engine) as client, WebhookReceiver(CALLBACK_SECRET) as healthy:
        slow_runs = [_start(client, slow.url) for _ in range(4)]
        assert wait_until(lambda: slow.open >= 2, timeout=60)
        healthy_run = _start(client, healthy.url)
        delay = _healthy_delay(client, healthy, healthy_run["id"])
        assert delay < ATTEMPT_DEADLINE / 2, delay
        assert wait_until(lambda: all(_settled(run["id"]) for run in slow_runs), timeout=180)

    assert slow.most_open == 2  # the others waited their turn instead of holding senders
    assert sorted(slow.attempts.values()) == [1 + len(SCHEDULE)] * 4
