"""One contract for both store adapters: psycopg straight to Postgres, and supabase-py through PostgREST RPC.

Every test runs against `PostgresStore(session_database_url)` and `SupabaseStore(gateway.url, key)` in front of
the same database, and expects the same values. The database is shared by the whole test session, so each test works
with its own owner ids and rows. Then: the Supabase adapter's error mapping, and Row Level Security.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from babychain.local.queue import PostgresQueue
from babychain.queues import STEP_MESSAGE, step_message
from babychain.store.base import Store
from babychain.store.errors import StoreAuthError, StoreError, StoreUnavailable
from babychain.store.migrations import MIGRATIONS_DIR, apply_migrations
from babychain.store.postgres import PostgresStore
from babychain.store.rows import ListedRunRow, ListedStepRow, WorkStep
from babychain.store.supabase import SupabaseStore
from tests.conftest import free_port, wait_until
from tests.standins.postgrest import PostgrestStandIn

ADAPTERS = ("postgres", "supabase")
RUN_KEYS = {
    "callback_claimed_by",
    "id",
    "owner_id",
    "chain_slug",
    "chain_version",
    "mode",
    "status",
    "input",
    "metadata",
    "webhook_url",
    "idempotency_key",
    "request_hash",
    "current_step_key",
    "output",
    "error_code",
    "error_message",
    "deadline_at",
    "callback_event_id",
    "callback_status",
    "callback_attempts",
    "callback_next_at",
    "callback_claimed_at",
    "created_at",
    "updated_at",
    "completed_at",
    "estimate",
    "steps",
}
LISTED_RUN_KEYS = set(ListedRunRow.__annotations__)
LISTED_STEP_KEYS = set(ListedStepRow.__annotations__)
WORK_STEP_KEYS = set(WorkStep.__annotations__)
TIMERS_MIGRATION = "20261201100000_step_timers.sql"


def as_work(step: Any) -> dict[str, Any]:
    """A step read alone (every column) as the transitions hand it to the executor (bc_take_step, bc_complete_step):
    the fields it reads, the same values."""
    return {k: step[k] for k in WORK_STEP_KEYS}


def as_listed(run: Any) -> dict[str, Any]:
    """A run read alone (every column) as a list page carries it."""
    listed = {k: run[k] for k in LISTED_RUN_KEYS}
    listed["steps"] = [{k: s[k] for k in LISTED_STEP_KEYS} for s in run["steps"]]
    return listed


SWEEP_KEYS = {"timed_out_runs", "timed_out_steps", "requeued_steps", "due_steps", "due_callbacks"}


# fixtures -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(session_database_url: str) -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn(session_database_url, "sb_secret_" + secrets.token_urlsafe(24)) as server:
        yield server


@pytest.fixture(scope="module")
def stores(session_database_url: str, gateway: PostgrestStandIn) -> Iterator[dict[str, Store]]:
    postgres = PostgresStore(session_database_url, max_size=2)
    supabase = SupabaseStore(gateway.url, gateway.service_role_key, timeout=10.0)
    yield {"postgres": postgres, "supabase": supabase}
    supabase.close()
    postgres.close()


@pytest.fixture(params=ADAPTERS)
def store(request: pytest.FixtureRequest, stores: dict[str, Store]) -> Store:
    return stores[request.param]


def new_owner() -> str:
    return f"test:{uuid.uuid4().hex}"


def run_request(
    owner_id: str,
    *,
    steps: int = 2,
    slug: str = "contract-chain",
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    timeout_seconds: float = 3600.0,
    request_hash: str = "hash-1",
) -> dict[str, Any]:
    run_id = str(uuid.uuid4())
    step_rows = [
        {
            "step_index": 0,
            "step_key": "image",
            "step_kind": "image",
            "model_identifier": "local/image",
            "depends_on": [],
            "params": {"prompt": "a lighthouse", "n": 1, "ratio": 1.5},
        },
        {
            "step_index": 1,
            "step_key": "video",
            "step_kind": "video",
            "model_identifier": "local/video",
            "depends_on": ["image"],
            "params": {"duration": 5},
        },
    ]
    return {
        "id": run_id,
        "owner_id": owner_id,
        "chain_slug": slug,
        "chain_version": "2026-11-21",
        "mode": "local",
        "input": {"prompt": "a lighthouse", "nested": {"list": [1, 2.5, "três", None, True]}},
        "metadata": {"customer": "ü-42"},
        "webhook_url": webhook_url,
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
        "run_timeout_seconds": timeout_seconds,
        "callback_event_id": f"evt_{run_id}",
        "steps": step_rows[:steps],
        "estimate": {"usd": 0.05, "items": [{"step_key": "image", "usd": 0.05}]},
    }


def make_run(store: Store, owner_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
    result = store.create_run(run_request(owner_id or new_owner(), **kwargs))
    assert result["created"] is True
    run: dict[str, Any] = result["run"]
    return run


def take(store: Store, run_id: str, step: dict[str, Any]) -> dict[str, Any]:
    """Claims a queued step as a step message does (`bc_take_step`); fails the test when the claim is refused."""
    taken = store.take_step(run_id, step["id"], step["seq"], **_SUBMIT)
    assert taken is not None and taken["action"] == "claimed"
    claimed: dict[str, Any] = taken["step"]
    return claimed


def claim_first(store: Store, run: dict[str, Any], *, job_id: str | None = None) -> dict[str, Any]:
    step = run["steps"][0]
    claimed = take(store, run["id"], step)
    if job_id is None:  # the whole row, as the claim left it
        row = store.get_step(step["id"])
        assert row is not None and row["attempt"] == claimed["attempt"]
        return dict(row)
    submitted = store.record_submission(
        step["id"], claimed["attempt"], job_id, {"region": "eu"}, 30.0, provider="local", request_params={"prompt": "x"}
    )
    assert submitted is not None
    return submitted


_SUBMIT = {"submit_timeout_seconds": 60.0}


# runs -----------------------------------------------------------------------------------------------------------------


def test_create_run_and_idempotent_replay(store: Store) -> None:
    owner = new_owner()
    key = f"idem-{uuid.uuid4().hex}"
    first = store.create_run(run_request(owner, idempotency_key=key, webhook_url="https://example.com/hook"))
    assert first["created"] is True
    run = first["run"]
    assert set(run) == RUN_KEYS
    assert run["owner_id"] == owner
    assert run["status"] == "queued"
    assert run["current_step_key"] == "processing"
    assert run["callback_status"] == "waiting"
    assert run["input"] == {"prompt": "a lighthouse", "nested": {"list": [1, 2.5, "três", None, True]}}
    assert run["metadata"] == {"customer": "ü-42"}
    assert run["estimate"] == {"usd": 0.05, "items": [{"step_key": "image", "usd": 0.05}]}
    assert [(s["step_key"], s["status"], s["seq"], s["attempt"]) for s in run["steps"]] == [
        ("image", "queued", 0, 0),
        ("video", "queued", 0, 0),
    ]
    assert run["steps"][0]["next_check_at"] is not None and run["steps"][1]["next_check_at"] is None
    assert run["steps"][1]["depends_on"] == ["image"]

    # Same key, another request id (and even another hash): the earlier run comes back, untouched.
    replay = store.create_run(run_request(owner, idempotency_key=key, request_hash="hash-2"))
    assert replay == {"run": run, "created": False}

    # The key is scoped to its owner; without a key every request creates a run.
    assert store.create_run(run_request(new_owner(), idempotency_key=key))["created"] is True
    assert store.create_run(run_request(owner))["created"] is True
    assert store.create_run(run_request(owner))["created"] is True


def test_create_run_with_its_queue_sends_the_first_step_in_the_same_statement(store: Store) -> None:
    """The one-machine shape's create (`bc_create_run_queued`): a new run's first step message goes on the local queue
    with it, built from the run's ids; a replay sends nothing."""
    queue = PostgresQueue(store, f"contract_{uuid.uuid4().hex[:12]}")
    key = f"idem-{uuid.uuid4().hex}"
    request = run_request(new_owner(), idempotency_key=key)
    created = store.create_run(request, queue=queue.name, message=STEP_MESSAGE)
    assert created["created"] is True
    run = created["run"]
    first = run["steps"][0]
    assert queue.take(timeout=0) == step_message(run["id"], first["id"], first["seq"])
    assert queue.take(timeout=0) is None  # one message, for the first step only

    replay = store.create_run(request, queue=queue.name, message=STEP_MESSAGE)
    assert replay == {"run": run, "created": False}
    assert queue.take(timeout=0) is None


