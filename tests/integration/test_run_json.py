"""The run resource is the same, byte for byte, since bc_run_json builds json text and casts it once
(20261201091000_run_json_once.sql): the definition it replaced (to_jsonb of each row) is kept here, in this
session's pg_temp only, and both are compared over runs in every state, and field by field over a list page (arrays
of the fields the list shows, 20261202040000_list_rows_as_shown.sql)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from babychain.engine.presenter import present_run
from babychain.store.postgres import PostgresStore
from babychain.store.rows import ListedRunRow, ListedStepRow, RunRow, StepRow
from tests.integration.test_store_contract import as_listed, new_owner, run_request

# The definition of 20261121000000_chain_engine.sql, under another name, with the two values the transitions no
# longer write (20261202070000_current_step_on_read.sql) derived here the plain way: the current step as the first
# step not succeeded (read alone, by step order), the run's updated_at as its last write or its steps' last completion.
TO_JSONB_RUN_JSON = """
create function pg_temp.bc_run_json_to_jsonb(p_run_id uuid) returns jsonb
language sql stable set search_path = '' as $$
    select to_jsonb(r) || jsonb_build_object('steps', coalesce((
        select jsonb_agg(to_jsonb(s) order by s.step_index) from public.chain_steps s where s.run_id = r.id),
        '[]'::jsonb))
        || jsonb_build_object(
            'current_step_key', case
                when r.status = 'succeeded' then 'completed'
                when r.status in ('failed', 'canceled') then r.status
                when r.status = 'queued' then 'processing'
                else coalesce((select s.step_key from public.chain_steps s
                                where s.run_id = r.id and s.status <> 'succeeded'
                                order by s.step_index limit 1), 'processing') end,
            'updated_at', (select max(t) from (select r.updated_at union all
                                               select s.completed_at from public.chain_steps s
                                                where s.run_id = r.id) u(t)))
      from public.chain_runs r where r.id = p_run_id
