"""Retention: finished runs older than BABYCHAIN_RETENTION_DAYS go, with everything of theirs; nothing else does.

On the real store (a fresh embedded Postgres database per test), through the real sweeper handler
(`engine.sweep_once()`), with real chains producing real artifact files where files matter. A run is made old the
only way there is without waiting a month: its completion time (and creation time) is moved back in the database,
which is exactly what the purge reads. What each test proves is in its docstring.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from babychain import observability
from babychain.artifacts import LocalArtifactStore
from babychain.engine import sweeper
from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from babychain.store.errors import StoreError
from babychain.store.postgres import PostgresStore
from babychain.store.rows import StepRow
from tests.conftest import client_for, wait_for_run, wait_until
from tests.integration.requests import chain_request

OLD = 40  # days ago: beyond the default window of 30
RECENT = 10  # days ago: within it
PURGE_KEYS = {"purged_runs", "purged_receipts", "purge_batches"}


# helpers --------------------------------------------------------------------------------------------------------------


def run_request(*, webhook_url: str | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
    run_id = str(uuid.uuid4())
    return {
        "id": run_id,
        "owner_id": "test:retention",
        "chain_slug": "retention-chain",
        "chain_version": "2026-11-21",
        "mode": "local",
        "input": {"prompt": "a lighthouse"},
        "webhook_url": webhook_url,
        "idempotency_key": idempotency_key,
        "request_hash": "hash-1",
        "run_timeout_seconds": 3600,
        "callback_event_id": f"evt_{run_id}",
        "steps": [
            {"step_index": 0, "step_key": "image", "step_kind": "image", "model_identifier": "local/image"},
            {
                "step_index": 1,
                "step_key": "video",
                "step_kind": "video",
                "model_identifier": "local/video",
                "depends_on": ["image"],
            },
        ],
    }


def new_run(store: PostgresStore, **kwargs: Any) -> str:
    created = store.create_run(run_request(**kwargs))
    assert created["created"] is True
    return created["run"]["id"]


def canceled_run(store: PostgresStore, **kwargs: Any) -> str:
    """A finished run (canceled while queued); with a webhook_url its callback is then pending."""
    run_id = new_run(store, **kwargs)
    assert store.cancel_run(run_id)["canceled"] is True
    return run_id


def first_step(store: PostgresStore, run_id: str) -> StepRow:
    run = store.get_run(run_id)
    assert run is not None
    return run["steps"][0]


def settle_callback(store: PostgresStore, run_id: str, outcome: str) -> None:
    """One recorded attempt that settles the callback: `delivered`, or `failed` with no retry left."""
    claim = store.claim_callback(run_id, lease_seconds=60.0, max_attempts=10)
    assert claim is not None
    recorded = store.record_callback_attempt(
        {
            "run_id": run_id,
            "event_id": f"evt_{run_id}",
            "attempt": claim["attempt"],
            "outcome": outcome,
            "status_code": 204 if outcome == "delivered" else 500,
            "retry_in_seconds": None,
        }
    )
    assert recorded == {"callback_status": outcome}


def age(dsn: str, run_ids: list[str], days: int) -> None:
    """Moves runs back in time: created and (when finished) completed `days` ago."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update chain_runs set created_at = now() - make_interval(days => %(days)s, mins => 5),"
            " completed_at = case when completed_at is null then null else now() - make_interval(days => %(days)s)"
            " end where id = any(%(ids)s::uuid[])",
            {"days": days, "ids": run_ids},
        )


def age_receipts(dsn: str, receipt_ids: list[str], days: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update provider_webhook_receipts set received_at = now() - make_interval(days => %s)"
            " where receipt_id = any(%s)",
            (days, receipt_ids),
        )


def rows_of(dsn: str, run_id: str) -> dict[str, int]:
    """How many rows of the run each table holds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = {}
        for table in ("chain_runs", "chain_steps", "callback_deliveries"):
            column = "id" if table == "chain_runs" else "run_id"
            row = conn.execute(f"select count(*) from {table} where {column} = %s", (run_id,)).fetchone()
            counts[table] = row[0] if row else 0
        return counts


def receipts_left(dsn: str, receipt_ids: list[str]) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select receipt_id from provider_webhook_receipts where receipt_id = any(%s)", (receipt_ids,)
        ).fetchall()
    return {row[0] for row in rows}


def run_count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select count(*) from chain_runs").fetchone()
    return row[0] if row else 0


def step_folders(run_folder: Path) -> set[str]:
    """The steps that have an output file in a run's artifact folder."""
    return {p.parent.name for p in run_folder.rglob("output-*") if p.is_file() and p.stat().st_size > 0}