def test_get_run_with_and_without_owner(store: Store) -> None:
    owner = new_owner()
    run = make_run(store, owner, steps=1)
    assert store.get_run(run["id"]) == run
    assert store.get_run(run["id"], owner) == run
    assert store.get_run(run["id"], new_owner()) is None
    assert store.get_run(str(uuid.uuid4())) is None
    assert store.get_run(str(uuid.uuid4()), owner) is None


def _newest_first(runs: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(runs, key=lambda r: (datetime.fromisoformat(r["created_at"]), r["id"]), reverse=True)
    return [r["id"] for r in ordered]


def test_list_runs_pagination_and_filters(store: Store) -> None:
    owner = new_owner()
    runs = [make_run(store, owner, steps=1, slug="alpha" if i < 3 else "beta") for i in range(5)]
    store.cancel_run(runs[1]["id"])
    expected = _newest_first(runs)

    seen: list[str] = []
    cursor: tuple[str, str] | None = None
    pages = []
    while True:
        page = store.list_runs(owner, limit=2, cursor=cursor)
        pages.append(len(page))
        if not page:
            break
        seen += [r["id"] for r in page]
        cursor = (page[-1]["created_at"], page[-1]["id"])
    assert pages == [2, 2, 1, 0]
    assert seen == expected

    full = store.list_runs(owner, limit=10)
    assert [r["id"] for r in full] == expected
    # A listed run carries what the list shows, with the values of the run read alone.
    assert all(set(r) == LISTED_RUN_KEYS for r in full)
    assert all(set(s) == LISTED_STEP_KEYS for r in full for s in r["steps"])
    assert full == [as_listed(store.get_run(run_id)) for run_id in expected]

    assert [r["id"] for r in store.list_runs(owner, limit=10, status="canceled")] == [runs[1]["id"]]
    assert {r["id"] for r in store.list_runs(owner, limit=10, chain_slug="beta")} == {runs[3]["id"], runs[4]["id"]}
    assert store.list_runs(owner, limit=10, chain_slug="alpha", status="succeeded") == []
    assert store.list_runs(new_owner(), limit=10) == []


STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


def test_list_runs_every_filter_and_cursor_through_ties(store: Store, session_database_url: str) -> None:
    """Every filter (none, each status, each chain, each status + chain) paged with the cursor at several page sizes
    returns exactly the matching runs, newest first, with ties on created_at broken by id: a cursor at a tie neither
    repeats nor skips a run. Runs of every status are mixed in one owner's history (the list answers a status filter
    and no filter alike from per-status index scans merged in order)."""
    owner = new_owner()
    runs = [make_run(store, owner, steps=1, slug=("alpha", "beta")[i % 2]) for i in range(12)]
    tie = "2026-11-30T12:00:00.123456+00:00"
    with psycopg.connect(session_database_url, autocommit=True) as conn:
        for i, run in enumerate(runs):
            status = STATUSES[i % 5]
            # Seven runs share one created_at; the others are spread around it.
            created = tie if i < 7 else f"2026-11-30T12:00:{i:02d}.5+00:00"
            conn.execute(
                "update chain_runs set created_at = %(created)s::timestamptz, status = %(status)s,"
                " completed_at = case when %(status)s in ('queued', 'running') then null else now() end,"
                " output = case when %(status)s = 'succeeded' then '{}'::jsonb end"
                " where id = %(id)s",
                {"created": created, "status": status, "id": run["id"]},
            )
    rows = store.list_runs(owner, limit=100)
    assert len(rows) == len(runs)
    newest_first = sorted(rows, key=lambda r: (datetime.fromisoformat(r["created_at"]), r["id"]), reverse=True)
    assert [r["id"] for r in rows] == [r["id"] for r in newest_first]

    for status in (None, *STATUSES):
        for chain in (None, "alpha", "beta", "gamma"):
            expected = [
                r["id"]
                for r in newest_first
                if (status is None or r["status"] == status) and (chain is None or r["chain_slug"] == chain)
            ]
            assert [r["id"] for r in store.list_runs(owner, limit=100, status=status, chain_slug=chain)] == expected
            for size in (1, 2, 3):
                seen: list[str] = []
                cursor: tuple[str, str] | None = None
                while True:
                    page = store.list_runs(owner, limit=size, status=status, chain_slug=chain, cursor=cursor)
                    assert len(page) <= size
                    if not page:
                        break
                    seen += [r["id"] for r in page]
                    cursor = (page[-1]["created_at"], page[-1]["id"])
                assert seen == expected, (status, chain, size)
    # A cursor taken at a tie, from the middle of it: exactly the rest of the tie and what is older.
    tie_at = datetime.fromisoformat(tie)
    tied = [i for i, r in enumerate(newest_first) if datetime.fromisoformat(r["created_at"]) == tie_at]
    assert len(tied) == 7
    at = newest_first[tied[2]]
    rest = store.list_runs(owner, limit=100, cursor=(at["created_at"], at["id"]))
    assert [r["id"] for r in rest] == [r["id"] for r in newest_first[tied[2] + 1 :]]


def test_cancel_run(store: Store) -> None:
    run = make_run(store)
    running = claim_first(store, run)
    result = store.cancel_run(run["id"])
    assert result["canceled"] is True
    assert [s["id"] for s in result["steps"]] == [running["id"]]
    assert result["steps"][0]["status"] == "running"  # as it was when the cancel won
    after = result["run"]
    assert after["status"] == "canceled"
    assert after["error_code"] == "client_canceled"
    assert after["current_step_key"] == "canceled"
    assert after["completed_at"] is not None
    assert [s["status"] for s in after["steps"]] == ["canceled", "skipped"]
    assert after["steps"][0]["seq"] == running["seq"] + 1

    again = store.cancel_run(run["id"])
    assert again == {"run": store.get_run(run["id"]), "canceled": False, "steps": []}
    assert store.cancel_run(str(uuid.uuid4())) == {"run": None, "canceled": False, "steps": []}


def test_queued_run_cancels_with_every_step_skipped(store: Store) -> None:
    run = make_run(store)
    result = store.cancel_run(run["id"])
    assert result["canceled"] is True and result["steps"] == []
    assert [s["status"] for s in result["run"]["steps"]] == ["skipped", "skipped"]


@pytest.mark.parametrize("ending", ["cancel", "run deadline"])
def test_ending_a_run_waits_for_a_claim_in_flight_instead_of_deadlocking(
    store: Store, session_database_url: str, ending: str
) -> None:
    """A claim locks its step, then the run. Ending a run (a cancel; the sweeper at the run's deadline) took the run
    first and then waited for the step: a deadlock, and Postgres failed one side (40P01: a 503 to a caller, or a step
    message redelivered). Ending a run now locks its steps first, so it waits for the claim to commit."""
    run = make_run(store, timeout_seconds=0.0 if ending == "run deadline" else 3600.0)
    step = run["steps"][0]

    def end_run() -> dict[str, Any]:
        if ending == "cancel":
            return store.cancel_run(run["id"])
        return dict(store.sweep(_SWEEP))

    with psycopg.connect(session_database_url) as claim, ThreadPoolExecutor(1) as pool:
        claim.execute("set local deadlock_timeout = '100ms'")  # a deadlock would be found and broken at once
        claim.execute("select 1 from public.chain_steps where id = %s for update", (step["id"],))
        claim_pid = claim.info.backend_pid
        ended = pool.submit(end_run)
        with psycopg.connect(session_database_url, autocommit=True) as watch:
            blocked = "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))"
            wait_until(lambda: watch.execute(blocked, (claim_pid,)).fetchone() == (1,), timeout=10)
        # What bc_take_step does next: the run row, then its commit (as a running step).
        claim.execute("update public.chain_runs set status = 'running' where id = %s", (run["id"],))
        claim.execute(
            "update public.chain_steps set status = 'running', attempt = attempt + 1, seq = seq + 1, started_at = now()"
            " where id = %s",
            (step["id"],),
        )
        claim.commit()
        result = ended.result(timeout=30)
    after = store.get_run(run["id"])
    assert after is not None
    assert [s["status"] for s in after["steps"]] == ["canceled", "skipped"]  # the claimed step ended with its run
    if ending == "cancel":
        assert result["canceled"] is True
        assert [s["id"] for s in result["steps"]] == [step["id"]]  # the claim that won the wait is reported running
        assert after["status"] == "canceled"
    else:
        assert run["id"] in result["timed_out_runs"]
        assert (after["status"], after["error_code"]) == ("failed", "run_timed_out")


# steps ----------------------------------------------------------------------------------------------------------------


def test_step_transition_guards(store: Store) -> None:
    run = make_run(store)
    step_id = run["steps"][0]["id"]
    claimed = claim_first(store, run)
    job = f"job-{uuid.uuid4().hex}"

    # record_submission: guarded by attempt.
    assert store.record_submission(step_id, claimed["attempt"] + 1, job, {}, 30.0) is None
    submitted = store.record_submission(step_id, claimed["attempt"], job, {"region": "eu"}, 30.0, provider="local")
    assert submitted is not None
    assert (submitted["provider_job_id"], submitted["seq"]) == (job, claimed["seq"] + 1)
    assert submitted["provider_metadata"] == {"region": "eu"}

    # defer_step: guarded by seq.
    assert store.defer_step(step_id, claimed["seq"], 1.0) is None
    deferred = store.defer_step(step_id, submitted["seq"], 1.0, {"progress": 0.5})
    assert deferred is not None
    assert deferred["seq"] == submitted["seq"] + 1
    assert deferred["provider_metadata"] == {"region": "eu", "progress": 0.5}
    assert store.defer_step(step_id, deferred["seq"], 1.0) is not None  # provider_metadata None keeps the metadata

    # retry_step: guarded by attempt; gives the attempt back.
    assert store.retry_step(step_id, 7, 0.5, "provider_unavailable", "try later") is None
    retried = store.retry_step(step_id, claimed["attempt"], 0.5, "provider_unavailable", "try later", {"retries": 1})
    assert retried is not None
    assert (retried["status"], retried["provider_job_id"], retried["error_code"]) == (
        "queued",
        None,
        "provider_unavailable",
    )
    assert retried["provider_metadata"] == {"region": "eu", "progress": 0.5, "retries": 1}

    # The second attempt.
    again = take(store, run["id"], retried)
    assert again["attempt"] == 2
    again_row = store.get_step(step_id)
    assert again_row is not None and again_row["error_code"] is None and as_work(again_row) == again

    # complete_step: guarded by attempt; hands the outputs to the next step.
    assert store.complete_step(step_id, 1, ["https://out/a.png"]) is None
    done = store.complete_step(step_id, 2, ["https://out/a.png"], {"seed": 7})
    assert done is not None
    assert done["run_status"] == "running"
    next_step = done["next_step"]
    assert next_step["id"] == run["steps"][1]["id"]
    assert (next_step["status"], next_step["input_files"]) == ("queued", ["https://out/a.png"])
    handed = store.get_step(next_step["id"])
    assert handed is not None and handed["next_check_at"] is not None and as_work(handed) == next_step
    assert store.complete_step(step_id, 2, ["https://out/a.png"]) is None  # only once

    # fail_step: guarded by seq and by attempt.
    video = take(store, run["id"], next_step)
    assert store.fail_step(video["id"], "provider_error", "boom", seq=video["seq"] + 5) is None
    assert store.fail_step(video["id"], "provider_error", "boom", attempt=video["attempt"] + 1) is None
    failed = store.fail_step(video["id"], "provider_error", "boom", attempt=video["attempt"], seq=video["seq"])
    assert failed is not None
    assert failed["run_status"] == "failed"
    assert (failed["step"]["status"], failed["step"]["error_message"]) == ("failed", "boom")
    assert store.fail_step(video["id"], "provider_error", "boom") is None  # the run is over

    final = store.get_run(run["id"])
    assert final is not None
    assert (final["status"], final["error_code"], final["error_message"]) == ("failed", "provider_error", "boom")
    assert [s["status"] for s in final["steps"]] == ["succeeded", "failed"]


def test_a_step_with_two_producers_is_claimed_only_after_both(store: Store) -> None:
    """The claim's producer guard with more than one producer (a chain's steps each have one; the guard is general):
    neither a step message nor the first producer's completion claims the step while the other producer runs."""
    request = run_request(new_owner())
    image = request["steps"][0]
    request["steps"] = [
        image,
        {**image, "step_index": 1, "step_key": "image_b"},
        {**request["steps"][1], "step_index": 2, "depends_on": ["image", "image_b"]},
    ]
    run = store.create_run(request)["run"]
    first, second, joined = run["steps"]
    a, b = take(store, run["id"], first), take(store, run["id"], second)  # no producers: both claimable
    done_a = store.complete_step(a["id"], a["attempt"], ["file:///a"], claim_next_timeout_seconds=60.0)
    assert done_a is not None and done_a["run_status"] == "running" and done_a["next_claimed"] is False
    handed = done_a["next_step"]
    assert handed is not None and handed["id"] == joined["id"]
    assert (handed["status"], handed["input_files"]) == ("queued", ["file:///a"])
    assert store.take_step(run["id"], joined["id"], handed["seq"], **_SUBMIT) is None  # image_b still runs
    done_b = store.complete_step(b["id"], b["attempt"], ["file:///b"], claim_next_timeout_seconds=60.0)
    assert done_b is not None and done_b["next_claimed"] is True
    claimed = done_b["next_step"]
    assert claimed is not None and claimed["id"] == joined["id"]
    assert (claimed["status"], claimed["attempt"], claimed["input_files"]) == ("running", 1, ["file:///b"])


def test_take_step_claims_once_then_hands_out_the_running_job_for_checks(store: Store) -> None:
    run = make_run(store)
    first, second = run["steps"]
    # Guards of the claim: the message's run, its seq, the step's producers, an existing step.
    assert store.take_step(str(uuid.uuid4()), first["id"], 0, **_SUBMIT) is None
    assert store.take_step(run["id"], first["id"], 1, **_SUBMIT) is None
    assert store.take_step(run["id"], second["id"], 0, **_SUBMIT) is None
    assert store.take_step(run["id"], str(uuid.uuid4()), 0, **_SUBMIT) is None

    taken = store.take_step(run["id"], first["id"], 0, **_SUBMIT)
    assert taken is not None
    assert taken["action"] == "claimed"
    assert taken["run"] == {"id": run["id"], "mode": "local", "status": "running", "webhook_url": None}
    claimed = taken["step"]
    assert (claimed["status"], claimed["attempt"], claimed["seq"]) == ("running", 1, 1)
    # The executor's fields only (20261202071000_lean_transition_answers.sql), each as the row holds it.
    assert set(claimed) == WORK_STEP_KEYS
    claimed_row = store.get_step(first["id"])
    assert claimed_row is not None
    assert claimed["started_at"] is not None and claimed_row["next_check_at"] is not None
    # The same message again is stale, and so is the claimed seq while no job is recorded (the submitter holds it).
    assert store.take_step(run["id"], first["id"], 0, **_SUBMIT) is None
    assert store.take_step(run["id"], first["id"], claimed["seq"], **_SUBMIT) is None
    # The claim is what a read of the run shows: the run running at this step, the step as returned.
    current = store.get_run(run["id"])
    assert current is not None
    assert (current["status"], current["current_step_key"]) == ("running", "image")
    assert as_work(current["steps"][0]) == claimed and current["steps"][0] == claimed_row

    job = f"job-{uuid.uuid4().hex}"
    recorded = store.record_submission(
        first["id"], 1, job, {"region": "eu"}, 30.0, provider="local", request_params={"p": 1}, input_files=["u"]
    )
    assert recorded is not None
    assert (recorded["provider"], recorded["request_params"], recorded["input_files"]) == ("local", {"p": 1}, ["u"])
    assert store.find_step_by_job("local", job) == recorded

    # A poll message with the current seq gets the running step to check; any other seq is stale.
    check = store.take_step(run["id"], first["id"], recorded["seq"], **_SUBMIT)
    assert check is not None
    assert (check["action"], check["step"]) == ("check", as_work(recorded))
    assert store.take_step(run["id"], first["id"], claimed["seq"], **_SUBMIT) is None

    # Cancel wins: nothing is taken any more.
    store.cancel_run(run["id"])
    assert store.take_step(run["id"], first["id"], recorded["seq"] + 1, **_SUBMIT) is None
    assert store.take_step(run["id"], first["id"], recorded["seq"], **_SUBMIT) is None


def test_complete_step_records_a_synchronous_result_and_claims_the_next_step(store: Store) -> None:
    run = make_run(store)
    first, second = run["steps"]
    taken = store.take_step(run["id"], first["id"], 0, **_SUBMIT)
    assert taken is not None
    job = f"job-{uuid.uuid4().hex}"
    submission = {"provider": "local", "provider_job_id": job, "request_params": {"p": 1}, "input_files": None}
    outputs = ["https://out/a.png"]

    # Guarded by the attempt, like any completion.
    assert store.complete_step(first["id"], 2, outputs, submission=submission, claim_next_timeout_seconds=60) is None
    done = store.complete_step(
        first["id"], 1, outputs, {"seed": 7}, submission=submission, claim_next_timeout_seconds=60
    )
    assert done is not None
    assert (done["run_status"], done["next_claimed"]) == ("running", True)
    nxt = done["next_step"]
    assert nxt is not None and nxt["id"] == second["id"]
    assert (nxt["status"], nxt["attempt"], nxt["seq"], nxt["input_files"]) == ("running", 1, 1, outputs)
    assert set(nxt) == WORK_STEP_KEYS and nxt["started_at"] is not None
    assert store.complete_step(first["id"], 1, outputs, submission=submission) is None  # only once

    current = store.get_run(run["id"])
    assert current is not None
    assert current["current_step_key"] == second["step_key"]
    step = current["steps"][0]
    assert (step["status"], step["provider"], step["provider_job_id"]) == ("succeeded", "local", job)
    assert (step["request_params"], step["output_files"], step["provider_metadata"]) == ({"p": 1}, outputs, {"seed": 7})
    assert as_work(current["steps"][1]) == nxt and current["steps"][1]["next_check_at"] is not None
    # The next step is held by the completer: its queued-era message is stale, as is a check before a job exists.
    assert store.take_step(run["id"], second["id"], 0, **_SUBMIT) is None
    assert store.take_step(run["id"], second["id"], 1, **_SUBMIT) is None

    # The last step's completion finishes the run, with nothing to claim.
    last = store.complete_step(
        second["id"], 1, ["https://out/v.mp4"], submission=submission, claim_next_timeout_seconds=60
    )
    assert last == {"run_status": "succeeded", "next_step": None, "next_claimed": False}


def test_complete_step_without_claim_only_hands_over_and_loses_to_cancel(store: Store) -> None:
    run = make_run(store)
    first, second = run["steps"]
    assert store.take_step(run["id"], first["id"], 0, **_SUBMIT) is not None
    done = store.complete_step(first["id"], 1, ["https://out/a.png"])
    assert done is not None and done["next_claimed"] is False
    assert done["next_step"] is not None
    assert (done["next_step"]["status"], done["next_step"]["seq"]) == ("queued", 0)
    assert store.take_step(run["id"], second["id"], 0, **_SUBMIT) is not None  # its message claims it

    other = make_run(store)
    assert store.take_step(other["id"], other["steps"][0]["id"], 0, **_SUBMIT) is not None
    store.cancel_run(other["id"])
    submission = {"provider": "local", "provider_job_id": "j", "request_params": {}, "input_files": None}
    late = store.complete_step(
        other["steps"][0]["id"], 1, ["https://out/a.png"], submission=submission, claim_next_timeout_seconds=60
    )
    assert late is None
    after = store.get_run(other["id"])
    assert after is not None
    assert [s["status"] for s in after["steps"]] == ["canceled", "skipped"]
    assert after["steps"][0]["provider_job_id"] is None


def test_a_run_shows_its_current_step_and_last_advance(store: Store) -> None:
    """current_step_key and the run's updated_at are derived on read (20261202070000_current_step_on_read.sql) and
    show what the transitions used to write: the claimed step, the step handed over to, the run's end; a retry, the
    claim again after it and the claim of a handed-over step do not move them."""

    def read() -> tuple[str, str, str | None, datetime]:
        current = store.get_run(run["id"])
        assert current is not None
        return (
            current["status"],
            current["current_step_key"],
            current["completed_at"],
            datetime.fromisoformat(current["updated_at"]),
        )

    run = make_run(store)
    first, second = run["steps"]
    assert read()[:2] == ("queued", "processing")
    assert store.take_step(run["id"], first["id"], 0, **_SUBMIT) is not None
    status, key, _, claimed_at = read()
    assert (status, key) == ("running", first["step_key"])
    retried = store.retry_step(first["id"], 1, 0.0, "provider_unavailable", "later")
    assert retried is not None
    assert read() == ("running", first["step_key"], None, claimed_at)
    again = store.take_step(run["id"], first["id"], retried["seq"], **_SUBMIT)
    assert again is not None and again["step"]["attempt"] == 2
    assert read() == ("running", first["step_key"], None, claimed_at)

    assert store.complete_step(first["id"], 2, ["https://out/a.png"]) is not None  # handed over, not claimed
    done = store.get_run(run["id"])
    assert done is not None and done["steps"][0]["completed_at"] is not None
    handed_at = datetime.fromisoformat(done["steps"][0]["completed_at"])
    assert handed_at > claimed_at
    assert read() == ("running", second["step_key"], None, handed_at)
    assert store.take_step(run["id"], second["id"], 0, **_SUBMIT) is not None  # its message claims it
    assert read() == ("running", second["step_key"], None, handed_at)

    assert store.fail_step(second["id"], "provider_error", "boom", attempt=1) is not None
    status, key, completed_at, updated_at = read()
    assert (status, key) == ("failed", "failed")
    assert completed_at is not None and updated_at == datetime.fromisoformat(completed_at) > handed_at


def test_complete_last_step_finishes_the_run(store: Store) -> None:
    run = make_run(store, steps=1)
    submitted = claim_first(store, run, job_id=f"job-{uuid.uuid4().hex}")
    done = store.complete_step(submitted["id"], submitted["attempt"], ["https://out/final.png"])
    assert done == {"run_status": "succeeded", "next_step": None, "next_claimed": False}
    final = store.get_run(run["id"])
    assert final is not None
    assert final["status"] == "succeeded"
    assert final["current_step_key"] == "completed"
    assert final["output"] == {"final_step_key": "image", "output_files": ["https://out/final.png"]}


def test_find_note_and_get_step(store: Store) -> None:
    run = make_run(store)
    job = f"job-{uuid.uuid4().hex}"
    submitted = claim_first(store, run, job_id=job)
    found = store.find_step_by_job("local", job)
    assert found == submitted
    assert store.find_step_by_job("other", job) is None
    assert store.find_step_by_job("local", f"job-{uuid.uuid4().hex}") is None

    store.cancel_run(run["id"])
    noted = store.note_step(submitted["id"], {"cancel_error": "provider could not cancel"})
    assert noted is not None  # whatever the status
    assert noted["status"] == "canceled"
    assert noted["provider_metadata"] == {"region": "eu", "cancel_error": "provider could not cancel"}
    assert store.note_step(str(uuid.uuid4()), {"x": 1}) is None

    assert store.get_step(submitted["id"]) == noted
    current = store.get_run(run["id"])
    assert current is not None
    assert store.get_step(run["steps"][1]["id"]) == current["steps"][1]
    assert store.get_step(str(uuid.uuid4())) is None


# callbacks ------------------------------------------------------------------------------------------------------------


def claim(store: Store, run_id: str, lease: float = 60.0, **options: Any) -> Any:
    return store.claim_callback(run_id, lease_seconds=lease, max_attempts=options.pop("max_attempts", 10), **options)


def test_callback_claims_and_attempts(store: Store) -> None:
    run = make_run(store, webhook_url="https://example.com/hook")
    assert claim(store, run["id"]) is None  # nothing to deliver while the run is active
    store.cancel_run(run["id"])

    claimed = claim(store, run["id"], holder="host-a/41")
    assert claimed is not None
    assert claimed["attempt"] == 1
    assert (claimed["run"]["id"], claimed["run"]["callback_status"]) == (run["id"], "delivering")
    assert claimed["run"]["callback_claimed_by"] == "host-a/41"
    busy = claim(store, run["id"])  # an attempt in flight within its lease is never claimed twice
    assert busy["busy"] == "attempt" and 0 < busy["retry_in"] <= 60

    attempt: dict[str, Any] = {
        "run_id": run["id"],
        "event_id": run["callback_event_id"],
        "outcome": "failed",
        "status_code": 500,
        "error": "Receiver answered HTTP 500.",
        "response_excerpt": "oops",
        "duration_ms": 12,
    }
    assert store.record_callback_attempt({**attempt, "attempt": 1, "retry_in_seconds": 0}) == {
        "callback_status": "pending"
    }
    second = claim(store, run["id"])
    assert second is not None and second["attempt"] == 2
    # A late failure for the first attempt is kept as history but decides nothing.
    assert store.record_callback_attempt({**attempt, "attempt": 1, "retry_in_seconds": 0}) == {"callback_status": None}
    delivered = {**attempt, "attempt": 2, "outcome": "delivered", "status_code": 204, "error": None}
    assert store.record_callback_attempt({**delivered, "retry_in_seconds": None}) == {"callback_status": "delivered"}
    assert claim(store, run["id"], lease=0.0) is None

    deliveries = store.list_callback_deliveries(run["id"])
    assert [(d["attempt"], d["outcome"], d["status_code"]) for d in deliveries] == [
        (1, "failed", 500),
        (1, "failed", 500),
        (2, "delivered", 204),
    ]
    assert deliveries[0]["event_id"] == run["callback_event_id"]
    assert deliveries[2]["error"] is None and deliveries[0]["response_excerpt"] == "oops"
    assert store.list_callback_deliveries(str(uuid.uuid4())) == []


def test_a_2xx_from_a_superseded_attempt_settles_the_callback(store: Store) -> None:
    run = make_run(store, webhook_url="https://example.com/hook")
    store.cancel_run(run["id"])
    assert claim(store, run["id"])["attempt"] == 1
    assert claim(store, run["id"], lease=0.0)["attempt"] == 2  # attempt 1 looked abandoned
    late = {"run_id": run["id"], "event_id": "e", "attempt": 1, "outcome": "delivered", "status_code": 200}
    assert store.record_callback_attempt({**late, "retry_in_seconds": None}) == {"callback_status": "delivered"}
    failed = {**late, "attempt": 2, "outcome": "failed", "status_code": 503}
    assert store.record_callback_attempt({**failed, "retry_in_seconds": 5}) == {"callback_status": None}
    stored = store.get_run(run["id"])
    assert stored is not None and stored["callback_status"] == "delivered"
    assert claim(store, run["id"], lease=0.0) is None  # never sent again


def test_callback_gives_up_without_retry(store: Store) -> None:
    run = make_run(store, webhook_url="https://example.com/hook")
    store.cancel_run(run["id"])
    assert claim(store, run["id"]) is not None
    record = {"run_id": run["id"], "event_id": "e", "attempt": 1, "outcome": "failed", "retry_in_seconds": None}
    assert store.record_callback_attempt(record) == {"callback_status": "failed"}
    stored = store.get_run(run["id"])
    assert stored is not None and stored["callback_status"] == "failed"


def test_an_abandoned_attempt_is_recorded_and_counts_toward_the_schedule(store: Store) -> None:
    run = make_run(store, webhook_url="https://example.com/hook")
    store.cancel_run(run["id"])
    assert claim(store, run["id"], max_attempts=2) is not None
    reclaimed = claim(store, run["id"], lease=0.0, max_attempts=2)  # the sender died: its lease is over at once
    assert reclaimed is not None and reclaimed["attempt"] == 2
    assert claim(store, run["id"], lease=0.0, max_attempts=2) is None  # the second abandonment spends the schedule
    stored = store.get_run(run["id"])
    assert stored is not None and (stored["callback_status"], stored["callback_attempts"]) == ("failed", 2)
    rows = store.list_callback_deliveries(run["id"])
    assert [(d["attempt"], d["outcome"], d["status_code"]) for d in rows] == [
        (1, "abandoned", None),
        (2, "abandoned", None),
    ]
    assert "stopped before it recorded" in rows[0]["error"]


def test_one_receiver_origin_holds_at_most_its_limit(store: Store, session_database_url: str) -> None:
    slow = f"Slow-{uuid.uuid4().hex[:8]}.example:8443"  # other tests share the database
    runs = [make_run(store, webhook_url=f"https://{slow}/hook/{n}") for n in range(3)]
    other = make_run(store, webhook_url="https://fast.example/hook")
    for run in [*runs, other]:
        store.cancel_run(run["id"])
    assert claim(store, runs[0]["id"], origin_limit=2)["attempt"] == 1
    assert claim(store, runs[1]["id"], origin_limit=2)["attempt"] == 1
    assert claim(store, runs[2]["id"], origin_limit=2, defer_seconds=600) == {"busy": "origin"}
    # Due again only after the wait, so the sweeper does not re-drive it meanwhile.
    quiet = {"grace_seconds": 86_400, "limit": 100_000, "callback_stale_seconds": 86_400}
    quiet |= {"image_step_timeout_seconds": 86_400, "video_step_timeout_seconds": 86_400}
    assert runs[2]["id"] not in store.sweep(quiet)["due_callbacks"]
    assert claim(store, runs[2]["id"], origin_limit=2) is None  # not due yet
    assert store.end_callback_leases("nowhere", [], max_attempts=10) == []
    assert claim(store, other["id"], origin_limit=2)["attempt"] == 1  # another receiver is not held up
    store.record_callback_attempt(
        {"run_id": runs[0]["id"], "event_id": "e", "attempt": 1, "outcome": "delivered", "retry_in_seconds": None}
    )
    with psycopg.connect(session_database_url, autocommit=True) as db:  # the wait is over
        db.execute("update chain_runs set callback_next_at = now() where id = %s", (runs[2]["id"],))
    assert claim(store, runs[2]["id"], origin_limit=2)["attempt"] == 1  # a turn came free


def test_leases_of_dead_holders_end_at_once(store: Store) -> None:
    host = f"host-{uuid.uuid4().hex[:8]}"
    dead, reused, alive = (make_run(store, webhook_url="https://example.com/hook") for _ in range(3))
    # Holders are `<host>/<pid>@<start time>`: pid 9 alive again, but started later, is another process.
    for run, process in ((dead, "424242@100"), (reused, "9@100"), (alive, "7@100")):
        store.cancel_run(run["id"])
        assert claim(store, run["id"], holder=f"{host}/{process}") is not None
    live = ["1@5", "7@100", "9@250"]
    assert sorted(store.end_callback_leases(host, live, max_attempts=10)) == sorted([dead["id"], reused["id"]])
    assert store.end_callback_leases(host, live, max_attempts=10) == []
    assert [d["outcome"] for d in store.list_callback_deliveries(dead["id"])] == ["abandoned"]
    assert store.list_callback_deliveries(alive["id"]) == []
    assert claim(store, dead["id"])["attempt"] == 2  # due again now, not when the lease would have ended
    assert claim(store, alive["id"])["busy"] == "attempt"
    assert store.end_callback_leases("another-host", [], max_attempts=10) == []


# sweeper --------------------------------------------------------------------------------------------------------------


def test_sweep_shape_and_effects(store: Store) -> None:
    expired = make_run(store, timeout_seconds=0.0)
    due = make_run(store, steps=1)
    params = {
        "grace_seconds": 0,
        "limit": 100_000,
        "image_step_timeout_seconds": 86_400,
        "video_step_timeout_seconds": 86_400,
        "callback_stale_seconds": 86_400,
    }
    result = store.sweep(params)
    assert set(result) == SWEEP_KEYS
    assert all(isinstance(value, list) for value in result.values())
    assert expired["id"] in result["timed_out_runs"]
    step = due["steps"][0]
    assert {"run_id": due["id"], "step_id": step["id"], "seq": step["seq"]} in result["due_steps"]

    swept = store.get_run(expired["id"])
    assert swept is not None
    assert (swept["status"], swept["error_code"]) == ("failed", "run_timed_out")
    assert expired["id"] not in store.sweep(params)["timed_out_runs"]


_SWEEP = {
    "grace_seconds": 0,
    "limit": 100_000,
    "image_step_timeout_seconds": 3600,
    "video_step_timeout_seconds": 86_400,
    "callback_stale_seconds": 86_400,
}


def _set_step(url: str, step_id: str, assignments: str) -> None:
    """Moves a step's clock back, as time would; through the table, so the timers' trigger sees it as it sees any
    update."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"update chain_steps set {assignments} where id = %s", (step_id,))  # type: ignore[arg-type]


def _running_video(store: Store) -> dict[str, Any]:
    run = make_run(store)
    claimed = claim_first(store, run, job_id=f"job-{uuid.uuid4().hex}")
    done = store.complete_step(claimed["id"], claimed["attempt"], ["https://out/a.png"])
    assert done is not None and done["next_step"] is not None
    video = take(store, run["id"], done["next_step"])
    submitted = store.record_submission(
        video["id"], video["attempt"], f"job-{uuid.uuid4().hex}", {}, 30.0, provider="local"
    )
    assert submitted is not None
    return submitted


def test_sweep_finds_each_kind_of_overdue_step(store: Store, session_database_url: str) -> None:
    url = session_database_url
    # Running past the image budget (an hour here).
    image = claim_first(store, make_run(store), job_id=f"job-{uuid.uuid4().hex}")
    _set_step(url, image["id"], "started_at = now() - interval '2 hours'")
    # A video step two hours in is within its own budget (a day); one two days in is not.
    video_within = _running_video(store)
    _set_step(url, video_within["id"], "started_at = now() - interval '2 hours'")
    video_over = _running_video(store)
    _set_step(url, video_over["id"], "started_at = now() - interval '2 days'")
    # A claim whose submitter died before recording a job id.
    lost = claim_first(store, make_run(store))
    _set_step(url, lost["id"], "next_check_at = now() - interval '1 minute'")
    # A submitted job whose poll message is overdue, and one whose poll is not due yet.
    overdue = claim_first(store, make_run(store), job_id=f"job-{uuid.uuid4().hex}")
    _set_step(url, overdue["id"], "next_check_at = now() - interval '1 minute'")
    waiting = claim_first(store, make_run(store), job_id=f"job-{uuid.uuid4().hex}")
    _set_step(url, waiting["id"], "next_check_at = now() + interval '1 hour'")

    result = store.sweep(_SWEEP)
    timed_out = {s["id"]: s for s in result["timed_out_steps"]}
    assert image["id"] in timed_out and video_over["id"] in timed_out
    assert timed_out[image["id"]]["provider_job_id"] == image["provider_job_id"]
    assert video_within["id"] not in timed_out
    for step in (image, video_over):
        after = store.get_step(step["id"])
        assert after is not None
        assert (after["status"], after["error_code"]) == ("failed", "step_running_timed_out")
    assert {"run_id": lost["run_id"], "step_id": lost["id"], "seq": lost["seq"] + 1} in result["requeued_steps"]
    given_back = store.get_step(lost["id"])
    assert given_back is not None and (given_back["status"], given_back["attempt"]) == ("queued", 1)
    due = {d["step_id"]: d for d in result["due_steps"]}
    assert due.get(overdue["id"]) == {"run_id": overdue["run_id"], "step_id": overdue["id"], "seq": overdue["seq"]}
    mentioned = {*timed_out, *(r["step_id"] for r in result["requeued_steps"]), *due}
    assert not {video_within["id"], waiting["id"]} & mentioned
    assert image["id"] not in due and video_over["id"] not in due  # failed first, so not re-driven

    # Once handled, nothing of it comes back but the step still overdue (its message is the re-drive).
    again = store.sweep(_SWEEP)
    assert not {image["id"], video_over["id"]} & {s["id"] for s in again["timed_out_steps"]}
    assert lost["id"] not in {r["step_id"] for r in again["requeued_steps"]}
    assert overdue["id"] in {d["step_id"] for d in again["due_steps"]}


def _timers(url: str, run_id: str) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """The side table's rows for a run, and what they should be: a copy of each step a sweeper rule can pick (running,
    or queued with a next check; not one waiting for its producer)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select step_id::text, status, step_kind, next_check_at, started_at, has_job "
            "from babychain_private.chain_step_timers where run_id = %s",
            (run_id,),
        ).fetchall()
        wanted = conn.execute(
            "select id::text, status, step_kind, next_check_at, started_at, provider_job_id is not null "
            "from chain_steps where run_id = %s "
            "and (status = 'running' or (status = 'queued' and next_check_at is not null))",
            (run_id,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}, {r[0]: r[1:] for r in wanted}


def test_step_timers_hold_exactly_the_steps_the_sweeper_may_pick(store: Store, session_database_url: str) -> None:
    url = session_database_url

    def check(run_id: str, statuses: dict[str, tuple[str, bool]]) -> None:
        held, wanted = _timers(url, run_id)
        assert held == wanted
        assert {k: (v[0], v[4]) for k, v in held.items()} == statuses

    run = make_run(store)
    first, second = run["steps"]
    check(run["id"], {first["id"]: ("queued", False)})  # the second waits for the first: no next check, no timer
    claimed = take(store, run["id"], first)
    check(run["id"], {first["id"]: ("running", False)})
    submitted = store.record_submission(first["id"], claimed["attempt"], "job-t", {}, 30.0, provider="local")
    assert submitted is not None
    check(run["id"], {first["id"]: ("running", True)})
    deferred = store.defer_step(first["id"], submitted["seq"], 5.0)
    assert deferred is not None
    held, _ = _timers(url, run["id"])
    assert held[first["id"]][2] > datetime.now(UTC) + timedelta(seconds=3)  # the poll moved five seconds on
    check(run["id"], {first["id"]: ("running", True)})
    retried = store.retry_step(first["id"], claimed["attempt"], 0.5, "provider_unavailable", "later")
    assert retried is not None
    check(run["id"], {first["id"]: ("queued", False)})
    again = take(store, run["id"], retried)
    done = store.complete_step(first["id"], again["attempt"], ["https://out/a.png"])
    assert done is not None
    check(run["id"], {second["id"]: ("queued", False)})  # handed its input: due now, so it has a timer
    video = take(store, run["id"], second)
    check(run["id"], {second["id"]: ("running", False)})
    assert store.fail_step(video["id"], "provider_error", "boom", attempt=video["attempt"]) is not None
    check(run["id"], {})

    # A completion that claims the dependent step gives it its timer (it had none while it waited), and a
    # completion that ends the run leaves none.
    chained = make_run(store)
    head = take(store, chained["id"], chained["steps"][0])
    submission = {"provider": "local", "provider_job_id": f"job-{uuid.uuid4().hex}"}
    handed = store.complete_step(
        head["id"], head["attempt"], ["https://out/a.png"], submission=submission, claim_next_timeout_seconds=60
    )
    assert handed is not None and handed["next_claimed"] is True
    check(chained["id"], {chained["steps"][1]["id"]: ("running", False)})
    assert store.complete_step(chained["steps"][1]["id"], 1, ["https://out/v.mp4"], submission=submission)
    check(chained["id"], {})

    canceled = make_run(store)
    take(store, canceled["id"], canceled["steps"][0])
    store.cancel_run(canceled["id"])
    check(canceled["id"], {})

    # A run that goes while active (a purge would not take one; a deletion by hand might) takes its timers along.
    doomed = make_run(store)
    check(doomed["id"], {doomed["steps"][0]["id"]: ("queued", False)})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from chain_runs where id = %s", (doomed["id"],))
    check(doomed["id"], {})

    # Purged: nothing of the run is left, timers included.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update chain_runs set completed_at = now() - interval '31 days' where id = %s", (run["id"],))
    assert run["id"] in store.purge_expired_runs(30, 100_000)["run_ids"]
    check(run["id"], {})


def test_step_timers_migration_backfills_the_active_steps(
    postgres_server: str, template_database: str, tmp_path: Path
) -> None:
    """A database with work in flight before the timers existed: the migration copies exactly its active steps."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"create database {name}")  # type: ignore[arg-type]
    url = make_conninfo(postgres_server, dbname=name)
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name >= TIMERS_MIGRATION:
            break
        (earlier / path.name).write_text(path.read_text())
    apply_migrations(url, earlier)

    store = PostgresStore(url, max_size=1)
    try:
        queued = make_run(store)
        running = make_run(store)
        claim_first(store, running, job_id="job-before")
        claiming = make_run(store)
        claim_first(store, claiming)
        ended = make_run(store)
        store.cancel_run(ended["id"])
        assert TIMERS_MIGRATION in apply_migrations(url)
        # Every later migration too: since 20261201110000_lean_transitions.sql a step waiting for its producer has
        # no timer, so each active run has one (its first step).
        for run, active in ((queued, 1), (running, 1), (claiming, 1), (ended, 0)):
            held, wanted = _timers(url, run["id"])
            assert held == wanted and len(held) == active
        assert _timers(url, running["id"])[0][running["steps"][0]["id"]][4] is True  # has its job
        assert _timers(url, claiming["id"])[0][claiming["steps"][0]["id"]][4] is False
    finally:
        store.close()
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"drop database {name} with (force)")  # type: ignore[arg-type]


def test_purge_expired_runs_shape_and_effects(store: Store, session_database_url: str) -> None:
    """One retention batch through each adapter: an old finished run goes with its steps, a recent one stays, and the
    answer has the same shape either way (tests/integration/test_retention.py covers the rules in depth)."""
    old = make_run(store, idempotency_key=f"old-{uuid.uuid4().hex}")
    recent = make_run(store)
    for run in (old, recent):
        store.cancel_run(run["id"])
    with psycopg.connect(session_database_url, autocommit=True) as conn:
        conn.execute("update chain_runs set completed_at = now() - interval '31 days' where id = %s", (old["id"],))
    result = store.purge_expired_runs(30, 100_000)
    assert set(result) == {"run_ids", "receipts", "busy"}
    assert old["id"] in result["run_ids"] and recent["id"] not in result["run_ids"]
    assert isinstance(result["receipts"], int) and result["busy"] is False
    assert store.get_run(old["id"]) is None and store.get_step(old["steps"][0]["id"]) is None
    assert store.get_run(recent["id"]) is not None
    assert store.purge_expired_runs(0, 100_000) == {"run_ids": [], "receipts": 0, "busy": False}


def test_a_purged_run_takes_its_job_ids_along(store: Store, session_database_url: str) -> None:
    """The job ids a run's steps were given (one per asynchronous submission, a retried step's earlier one too, whose
    step no longer names it) go with the run's steps when it is purged; another run's stay and still find their step.
    (They go once per statement, by a trigger, since a foreign key's cascade probed them once per deleted step.)"""
    old, kept = make_run(store), make_run(store)
    for run in (old, kept):
        first = claim_first(store, run, job_id=f"job-1-{run['id']}")
        assert store.retry_step(first["id"], first["attempt"], 0.0, "provider_unavailable", "again", {})
        again = claim_first(store, store.get_run(run["id"]), job_id=f"job-2-{run['id']}")  # type: ignore[arg-type]
        assert again["attempt"] == 2
        store.cancel_run(run["id"])

    def job_rows(run_id: str) -> int:
        with psycopg.connect(session_database_url) as conn:
            row = conn.execute(
                "select count(*) from chain_step_jobs where provider_job_id like %s", (f"job-_-{run_id}",)
            ).fetchone()
        assert row is not None
        return int(row[0])

    assert job_rows(old["id"]) == job_rows(kept["id"]) == 2
    with psycopg.connect(session_database_url, autocommit=True) as conn:
        conn.execute("update chain_runs set completed_at = now() - interval '31 days' where id = %s", (old["id"],))
    assert old["id"] in store.purge_expired_runs(30, 100_000)["run_ids"]
    assert job_rows(old["id"]) == 0
    assert store.find_step_by_job("local", f"job-1-{old['id']}") is None
    assert job_rows(kept["id"]) == 2
    found = store.find_step_by_job("local", f"job-2-{kept['id']}")
    assert found is not None and found["id"] == kept["steps"][0]["id"]


# webhooks, keys, health -----------------------------------------------------------------------------------------------


def test_record_webhook_receipt_once(store: Store) -> None:
    receipt = uuid.uuid4().hex
    assert store.record_webhook_receipt("bfl", receipt) is True
    assert store.record_webhook_receipt("bfl", receipt) is False
    assert store.record_webhook_receipt("byteplus", receipt) is True


def test_api_keys(store: Store) -> None:
    key_hash = secrets.token_hex(32)
    created = store.create_api_key("bc_live_ab", key_hash, "contract")
    assert set(created) == {"id", "key_prefix", "name", "scopes", "rate_limit_per_minute"}
    assert (created["key_prefix"], created["name"]) == ("bc_live_ab", "contract")
    assert created["scopes"] == ["chains:run", "chains:read", "runs:cancel"]
    assert created["rate_limit_per_minute"] is None  # the deployment's default
    assert store.authenticate_key(key_hash) == created
    assert store.authenticate_key(secrets.token_hex(32)) is None

    reader_hash = secrets.token_hex(32)
    reader = store.create_api_key("bc_live_cd", reader_hash, "reader", ["chains:read"])
    assert reader["scopes"] == ["chains:read"]
    assert store.authenticate_key(reader_hash) == reader


def test_authenticating_a_key_writes_at_most_once_a_minute(store: Store, session_database_url: str) -> None:
    key_hash = secrets.token_hex(32)
    created = store.create_api_key("bc_live_gh", key_hash, "busy")

    def version() -> tuple[str, Any]:
        with psycopg.connect(session_database_url) as db:
            row = db.execute("select xmin::text, last_used_at from api_keys where id = %s", (created["id"],)).fetchone()
        assert row is not None
        return row[0], row[1]

    assert store.authenticate_key(key_hash) == created
    first = version()
    assert first[1] is not None  # the first use is recorded
    for _ in range(3):
        assert store.authenticate_key(key_hash) == created
    assert version() == first  # no new row version: reads only
    with psycopg.connect(session_database_url, autocommit=True) as db:
        db.execute("update api_keys set last_used_at = now() - interval '2 minutes' where id = %s", (created["id"],))
    store.authenticate_key(key_hash)
    assert version()[1] > first[1]  # a minute on, the use is recorded again


def test_api_key_rate_limits(store: Store) -> None:
    limited_hash = secrets.token_hex(32)
    limited = store.create_api_key("bc_live_ef", limited_hash, "limited", None, None, 7)
    assert limited["rate_limit_per_minute"] == 7
    assert store.authenticate_key(limited_hash) == limited  # the edge reads the limit with the key
    assert store.set_api_key_rate_limit(limited["id"], None) == {**limited, "rate_limit_per_minute": None}
    assert store.set_api_key_rate_limit(limited["id"], 30) == {**limited, "rate_limit_per_minute": 30}
    listed = [k for k in store.list_api_keys() if k["id"] == limited["id"]]
    assert [k["rate_limit_per_minute"] for k in listed] == [30]
    assert store.set_api_key_rate_limit(str(uuid.uuid4()), 3) is None
    with pytest.raises(Exception) as caught:
        store.set_api_key_rate_limit(limited["id"], 0)
    assert getattr(caught.value, "sqlstate", None) == "23514"  # api_keys_rate_limit_positive


def test_health(store: Store) -> None:
    assert store.health() == {"database": "ok"}


def test_only_store_functions(store: Store) -> None:
    # (PostgresStore's `^...$` pattern also lets "bc_get_run\n" through, harmlessly; SupabaseStore uses fullmatch.)
    for name in ("pg_sleep", "bc_Get_run", "bc_get_run;drop table chain_runs", "bc_get_run()", "bc_1", ""):
        with pytest.raises(ValueError, match="not a store function"):
            store.call(name, {})


def test_database_errors_carry_the_sqlstate(store: Store) -> None:
    with pytest.raises(Exception) as caught:
        store.get_run("not-a-uuid")
    error = caught.value
    assert isinstance(error, psycopg.DataError | StoreError)
    assert getattr(error, "sqlstate", None) == "22P02"
    assert not isinstance(error, StoreUnavailable)


# both at once ---------------------------------------------------------------------------------------------------------


def test_adapters_return_identical_json(stores: dict[str, Store]) -> None:
    postgres, supabase = stores["postgres"], stores["supabase"]
    owner = new_owner()
    run = make_run(postgres, owner, webhook_url="https://example.com/hook")
    claim_first(supabase, run, job_id=f"job-{uuid.uuid4().hex}")

    def both(call: Any) -> tuple[str, str]:
        return json.dumps(call(postgres)), json.dumps(call(supabase))

    for call in (
        lambda s: s.get_run(run["id"]),
        lambda s: s.get_run(run["id"], owner),
        lambda s: s.list_runs(owner, limit=5),
        lambda s: s.get_step(run["steps"][0]["id"]),
        lambda s: s.get_run(str(uuid.uuid4())),
        lambda s: s.list_callback_deliveries(run["id"]),
    ):
        left, right = both(call)
        assert left == right
    assert json.dumps(postgres.get_run(run["id"])).encode() == json.dumps(supabase.get_run(run["id"])).encode()


# Supabase adapter errors ----------------------------------------------------------------------------------------------


def _assert_secret_free(error: BaseException, secret: str) -> None:
    texts = [str(error), repr(error), *(str(v) for v in vars(error).values())]
    assert all(secret not in text for text in texts)
    assert error.__cause__ is None and error.__suppress_context__


def test_supabase_postgrest_down_is_unavailable(stores: dict[str, Store], gateway: PostgrestStandIn) -> None:
    gateway.fail_next(
        503, {"code": "PGRST001", "message": "Database client error. Retrying the connection.", "details": None}
    )
    with pytest.raises(StoreUnavailable) as caught:
        stores["supabase"].health()
    assert (caught.value.code, caught.value.status, caught.value.function) == ("PGRST001", 503, "bc_health")
    assert stores["supabase"].health() == {"database": "ok"}  # POSTs are not retried by postgrest-py


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (502, "<html><body>502 Bad Gateway</body></html>", "text/html"),
        (504, {"message": "An invalid response was received from the upstream server"}, "application/json"),
        (520, "", "text/plain"),
    ],
)
def test_supabase_gateway_errors_are_unavailable(
    stores: dict[str, Store], gateway: PostgrestStandIn, status: int, body: Any, content_type: str
) -> None:
    gateway.fail_next(status, body, content_type=content_type)
    with pytest.raises(StoreUnavailable) as caught:
        stores["supabase"].get_run(str(uuid.uuid4()))
    assert caught.value.status == status