$$
"""

# Values whose rendering could differ between json and jsonb if anything did: numbers with a scale or an exponent,
# escapes, control characters, non-ASCII, empty and nested containers, JSON null inside a document.
AWKWARD = {
    "prompt": 'a "quoted" \\ back\\slash, a tab\t, a newline\n, \u0001, três, 灯台, 🚀',
    "numbers": [0, -0, 1.50, 1e3, 2.5e-7, 12345678901234567890, -3.25],
    "nested": {"": [], "empty": {}, "null": None, "bools": [True, False]},
}
_SUBMIT = {"submit_timeout_seconds": 60.0}


@pytest.fixture(scope="module")
def store(session_database_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(session_database_url, max_size=2)
    yield store
    store.close()


def _run(store: PostgresStore, owner: str, **kwargs: Any) -> dict[str, Any]:
    request = run_request(owner, **kwargs)
    request["input"] = AWKWARD
    request["metadata"] = {"customer": "ü-42", "tags": ["a", "b"], "score": 0.10}
    created = store.create_run(request)
    assert created["created"] is True
    run: dict[str, Any] = created["run"]
    return run


def _claim(store: PostgresStore, run: dict[str, Any], index: int = 0) -> dict[str, Any]:
    step = store.get_run(run["id"])["steps"][index]  # type: ignore[index]
    taken = store.take_step(run["id"], step["id"], step["seq"], **_SUBMIT)
    assert taken is not None and taken["action"] == "claimed"
    claimed: dict[str, Any] = taken["step"]
    return claimed


def _runs_in_every_state(store: PostgresStore, owner: str) -> dict[str, str]:
    hook = "https://example.com/hook?a=1&b=ü"
    runs: dict[str, str] = {}

    runs["queued"] = _run(store, owner)["id"]
    runs["queued, webhook, idempotency key"] = _run(
        store, owner, webhook_url=hook, idempotency_key=f"idem-{uuid.uuid4().hex}"
    )["id"]

    running = _run(store, owner, webhook_url=hook)
    claimed = _claim(store, running)
    job = f"job-{uuid.uuid4().hex}"
    assert store.record_submission(
        claimed["id"], claimed["attempt"], job, {"region": "eu"}, 30.0, provider="local", request_params=AWKWARD
    )
    assert store.defer_step(claimed["id"], claimed["seq"] + 1, 5.0, {"progress": 0.5, "eta": None})
    runs["running with progress"] = running["id"]

    retried = _run(store, owner)
    claimed = _claim(store, retried)
    assert store.retry_step(claimed["id"], claimed["attempt"], 1.0, "provider_unavailable", "try «later»", {"n": 1})
    runs["queued after a retry"] = retried["id"]

    for name, webhook in (("succeeded", None), ("succeeded, webhook delivering", hook)):
        done = _run(store, owner, steps=1, webhook_url=webhook)
        claimed = _claim(store, done)
        submission = {"provider": "local", "provider_job_id": f"job-{uuid.uuid4().hex}", "request_params": AWKWARD}
        outputs = ["https://files.example/o.png", "https://files.example/ü.mp4"]
        assert store.complete_step(claimed["id"], claimed["attempt"], outputs, {"seed": 7}, submission=submission)
        runs[name] = done["id"]
    assert store.claim_callback(runs["succeeded, webhook delivering"], lease_seconds=60, max_attempts=3, holder="t")

    failed = _run(store, owner, webhook_url=hook)
    claimed = _claim(store, failed)
    assert store.fail_step(claimed["id"], "provider_error", 'boom: "bad" \\ input\n', attempt=claimed["attempt"])
    runs["failed, webhook pending"] = failed["id"]

    canceled = _run(store, owner)
    _claim(store, canceled)
    assert store.cancel_run(canceled["id"])["canceled"] is True
    runs["canceled while running"] = canceled["id"]

    queued_canceled = _run(store, owner, webhook_url=hook)
    assert store.cancel_run(queued_canceled["id"])["canceled"] is True
    runs["canceled while queued"] = queued_canceled["id"]
    return runs


def test_run_json_is_the_to_jsonb_definition_byte_for_byte(store: PostgresStore, session_database_url: str) -> None:
    owner = new_owner()
    runs = _runs_in_every_state(store, owner)
    with psycopg.connect(session_database_url) as conn:
        conn.execute(TO_JSONB_RUN_JSON)
        statuses = set()
        for state, run_id in runs.items():
            row = conn.execute(
                "select pg_temp.bc_run_json_to_jsonb(%s)::text, babychain_private.bc_run_json(%s)::text,"
                " babychain_private.bc_run_json(%s)->>'status'",
                (run_id, run_id, run_id),
            ).fetchone()
            assert row is not None and row[0] is not None
            assert row[1] == row[0], state
            statuses.add(row[2])
        assert statuses == {"queued", "running", "succeeded", "failed", "canceled"}

        # A list page (arrays of the values the list shows, built in one statement), made back into objects, is as
        # jsonb the page the old definition's jsonb_agg built, without the fields the list does not carry.
        request = {"owner_id": owner, "limit": 50, "status": None, "chain_slug": None}
        rebuilt = conn.execute(
            """with page as (select public.bc_list_runs(%s::jsonb) as p)
               select jsonb_agg((
                   select jsonb_object_agg(f.name, case when f.name = 'steps' then (
                              select jsonb_agg((
                                         select jsonb_object_agg(g.name, st.value->(g.n::int - 1))
                                           from json_array_elements_text(p->'step_fields') with ordinality g(name, n))
                                       order by st.n)
                                from json_array_elements(r.value->(f.n::int - 1)) with ordinality st(value, n))
                            else (r.value->(f.n::int - 1))::jsonb end)
                     from json_array_elements_text(p->'run_fields') with ordinality f(name, n)) order by r.n)::text
                 from page, json_array_elements(p->'runs') with ordinality r(value, n)""",
            (psycopg.types.json.Jsonb(request),),
        )
        dropped_run = sorted(set(RunRow.__annotations__) - set(ListedRunRow.__annotations__))
        dropped_step = sorted(set(StepRow.__annotations__) - set(ListedStepRow.__annotations__))
        assert dropped_run and dropped_step
        expected = conn.execute(
            """select jsonb_agg((o.run - %(run)s::text[]) || jsonb_build_object('steps', (
                          select jsonb_agg(s.value - %(step)s::text[] order by s.n)
                            from jsonb_array_elements(o.run->'steps') with ordinality s(value, n)))
                      order by o.created_at desc, o.id desc)::text
                 from (select pg_temp.bc_run_json_to_jsonb(id) as run, created_at, id from public.chain_runs
                        where owner_id = %(owner)s) o""",
            {"run": dropped_run, "step": dropped_step, "owner": owner},
        )
        assert rebuilt.fetchone() == expected.fetchone()
        conn.rollback()


def test_a_listed_run_is_presented_byte_for_byte_as_the_run_read_alone(store: PostgresStore) -> None:
    """The list returns json (the run's keys in column order), a run read alone jsonb (keys in jsonb's order): the
    rows are equal as values, and the API's resource built from each serialises to the same bytes, nested documents
    (input, metadata, output, a step's provider metadata) included."""
    owner = new_owner()
    runs = _runs_in_every_state(store, owner)
    listed = store.list_runs(owner, limit=50)
    assert {r["id"] for r in listed} == set(runs.values())
    for row in listed:
        alone = store.get_run(row["id"])
        assert alone is not None
        assert row == as_listed(alone)
        assert set(row) != set(alone)  # the list carries fewer fields, so the check below is not moot
        assert json.dumps(present_run(row)) == json.dumps(present_run(alone))