def purge_counts(result: dict[str, int]) -> dict[str, int]:
    return {key: result[key] for key in PURGE_KEYS}


@pytest.fixture
def quiet_engine(make_engine: Callable[..., LocalEngine]) -> LocalEngine:
    """An engine without queue consumers or background sweeper: each test sweeps by hand, and only then."""
    return make_engine(workers=False)


def store_of(engine: LocalEngine) -> PostgresStore:
    assert engine.store is not None
    return engine.store


# end to end: real chains, real files ----------------------------------------------------------------------------------


def test_a_sweep_deletes_an_old_finished_run_with_its_steps_attempts_files_and_idempotency_key(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    """Two real chain1 runs succeed and their callbacks are delivered. The one that ended 40 days ago is gone after a
    sweep: its row, steps, callback attempts, artifact files, and its Idempotency-Key (which then makes a new run).
    The one that ended 10 days ago is untouched, files included."""
    engine = make_engine()
    with client_for(engine) as client:
        ids = {}
        for name in ("old", "recent"):
            response = client.post(
                "/api/v1/chains/chain1/runs",
                json=chain_request("chain1", receiver.url),
                headers={"Idempotency-Key": f"retention-{name}"},
            )
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]
        for run_id in ids.values():
            assert wait_for_run(client, run_id)["status"] == "succeeded"
        delivered = wait_until(
            lambda: all(
                client.get(f"/api/v1/chains/get/{run_id}").json()["callback"]["status"] == "delivered"
                for run_id in ids.values()
            ),
            timeout=20,
        )
        assert delivered
        folders = {name: Path(engine.settings.artifact_dir) / "runs" / run_id for name, run_id in ids.items()}
        for folder in folders.values():
            assert step_folders(folder) == {"text_to_image", "image_to_video"}
        before = rows_of(engine.settings.database_url, ids["old"])
        assert before == {"chain_runs": 1, "chain_steps": 2, "callback_deliveries": 1}

        age(engine.settings.database_url, [ids["old"]], OLD)
        age(engine.settings.database_url, [ids["recent"]], RECENT)
        result = engine.sweep_once()
        # (The engine's own sweeper runs in the background too, and may have purged it first: the end state counts.)
        assert result["purged_runs"] in (0, 1)

        assert rows_of(engine.settings.database_url, ids["old"]) == {
            "chain_runs": 0,
            "chain_steps": 0,
            "callback_deliveries": 0,
        }
        assert not folders["old"].exists()
        assert client.get(f"/api/v1/chains/get/{ids['old']}").status_code == 404

        assert rows_of(engine.settings.database_url, ids["recent"]) == before
        assert client.get(f"/api/v1/chains/get/{ids['recent']}").json()["status"] == "succeeded"
        assert step_folders(folders["recent"]) == {"text_to_image", "image_to_video"}

        # The old run's Idempotency-Key went with it: the same key now makes a new run; the recent one still replays.
        again = client.post(
            "/api/v1/chains/chain1/runs",
            json=chain_request("chain1", receiver.url),
            headers={"Idempotency-Key": "retention-old"},
        )
        assert again.status_code == 202 and again.json()["id"] != ids["old"]
        replay = client.post(
            "/api/v1/chains/chain1/runs",
            json=chain_request("chain1", receiver.url),
            headers={"Idempotency-Key": "retention-recent"},
        )
        assert replay.json()["id"] == ids["recent"]


# which runs go and which stay -----------------------------------------------------------------------------------------