def test_supabase_transient_sqlstate_is_unavailable(stores: dict[str, Store], gateway: PostgrestStandIn) -> None:
    gateway.fail_next(500, {"code": "57014", "message": "canceling statement due to statement timeout"})
    with pytest.raises(StoreUnavailable) as caught:
        stores["supabase"].health()
    assert caught.value.sqlstate == "57014"
    gateway.fail_next(500, {"code": "XX000", "message": "internal error"})
    with pytest.raises(StoreError) as other:
        stores["supabase"].health()
    assert not isinstance(other.value, StoreUnavailable)


def test_supabase_unreachable_and_timeout(gateway: PostgrestStandIn) -> None:
    closed = SupabaseStore(f"http://127.0.0.1:{free_port()}", gateway.service_role_key, timeout=2.0)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable") as caught:
            closed.health()
        _assert_secret_free(caught.value, gateway.service_role_key)
    finally:
        closed.close()

    slow = SupabaseStore(gateway.url, gateway.service_role_key, timeout=0.2)
    try:
        gateway.stall_next(1.0)
        with pytest.raises(StoreUnavailable, match="Timeout"):
            slow.health()
    finally:
        slow.close()


def test_supabase_wrong_key_is_an_auth_error(gateway: PostgrestStandIn) -> None:
    wrong_key = "sb_secret_" + secrets.token_urlsafe(24)
    store = SupabaseStore(gateway.url, wrong_key)
    try:
        with pytest.raises(StoreAuthError) as caught:
            store.health()
        assert (caught.value.code, caught.value.status) == ("PGRST301", 401)
        _assert_secret_free(caught.value, wrong_key)
        _assert_secret_free(caught.value, gateway.service_role_key)
        assert wrong_key not in repr(store)
    finally:
        store.close()