def test_only_old_finished_runs_with_a_settled_callback_go(quiet_engine: LocalEngine) -> None:
    """Old and finished with no callback, a delivered one or one that gave up: deleted. Old but still owing its
    callback (pending, being delivered), old but still active, and finished recently: kept. Old webhook receipts go,
    recent ones stay. A second sweep finds nothing more."""
    store, dsn = store_of(quiet_engine), quiet_engine.settings.database_url
    hook = "https://example.com/hook"
    no_callback = canceled_run(store)
    delivered = canceled_run(store, webhook_url=hook)
    settle_callback(store, delivered, "delivered")
    gave_up = canceled_run(store, webhook_url=hook)
    settle_callback(store, gave_up, "failed")
    pending = canceled_run(store, webhook_url=hook)
    delivering = canceled_run(store, webhook_url=hook)
    assert store.claim_callback(delivering, lease_seconds=60.0, max_attempts=10) is not None
    active = new_run(store, webhook_url=hook)  # queued, its callback waiting
    recent = canceled_run(store)
    doomed, kept = [no_callback, delivered, gave_up], [pending, delivering, active]
    age(dsn, doomed + kept, OLD)
    age(dsn, [recent], RECENT)
    old_receipt, new_receipt = f"job-{uuid.uuid4().hex}:Ready", f"job-{uuid.uuid4().hex}:Ready"
    assert store.record_webhook_receipt("bfl", old_receipt) and store.record_webhook_receipt("bfl", new_receipt)
    age_receipts(dsn, [old_receipt], OLD)

    result = quiet_engine.sweep_once()
    assert purge_counts(result) == {"purged_runs": 3, "purged_receipts": 1, "purge_batches": 1}
    for run_id in doomed:
        assert rows_of(dsn, run_id) == {"chain_runs": 0, "chain_steps": 0, "callback_deliveries": 0}
        assert store.get_run(run_id) is None
    for run_id in [*kept, recent]:
        assert rows_of(dsn, run_id)["chain_steps"] == 2
    kept_runs = {run_id: store.get_run(run_id) for run_id in [*kept, recent]}
    assert {run_id: run["callback_status"] for run_id, run in kept_runs.items() if run} == {
        pending: "pending",
        delivering: "delivering",
        active: "waiting",
        recent: None,
    }
    assert receipts_left(dsn, [old_receipt, new_receipt]) == {new_receipt}
    # Receipts that went can be recorded again (a provider redelivering after a month is a new delivery).
    assert store.record_webhook_receipt("bfl", new_receipt) is False

    assert purge_counts(quiet_engine.sweep_once()) == {"purged_runs": 0, "purged_receipts": 0, "purge_batches": 1}

    # Once the pending callback settles, its run goes at the next sweep.
    settle_callback(store, pending, "delivered")
    assert quiet_engine.sweep_once()["purged_runs"] == 1
    assert store.get_run(pending) is None


def test_retention_zero_keeps_every_run_but_not_old_receipts(make_engine: Callable[..., LocalEngine]) -> None:
    """BABYCHAIN_RETENTION_DAYS=0: not even a run that ended years ago is deleted; the SQL function itself also
    deletes nothing for 0. Webhook receipts still go after their own week (WEBHOOK_RECEIPT_DAYS): they only
    deduplicate a provider's retries, and would otherwise grow with every webhook ever received."""
    engine = make_engine(workers=False, retention_days=0)
    store, dsn = store_of(engine), engine.settings.database_url
    run_id = canceled_run(store)
    age(dsn, [run_id], 3 * 365)
    old_receipt, week_receipt = f"job-{uuid.uuid4().hex}:Ready", f"job-{uuid.uuid4().hex}:Ready"
    assert store.record_webhook_receipt("bfl", old_receipt) and store.record_webhook_receipt("bfl", week_receipt)
    age_receipts(dsn, [old_receipt], sweeper.WEBHOOK_RECEIPT_DAYS + 1)
    age_receipts(dsn, [week_receipt], sweeper.WEBHOOK_RECEIPT_DAYS - 1)

    assert store.purge_expired_runs(0, 500) == {"run_ids": [], "receipts": 0, "busy": False}
    assert receipts_left(dsn, [old_receipt, week_receipt]) == {old_receipt, week_receipt}
    assert purge_counts(engine.sweep_once()) == {"purged_runs": 0, "purged_receipts": 1, "purge_batches": 1}
    assert rows_of(dsn, run_id) == {"chain_runs": 1, "chain_steps": 2, "callback_deliveries": 0}
    assert receipts_left(dsn, [old_receipt, week_receipt]) == {week_receipt}
    # A negative window is refused where settings are read (see tests/unit/test_config.py) and deletes nothing here.
    assert store.purge_expired_runs(-1, 500)["run_ids"] == []


# bounded batches ------------------------------------------------------------------------------------------------------