def test_supabase_errors_never_echo_the_key(stores: dict[str, Store], gateway: PostgrestStandIn) -> None:
    key = gateway.service_role_key
    gateway.fail_next(400, {"code": "PGRST100", "message": f"bad apikey {key}", "details": key, "hint": f"[{key}]"})
    with pytest.raises(StoreError) as caught:
        stores["supabase"].health()
    _assert_secret_free(caught.value, key)
    assert "[redacted]" in caught.value.message


def test_supabase_missing_function_and_non_json_answers(stores: dict[str, Store], gateway: PostgrestStandIn) -> None:
    with pytest.raises(StoreError) as missing:
        stores["supabase"].call("bc_no_such_function", {})
    assert (missing.value.code, missing.value.status) == ("PGRST202", 404)

    gateway.fail_next(200, "<html>captive portal</html>", content_type="text/html")
    with pytest.raises(StoreError, match="not JSON"):
        stores["supabase"].health()
    gateway.fail_next(204, b"", content_type="application/json")
    assert stores["supabase"].health() is None  # no body: the same as a NULL from psycopg


def test_supabase_sends_the_rpc_protocol(stores: dict[str, Store], gateway: PostgrestStandIn) -> None:
    run_id = str(uuid.uuid4())
    stores["supabase"].get_run(run_id, "owner-x")
    request = gateway.requests[-1]
    assert (request["method"], request["path"]) == ("POST", "/rest/v1/rpc/bc_get_run")
    assert request["json"] == {"p": {"run_id": run_id, "owner_id": "owner-x"}}
    assert request["headers"]["apikey"] == gateway.service_role_key
    assert request["headers"]["authorization"] == f"Bearer {gateway.service_role_key}"