def test_a_backlog_goes_in_bounded_batches_over_several_sweeps(quiet_engine: LocalEngine) -> None:
    """More old runs than one sweep may delete: each statement deletes at most PURGE_BATCH runs, each sweep runs at
    most PURGE_BATCHES_PER_SWEEP of them, and the backlog drains over the following sweeps. Recent runs stay."""
    store, dsn = store_of(quiet_engine), quiet_engine.settings.database_url
    batch, per_sweep = sweeper.PURGE_BATCH, sweeper.PURGE_BATCHES_PER_SWEEP
    rest = batch // 2  # what is left for the last sweep with something to do
    total = batch * (per_sweep + 1) + rest
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Made by the engine's own functions, in one statement each.
        conn.execute(
            "select bc_cancel_run(jsonb_build_object('run_id', bc_create_run(%s || jsonb_build_object("
            "'id', gen_random_uuid(), 'callback_event_id', 'evt_' || i))->'run'->>'id'))"
            " from generate_series(1, %s) i",
            (Jsonb({k: v for k, v in run_request().items() if k not in ("id", "callback_event_id")}), total),
        )
        conn.execute("update chain_runs set completed_at = now() - make_interval(days => %s)", (OLD,))
    recent = canceled_run(store)
    assert run_count(dsn) == total + 1

    # One statement: exactly one batch, oldest first.
    first = store.purge_expired_runs(30, batch)
    assert len(first["run_ids"]) == batch and not first["busy"]
    assert run_count(dsn) == total + 1 - batch

    # Then sweeps: full ones while the backlog lasts, each within its bound.
    left, sweeps = total - batch, []
    while True:
        result = quiet_engine.sweep_once()
        sweeps.append((result["purge_batches"], result["purged_runs"]))
        assert result["purge_batches"] <= per_sweep and result["purged_runs"] <= batch * result["purge_batches"]
        left -= result["purged_runs"]
        assert run_count(dsn) == left + 1
        if result["purged_runs"] == 0:
            break
    assert sweeps == [(per_sweep, per_sweep * batch), (1, rest), (1, 0)]
    assert store.get_run(recent) is not None


# never a long lock, never a wait on live work -------------------------------------------------------------------------


@pytest.fixture
def holder(quiet_engine: LocalEngine) -> Iterator[psycopg.Connection[Any]]:
    """A live transaction of its own (not autocommit), rolled back at the end if still open."""
    with psycopg.connect(quiet_engine.settings.database_url) as conn:
        yield conn
        conn.rollback()


def test_rows_held_by_live_transactions_do_not_stall_the_purge(
    quiet_engine: LocalEngine, holder: psycopg.Connection[Any]
) -> None:
    """A live transaction holds an old run (row lock), records a callback attempt on another old run (which takes a
    key-share lock on it), and holds a recent run and an active one. The sweep neither waits for it nor gives up:
    it deletes the old run nobody holds and skips the held ones; the live transaction then goes on with its work and
    commits, and the next sweep deletes the two it skipped."""
    store, dsn = store_of(quiet_engine), quiet_engine.settings.database_url
    held, attempted, free = canceled_run(store), canceled_run(store), canceled_run(store)
    recent, active = canceled_run(store), new_run(store)
    age(dsn, [held, attempted, free, active], OLD)
    age(dsn, [recent], RECENT)

    holder.execute("select id from chain_runs where id = any(%s::uuid[]) for update", ([held, recent, active],))
    holder.execute(
        "select bc_record_callback_attempt(%s)",
        (Jsonb({"run_id": attempted, "event_id": f"evt_{attempted}", "attempt": 1, "outcome": "failed"}),),
    )

    result = quiet_engine.sweep_once()  # returns: nothing it needs is waited for
    assert purge_counts(result) == {"purged_runs": 1, "purged_receipts": 0, "purge_batches": 1}
    assert store.get_run(free) is None
    assert all(store.get_run(run_id) is not None for run_id in (held, attempted, recent, active))

    # The live transaction was not disturbed: it finishes its work on the run it holds and commits.
    canceled = holder.execute("select bc_cancel_run(%s)", (Jsonb({"run_id": active}),)).fetchone()
    assert canceled is not None and canceled[0]["canceled"] is True
    holder.commit()

    assert quiet_engine.sweep_once()["purged_runs"] == 2
    assert store.get_run(held) is None and store.get_run(attempted) is None
    assert rows_of(dsn, attempted) == {"chain_runs": 0, "chain_steps": 0, "callback_deliveries": 0}
    assert store.get_run(recent) is not None and store.get_run(active) is not None  # active just ended: recent


def test_an_open_purge_does_not_block_live_work(quiet_engine: LocalEngine) -> None:
    """A purge batch is held open (its transaction not yet committed, its deleted rows locked) while live work runs
    on other runs through the store: create, claim, submit, complete, cancel, a callback claimed and recorded, a new
    webhook receipt, reads of the old run. The live store's connections carry a short lock_timeout, so a wait on the
    purge would fail the call instead of hanging; every call succeeds. After the commit the old run is gone."""
    dsn = quiet_engine.settings.database_url
    store = store_of(quiet_engine)
    old = canceled_run(store, idempotency_key="kept-for-now")
    settle_ready = canceled_run(store, webhook_url="https://example.com/hook")
    settle_callback(store, settle_ready, "delivered")
    age(dsn, [old, settle_ready], OLD)

    live = PostgresStore(make_conninfo(dsn, options="-c lock_timeout=1000"), max_size=2)
    try:
        with psycopg.connect(dsn) as purge:
            row = purge.execute("select bc_purge_expired_runs(%s)", (Jsonb({"retention_days": 30, "limit": 500}),))
            purged = row.fetchone()
            assert purged is not None and sorted(purged[0]["run_ids"]) == sorted([old, settle_ready])

            # Live work while the purge's transaction is open.
            run_id = new_run(live, webhook_url="https://example.com/hook")
            step = first_step(live, run_id)
            taken = live.take_step(run_id, step["id"], step["seq"], submit_timeout_seconds=60)
            assert taken is not None and taken["action"] == "claimed"
            claimed = taken["step"]
            assert live.record_submission(
                step["id"], claimed["attempt"], f"job-{uuid.uuid4().hex}", {}, 30.0, provider="local"
            )
            completion = live.complete_step(step["id"], claimed["attempt"], ["https://example.com/out.png"])
            assert completion is not None and completion["run_status"] == "running"
            assert live.cancel_run(run_id)["canceled"] is True
            settle_callback(live, run_id, "delivered")
            assert live.record_webhook_receipt("bfl", f"job-{uuid.uuid4().hex}:Ready") is True
            # Reads see the old run as it was until the purge commits (no read waits for it).
            assert live.get_run(old) is not None
            # Its idempotency key is still taken until then: the same key replays the old run.
            replay = live.create_run(run_request(idempotency_key="kept-for-now"))
            assert replay["created"] is False and replay["run"]["id"] == old
            purge.commit()
        assert live.get_run(old) is None and live.get_run(settle_ready) is None
        assert live.get_run(run_id) is not None
    finally:
        live.close()


def test_a_child_row_held_past_the_lock_timeout_makes_the_batch_give_up_whole(
    quiet_engine: LocalEngine, holder: psycopg.Connection[Any]
) -> None:
    """A live transaction holds a step of an old run. The purge waits for it no longer than its lock timeout, then
    undoes the whole batch (nothing half-deleted: every run keeps its steps, no file is touched) and says it was
    busy; the sweep reports nothing purged. Once the step is released, the next sweep deletes the batch."""
    store, dsn = store_of(quiet_engine), quiet_engine.settings.database_url
    runs = [canceled_run(store) for _ in range(3)]
    age(dsn, runs, OLD)
    artifacts = LocalArtifactStore(quiet_engine.settings.artifact_dir, quiet_engine.settings.artifact_base_url)
    for run_id in runs:
        artifacts.put(f"runs/{run_id}/image/output-0.png", b"png", "image/png")
    step_id = first_step(store, runs[0])["id"]
    holder.execute("select id from chain_steps where id = %s for update", (step_id,))

    assert store.purge_expired_runs(30, 500) == {"run_ids": [], "receipts": 0, "busy": True}
    assert purge_counts(quiet_engine.sweep_once()) == {"purged_runs": 0, "purged_receipts": 0, "purge_batches": 1}
    for run_id in runs:
        assert rows_of(dsn, run_id) == {"chain_runs": 1, "chain_steps": 2, "callback_deliveries": 0}
        assert artifacts.path_for(f"runs/{run_id}/image/output-0.png").is_file()

    holder.rollback()
    assert quiet_engine.sweep_once()["purged_runs"] == 3
    for run_id in runs:
        assert rows_of(dsn, run_id)["chain_runs"] == 0
        assert not (artifacts.folder / "runs" / run_id).exists()