# RLS ------------------------------------------------------------------------------------------------------------------


TABLES = ("api_keys", "chain_runs", "chain_steps", "callback_deliveries", "provider_webhook_receipts")


@pytest.fixture
def owner_conn(session_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(session_database_url) as conn:  # not autocommit: each test rolls back what it did
        member = conn.execute(
            "select rolsuper or pg_has_role(current_user, 'anon', 'member') from pg_roles where rolname = current_user"
        ).fetchone()
        if not (member and member[0]):
            pytest.skip("the test database user may not assume the anon role")
        yield conn
        conn.rollback()


def test_every_table_has_rls_and_no_policies(owner_conn: psycopg.Connection[Any]) -> None:
    rows = owner_conn.execute(
        "select c.relname, c.relrowsecurity, c.relforcerowsecurity from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r'"
    ).fetchall()
    flags = {name: (rls, forced) for name, rls, forced in rows}
    for table in (*TABLES, "bc_schema_migrations"):
        assert flags[table] == (True, False), table
    policies = owner_conn.execute("select count(*) from pg_policies where schemaname = 'public'").fetchone()
    assert policies == (0,)


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_the_step_timers_are_closed_to_every_api_role(owner_conn: psycopg.Connection[Any], role: str) -> None:
    flags = owner_conn.execute(
        "select relrowsecurity from pg_class where oid = 'babychain_private.chain_step_timers'::regclass"
    ).fetchone()
    assert flags == (True,)
    owner_conn.execute("grant usage on schema babychain_private to " + role)  # a mistaken grant: the table says no
    owner_conn.execute(f"set local role {role}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="chain_step_timers"), owner_conn.transaction():
        owner_conn.execute("select * from babychain_private.chain_step_timers")


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_rls_keeps_client_roles_out(owner_conn: psycopg.Connection[Any], stores: dict[str, Store], role: str) -> None:
    run = make_run(stores["postgres"])
    owner_conn.execute(f"set local role {role}")
    for table in TABLES:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), owner_conn.transaction():
            owner_conn.execute(f"select * from {table}")
    for function in ("bc_get_run", "bc_list_runs", "bc_health"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="function"), owner_conn.transaction():
            owner_conn.execute(f"select {function}(%s::jsonb)", (json.dumps({"run_id": run["id"]}),))
    with pytest.raises(psycopg.errors.InsufficientPrivilege), owner_conn.transaction():
        owner_conn.execute("select babychain_private.bc_run_json(%s::uuid)", (run["id"],))


def test_rls_hides_rows_even_with_a_table_grant(owner_conn: psycopg.Connection[Any], stores: dict[str, Store]) -> None:
    # Supabase grants anon SELECT on public tables by default; with RLS and no policy it still sees nothing.
    run = make_run(stores["postgres"])
    for table in TABLES:
        owner_conn.execute(f"grant select on {table} to anon")
    owner_conn.execute("set local role anon")
    for table in TABLES:
        assert owner_conn.execute(f"select count(*) from {table}").fetchone() == (0,), table
    assert owner_conn.execute("select count(*) from chain_runs where id = %s", (run["id"],)).fetchone() == (0,)


def test_service_role_reaches_the_data(owner_conn: psycopg.Connection[Any], stores: dict[str, Store]) -> None:
    bypass = owner_conn.execute("select rolbypassrls from pg_roles where rolname = 'service_role'").fetchone()
    if not (bypass and bypass[0]):
        pytest.skip("service_role was created without BYPASSRLS (the migration ran as a non-superuser)")
    run = make_run(stores["postgres"])
    owner_conn.execute("set local role service_role")
    row = owner_conn.execute("select bc_get_run(%s::jsonb)", (json.dumps({"run_id": run["id"]}),)).fetchone()
    assert row is not None and row[0] == stores["postgres"].get_run(run["id"])
    # Writes too, with nothing but the execute grants (the functions run as their owner, security definer).
    created = owner_conn.execute("select bc_create_run(%s::jsonb)", (json.dumps(run_request(new_owner())),)).fetchone()
    assert created is not None and created[0]["created"] is True
    receipt = owner_conn.execute(
        "select bc_record_webhook_receipt(%s::jsonb)",
        (json.dumps({"provider": "bfl", "receipt_id": uuid.uuid4().hex}),),
    ).fetchone()
    assert receipt == ({"first": True},)
    attempt = {"run_id": run["id"], "event_id": "e", "attempt": 1, "outcome": "failed", "retry_in_seconds": None}
    recorded = owner_conn.execute("select bc_record_callback_attempt(%s::jsonb)", (json.dumps(attempt),)).fetchone()
    assert recorded == ({"callback_status": None},)  # no claim to settle, but the attempt row is written