# what operators see ---------------------------------------------------------------------------------------------------


def test_a_purge_leaves_a_log_line_and_metrics_with_the_counts(
    quiet_engine: LocalEngine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper handler's JSON log has one `retention purge` line with the counts, and its Embedded Metric Format
    output carries RunsPurged and WebhookReceiptsPurged (CloudWatch metrics on AWS, from the function's log)."""
    store, dsn = store_of(quiet_engine), quiet_engine.settings.database_url
    runs = [canceled_run(store) for _ in range(2)]
    age(dsn, runs, OLD)
    receipt = f"job-{uuid.uuid4().hex}:Ready"
    assert store.record_webhook_receipt("bfl", receipt)
    age_receipts(dsn, [receipt], OLD)

    # On, as on AWS (the one-machine shape turns metrics off: babychain.local sets POWERTOOLS_METRICS_DISABLED).
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    stream = io.StringIO()
    log_handler = logging.StreamHandler(stream)
    log_handler.setFormatter(observability.logger.registered_formatter)
    service_logger = logging.getLogger(observability.logger.name)
    service_logger.addHandler(log_handler)
    level = service_logger.level
    service_logger.setLevel(logging.INFO)
    try:
        capsys.readouterr()
        quiet_engine.sweep_once()
        printed = capsys.readouterr().out
    finally:
        service_logger.removeHandler(log_handler)
        service_logger.setLevel(level)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (purge_line,) = [line for line in lines if line["message"] == "retention purge"]
    assert purge_line["level"] == "INFO"
    assert {key: purge_line[key] for key in (*PURGE_KEYS, "retention_days")} == {
        "purged_runs": 2,
        "purged_receipts": 1,
        "purge_batches": 1,
        "retention_days": 30,
    }
    emitted = [json.loads(line) for line in printed.splitlines() if line.startswith("{") and '"_aws"' in line]
    metrics = {
        name: record[name]
        for record in emitted
        for directive in record["_aws"]["CloudWatchMetrics"]
        for name in (m["Name"] for m in directive["Metrics"])
    }
    # (Powertools writes a metric's values as a list: one entry per time it was added in the invocation.)
    assert {name: metrics.get(name) for name in ("RunsPurged", "WebhookReceiptsPurged")} == {
        "RunsPurged": [2.0],
        "WebhookReceiptsPurged": [1.0],
    }


# the local artifact store ---------------------------------------------------------------------------------------------


def test_local_artifact_store_deletes_a_runs_folder_and_nothing_else(tmp_path: Path) -> None:
    """delete_run removes `runs/<run id>/` with everything in it, is fine with a run that has no files, leaves other
    runs' and other keys' files alone, and takes nothing but a run id."""
    store = LocalArtifactStore(tmp_path / "artifacts", "http://127.0.0.1:9/files")
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    for run_id in (gone, kept):
        store.put(f"runs/{run_id}/image/output-0.png", b"png", "image/png")
        store.put(f"runs/{run_id}/video/output-0.mp4", b"mp4", "video/mp4")
    store.put("demo/source.png", b"png", "image/png")

    store.delete_run(gone)
    store.delete_run(gone)  # again: nothing left, no error
    store.delete_run(str(uuid.uuid4()))  # a run that never had files
    assert not (store.folder / "runs" / gone).exists()
    assert store.path_for(f"runs/{kept}/video/output-0.mp4").read_bytes() == b"mp4"
    assert store.path_for("demo/source.png").is_file()
    for bad in ("..", "../artifacts", "", "*", f"{kept}/..", f"urn:uuid:{kept}"):
        with pytest.raises(ValueError, match="not a run id"):
            store.delete_run(bad)
    assert store.path_for(f"runs/{kept}/image/output-0.png").is_file()


def test_the_purge_function_is_guarded_like_the_rest(quiet_engine: LocalEngine) -> None:
    """Bad arguments are the store's errors, not a partial purge."""
    store = store_of(quiet_engine)
    with pytest.raises(StoreError):
        store.call("bc_purge_expired_runs", {"retention_days": "thirty", "limit": 500})
    assert store.purge_expired_runs(30, 0) == {"run_ids": [], "receipts": 0, "busy": False}
