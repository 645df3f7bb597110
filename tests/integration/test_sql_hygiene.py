"""SQL hygiene, read from the migrated database's catalog.

- Every function in the exposed schema (`public`, what PostgREST serves) and in `babychain_private` pins an empty
  `search_path`: no caller can swap a table or a function under it.
- `public` holds exactly the RPC surface: the functions the store adapters call (`call("bc_...")` in
  store/base.py and local/queue.py), each `security definer`, executable by service_role and by no client role.
- The private helpers are executable by their owner alone, and cannot be called by the service role, neither over
  the PostgREST path (not exposed: 404/406; exposed by mistake: 42501) nor in SQL.
- The named CHECK constraints hold the cross-column invariants.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from babychain.store.errors import StoreError
from babychain.store.postgres import PostgresStore
from babychain.store.supabase import SupabaseStore
from tests.standins.postgrest import PostgrestStandIn

ROOT = Path(__file__).resolve().parents[2]
RPC_CALLERS = (ROOT / "shared/babychain/store/base.py", ROOT / "shared/babychain/local/queue.py")
EXPOSED_SCHEMAS = ("public",)
PRIVATE_SCHEMA = "babychain_private"
CLIENT_ROLES = ("anon", "authenticated")

# Functions of ours: not those an extension installed in these schemas.
_FUNCTIONS = """
    select n.nspname, p.proname, p.oid::regprocedure::text, p.proconfig, p.prosecdef, p.proowner::regrole::text
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = any(%s)
       and not exists (select from pg_depend d where d.objid = p.oid and d.classid = 'pg_proc'::regclass
                                                 and d.deptype = 'e')
     order by 1, 2
"""


def rpc_surface() -> set[str]:
    names: set[str] = set()
    for path in RPC_CALLERS:
        names |= set(re.findall(r'call\(\s*"(bc_[a-z_]+)"', path.read_text()))
    return names


@pytest.fixture
def conn(session_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(session_database_url) as connection:  # not autocommit: each test rolls back what it did
        yield connection
        connection.rollback()


def _functions(conn: psycopg.Connection[Any], *schemas: str) -> list[tuple[Any, ...]]:
    return conn.execute(_FUNCTIONS, (list(schemas),)).fetchall()


def test_every_function_pins_an_empty_search_path(conn: psycopg.Connection[Any]) -> None:
    functions = _functions(conn, *EXPOSED_SCHEMAS, PRIVATE_SCHEMA)
    assert {schema for schema, *_ in functions} == {*EXPOSED_SCHEMAS, PRIVATE_SCHEMA}
    unpinned = [
        f"{signature} ({config or 'no setting'})"
        for _, _, signature, config, *_ in functions
        if 'search_path=""' not in (config or [])
    ]
    assert not unpinned, "functions without `set search_path = ''`: " + ", ".join(unpinned)


def test_the_exposed_schema_is_exactly_the_rpc_surface(conn: psycopg.Connection[Any]) -> None:
    surface = rpc_surface()
    assert len(surface) >= 25 and {"bc_create_run", "bc_sweep", "bc_queue_receive"} <= surface
    functions = _functions(conn, *EXPOSED_SCHEMAS)
    assert {name for _, name, *_ in functions} == surface
    for _, name, signature, _, security_definer, owner in functions:
        assert signature == f"{name}(jsonb)", signature
        assert security_definer, f"{signature} must run as its owner to reach the private helpers"
        assert owner == conn.info.user, f"{signature} belongs to {owner}, not to the role that migrated"
        assert _may_execute(conn, "service_role", signature), signature
        for role in CLIENT_ROLES:
            assert not _may_execute(conn, role, signature), (role, signature)
        assert not _public_may_execute(conn, signature), signature


def test_private_helpers_are_for_their_owner_alone(conn: psycopg.Connection[Any]) -> None:
    helpers = _functions(conn, PRIVATE_SCHEMA)
    names = {name for _, name, *_ in helpers}
    assert {"bc_run_json", "bc_finish_run", "bc_seconds", "bc_merge_metadata", "bc_text_array"} <= names
    assert not names & rpc_surface()
    for role in ("service_role", *CLIENT_ROLES):
        assert not _has(conn, "select has_schema_privilege(%s, %s, 'usage')", role, PRIVATE_SCHEMA), role
    for _, _, signature, _, security_definer, _ in helpers:
        assert not security_definer, f"{signature}: a helper runs with its caller's (the RPC function's) rights"
        for role in ("service_role", *CLIENT_ROLES):
            assert not _may_execute(conn, role, signature), (role, signature)
        assert not _public_may_execute(conn, signature), signature


def test_the_service_role_cannot_call_private_helpers_in_sql(conn: psycopg.Connection[Any]) -> None:
    member = conn.execute(
        "select rolsuper or pg_has_role(current_user, 'service_role', 'member') from pg_roles "
        "where rolname = current_user"
    ).fetchone()
    if not (member and member[0]):
        pytest.skip("the test database user may not assume service_role")
    conn.execute("set local role service_role")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema babychain_private"), conn.transaction():
        conn.execute("select babychain_private.bc_seconds('1')")
    assert conn.execute("select bc_health('{}')").fetchone() == ({"database": "ok"},)  # which reaches no helper
    # Even with the schema opened (a mistaken grant), the helpers themselves stay closed.
    conn.execute("reset role")
    conn.execute("grant usage on schema babychain_private to service_role")
    conn.execute("set local role service_role")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="function bc_seconds"), conn.transaction():
        conn.execute("select babychain_private.bc_seconds('1')")
    # The RPC functions still reach them: they run as their owner.
    created = conn.execute("select bc_create_run(%s::jsonb)", (json.dumps(_run_request()),)).fetchone()
    assert created is not None and created[0]["created"] is True


def test_private_helpers_are_not_reachable_over_postgrest(session_database_url: str) -> None:
    with PostgrestStandIn(session_database_url) as gateway:
        if gateway.role != "service_role":
            pytest.skip("the stand-in could not assume service_role")
        store = SupabaseStore(gateway.url, gateway.service_role_key, timeout=10.0)
        try:
            assert store.health() == {"database": "ok"}  # the service role reaches the RPC surface
            for helper in ("bc_run_json", "bc_finish_run", "bc_seconds"):
                with pytest.raises(StoreError) as caught:
                    store.call(helper, {"run_id": str(uuid.uuid4())})
                assert (caught.value.code, caught.value.status) == ("PGRST202", 404), helper
        finally:
            store.close()
        headers = {
            "apikey": gateway.service_role_key,
            "authorization": f"Bearer {gateway.service_role_key}",
            "content-profile": PRIVATE_SCHEMA,
        }
        answer = httpx.post(f"{gateway.url}/rest/v1/rpc/bc_run_json", json={"p": {}}, headers=headers, timeout=10)
        assert answer.status_code == 406 and answer.json()["code"] == "PGRST106"

    # A project that exposed the private schema by mistake: the database still says no.
    with PostgrestStandIn(session_database_url, exposed_schemas=("public", PRIVATE_SCHEMA)) as gateway:
        headers |= {"apikey": gateway.service_role_key, "authorization": f"Bearer {gateway.service_role_key}"}
        answer = httpx.post(f"{gateway.url}/rest/v1/rpc/bc_run_json", json={"p": {}}, headers=headers, timeout=10)
        assert answer.status_code == 403 and answer.json()["code"] == "42501", answer.text


# Named CHECK constraints ----------------------------------------------------------------------------------------------

CONSTRAINTS = {
    "api_keys": ("api_keys_rate_limit_positive",),
    "chain_runs": (
        "chain_runs_completed_iff_terminal",
        "chain_runs_output_iff_succeeded",
        "chain_runs_callback_iff_webhook",
        "chain_runs_callback_waits_while_active",
        "chain_runs_pending_callback_is_scheduled",
        "chain_runs_delivering_callback_is_claimed",
        "chain_runs_callback_attempts_not_negative",
    ),
    "chain_steps": (
        "chain_steps_counters_not_negative",
        "chain_steps_completed_iff_ended",
        "chain_steps_running_was_claimed",
        "chain_steps_due_only_while_active",
        "chain_steps_outputs_iff_succeeded",
        "chain_steps_job_has_provider",
    ),
    "callback_deliveries": ("callback_deliveries_attempt_positive",),
    "bc_queue_messages": (
        "bc_queue_messages_queue_name",
        "bc_queue_messages_receiver_positive",
        "bc_queue_messages_received_fields",
        "bc_queue_messages_receiver_has_receipt",
        "bc_queue_messages_receive_count_not_negative",
    ),
    "bc_queue_dead_letters": (
        "bc_queue_dead_letters_queue_name",
        "bc_queue_dead_letters_receive_count_not_negative",
    ),
    "bc_queue_waiters": ("bc_queue_waiters_queue_name", "bc_queue_waiters_receiver_positive"),
}


def test_named_check_constraints_exist(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "select c.conrelid::regclass::text, c.conname from pg_constraint c "
        "join pg_namespace n on n.oid = c.connamespace where n.nspname = 'public' and c.contype = 'c'"
    ).fetchall()
    named = {(table, name) for table, name in rows}
    for table, names in CONSTRAINTS.items():
        for name in names:
            assert (table, name) in named, name


# Each: a write that breaks one invariant, straight on the table (as a buggy function would), and the constraint
# that refuses it. The run has a webhook and two steps; the first is claimed and submitted.
VIOLATIONS = [
    (
        "update chain_runs set status = 'succeeded', output = '{}', callback_status = 'pending', "
        "callback_next_at = now() where id = %(run)s",
        "chain_runs_completed_iff_terminal",
    ),
    (
        "update chain_runs set status = 'failed', completed_at = now(), callback_status = 'pending', "
        "callback_next_at = now(), output = '{}' where id = %(run)s",
        "chain_runs_output_iff_succeeded",
    ),
    ("update chain_runs set webhook_url = null where id = %(run)s", "chain_runs_callback_iff_webhook"),
    ("update chain_runs set callback_status = 'pending' where id = %(run)s", "chain_runs_callback_waits_while_active"),
    ("update chain_runs set callback_attempts = -1 where id = %(run)s", "chain_runs_callback_attempts_not_negative"),
    ("update chain_steps set status = 'succeeded' where id = %(step)s", "chain_steps_completed_iff_ended"),
    ("update chain_steps set started_at = null where id = %(step)s", "chain_steps_running_was_claimed"),
    (
        "update chain_steps set status = 'skipped', next_check_at = now() where id = %(next)s",
        "chain_steps_due_only_while_active",
    ),
    (
        "update chain_steps set status = 'succeeded', completed_at = now(), next_check_at = null where id = %(step)s",
        "chain_steps_outputs_iff_succeeded",
    ),
    ("update chain_steps set provider = null where id = %(step)s", "chain_steps_job_has_provider"),
    ("update chain_steps set seq = -1 where id = %(step)s", "chain_steps_counters_not_negative"),
]


@pytest.mark.parametrize(("statement", "constraint"), VIOLATIONS, ids=[c for _, c in VIOLATIONS])
def test_check_constraints_refuse_broken_rows(
    conn: psycopg.Connection[Any], session_database_url: str, statement: str, constraint: str
) -> None:
    store = PostgresStore(session_database_url, max_size=1)
    try:
        run = store.create_run(_run_request(webhook_url="https://example.com/hook"))["run"]
        step, following = run["steps"]
        taken = store.take_step(run["id"], step["id"], step["seq"], submit_timeout_seconds=60)
        assert taken is not None and taken["action"] == "claimed"
        claimed = taken["step"]
        assert store.record_submission(
            step["id"], claimed["attempt"], f"job-{uuid.uuid4().hex}", {}, 30.0, provider="local"
        )
    finally:
        store.close()
    ids = {"run": run["id"], "step": step["id"], "next": following["id"]}
    with pytest.raises(psycopg.errors.CheckViolation) as caught, conn.transaction():
        conn.execute(statement, ids)
    assert caught.value.diag.constraint_name == constraint


def test_queue_check_constraints_refuse_broken_rows(conn: psycopg.Connection[Any]) -> None:
    conn.execute("""select bc_queue_send('{"queue": "hygiene", "messages": [{"body": {}}]}')""")
    for statement, constraint in (
        ("update bc_queue_messages set receive_count = 1 where queue = 'hygiene'", "bc_queue_messages_received_fields"),
        (
            "update bc_queue_messages set receiver = 7 where queue = 'hygiene'",
            "bc_queue_messages_receiver_has_receipt",
        ),
    ):
        with pytest.raises(psycopg.errors.CheckViolation) as caught, conn.transaction():
            conn.execute(statement)
        assert caught.value.diag.constraint_name == constraint


# helpers --------------------------------------------------------------------------------------------------------------


def _has(conn: psycopg.Connection[Any], query: str, *args: str) -> bool:
    row = conn.execute(query, args).fetchone()
    return bool(row and row[0])


def _may_execute(conn: psycopg.Connection[Any], role: str, signature: str) -> bool:
    return _has(conn, "select has_function_privilege(%s, %s::regprocedure, 'execute')", role, signature)


def _public_may_execute(conn: psycopg.Connection[Any], signature: str) -> bool:
    return _has(
        conn,
        "select exists (select from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
        "where p.oid = %s::regprocedure and a.grantee = 0 and a.privilege_type = 'EXECUTE')",
        signature,
    )


def _run_request(webhook_url: str | None = None) -> dict[str, Any]:
    run_id = str(uuid.uuid4())
    return {
        "id": run_id,
        "owner_id": f"test:{uuid.uuid4().hex}",
        "chain_slug": "hygiene",
        "chain_version": "1",
        "mode": "local",
        "input": {},
        "webhook_url": webhook_url,
        "request_hash": "h",
        "run_timeout_seconds": 3600,
        "callback_event_id": f"evt_{run_id}",
        "steps": [
            {
                "step_index": 0,
                "step_key": "image",
                "step_kind": "image",
                "model_identifier": "local/image",
                "depends_on": [],
                "params": {},
            },
            {
                "step_index": 1,
                "step_key": "video",
                "step_kind": "video",
                "model_identifier": "local/video",
                "depends_on": ["image"],
                "params": {},
            },
        ],
    }


LIST_CASES = [
    {},
    {"status": "failed"},
    {"chain_slug": "chain3"},
    {"status": "running", "chain_slug": "chain3"},
    {"cursor_created_at": "2026-11-30T12:00:00+00:00", "cursor_id": "7d8d3a8e-0000-4000-8000-000000000000"},
    {
        "status": "succeeded",
        "cursor_created_at": "2026-11-30T12:00:00+00:00",
        "cursor_id": "7d8d3a8e-0000-4000-8000-000000000000",
    },
]


def _scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "Scan" in plan.get("Node Type", ""):
        yield plan
    for child in plan.get("Plans", []):
        yield from _scans(child)


@pytest.mark.parametrize("plan_mode", ["force_generic_plan", "force_custom_plan"])
@pytest.mark.parametrize("filters", LIST_CASES, ids=lambda f: "+".join(f) or "no-filter")
def test_run_list_reads_by_index_conditions_under_any_plan(
    conn: psycopg.Connection[Any], plan_mode: str, filters: dict[str, Any]
) -> None:
    """bc_list_runs, planned as the server may cache it (a generic plan knows none of the argument values): every
    filter and the cursor are conditions of an index scan on chain_runs, never a filter over the rows it reads, so a
    page costs the same at any history size. The plan is made over a history of 30,000 runs (50 owners, every status
    and three chains; rolled back with the test) with fresh statistics, so the planner weighs the indexes as it would
    in production; sequential scans are off, as a history large enough for the point makes them."""
    conn.execute(
        "insert into public.chain_runs (id, owner_id, chain_slug, chain_version, mode, status, input, request_hash,"
        " deadline_at, callback_event_id, completed_at, output, created_at)"
        " select gen_random_uuid(), 'plan:' || (i % 50), 'chain' || (1 + i % 3), '1', 'local',"
        " (array['queued', 'running', 'succeeded', 'failed', 'canceled'])[1 + i % 5], '{}', 'h', now(),"
        " 'evt_plan_' || i, case when i % 5 >= 2 then now() end, case when i % 5 = 2 then '{}'::jsonb end,"
        " now() - i * interval '1 second' from generate_series(1, 30000) i"
    )
    conn.execute("analyze public.chain_runs")
    body = conn.execute(
        "select prosrc from pg_proc where proname = 'bc_list_runs' and pronamespace = 'public'::regnamespace"
    ).fetchone()
    assert body is not None
    statement = re.sub(r"\bp\b(?=\s*(->|\?))", "$1", body[0]).strip().rstrip(";")
    conn.execute(f"set local plan_cache_mode = {plan_mode}")
    conn.execute("set local enable_seqscan = off")
    conn.execute("prepare list_page(jsonb) as " + statement)
    try:
        params = json.dumps({"owner_id": "plan:7", "limit": 21, **filters})
        row = conn.execute(f"explain (format json) execute list_page('{params}'::jsonb)").fetchone()
    finally:
        conn.execute("deallocate list_page")
    assert row is not None
    scans = [s for s in _scans(row[0][0]["Plan"]) if s.get("Relation Name") == "chain_runs"]
    assert scans
    for scan in scans:
        assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan["Node Type"]
        assert "Filter" not in scan, scan.get("Filter")
        condition = scan["Index Cond"]
        assert "owner_id = " in condition and "status = " in condition, condition
        assert "ROW(created_at, id) < ROW(" in condition, condition
        if "chain_slug" in filters and plan_mode == "force_custom_plan":  # a generic plan holds every branch
            assert "chain_slug = " in condition, condition


def test_sweep_checks_for_nothing_due_by_index_probes_with_no_parameters(conn: psycopg.Connection[Any]) -> None:
    """bc_sweep's first statement (20261202040100_sweep_nothing_due.sql) has no parameters, so plpgsql plans it once
    per session under any plan mode (it runs here as written, with nothing bound), and it reads one entry from each
    rule's index: every scan an index scan under a Limit of 1 (min() by its index), never a filter over rows."""
    body = conn.execute(
        "select prosrc from pg_proc where proname = 'bc_sweep' and pronamespace = 'public'::regnamespace"
    ).fetchone()
    assert body is not None
    found = re.search(r"select \(select min\(deadline_at\).*?(?=\s+into v_deadline)", body[0], re.DOTALL)
    assert found is not None
    conn.execute("set local enable_seqscan = off")
    row = conn.execute(f"explain (format json) {found.group(0)}").fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    scans = list(_scans(plan))
    assert len(scans) == 6
    for scan in scans:
        assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan["Node Type"]
        assert "Filter" not in scan, scan.get("Filter")

    def limits(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if node.get("Node Type") == "Limit":
            yield node
        for child in node.get("Plans", []):
            yield from limits(child)

    assert len(list(limits(plan))) == 6


def test_list_and_purge_keep_their_generic_plans(conn: psycopg.Connection[Any]) -> None:
    """20261202040200_list_and_purge_generic_plans.sql pins these to generic plans (index ranges, checked above): a
    later `create or replace` without the setting would drop it silently and bring back a plan per call."""
    rows = conn.execute(
        "select p.oid::regprocedure::text, p.proconfig from pg_proc p"
        " where p.oid = any(array['public.bc_list_runs(jsonb)', 'babychain_private.bc_runs_as_json(uuid[])',"
        " 'public.bc_purge_expired_runs(jsonb)']::regprocedure[])"
    ).fetchall()
    assert len(rows) == 3
    for signature, config in rows:
        assert "plan_cache_mode=force_generic_plan" in (config or []), signature


# The step transitions' statements that read or change a run, as plpgsql runs them: the variables they use become
# parameters of these types (a generic plan knows none of the values).
_TRANSITION_PARAMS = {
    "p": ("jsonb", 1),
    "v_step.run_id": ("uuid", 2),
    "p_run_id": ("uuid", 2),
    "v_step.step_key": ("text", 3),
    "v_next.step_key": ("text", 3),
    "p_status": ("text", 3),
    "p_code": ("text", 4),
    "p_message": ("text", 5),
    "p_output": ("jsonb", 6),
    "v_claim": ("boolean", 7),
}


def _transition_statements(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Every statement of bc_take_step, bc_complete_step, bc_fail_step and bc_finish_run that names chain_runs,
    with its plpgsql variables as $n parameters and without its INTO."""
    rows = conn.execute(
        "select proname, prosrc from pg_proc where proname = any(%s)",
        (["bc_take_step", "bc_complete_step", "bc_fail_step", "bc_finish_run"],),
    ).fetchall()
    assert len(rows) == 4
    found = []
    names = "|".join(re.escape(v) for v in sorted(_TRANSITION_PARAMS, key=len, reverse=True))
    for name, source in rows:
        body = re.sub(r"--[^\n]*", "", source)
        body = re.sub(
            r"(?<!end )\b(?:if|elsif)\b.*?\bthen\b", ";", body, flags=re.DOTALL
        )  # plpgsql conditions: not SQL
        for chunk in body.split(";"):
            start = re.search(r"\b(?:update|select|with)\b", chunk)
            if start is None or "public.chain_runs" not in chunk:
                continue
            statement = chunk[start.start() :]
            statement = re.sub(r"\binto\s+v_\w+\b", "", statement)
            statement = re.sub(
                rf"(?<![\w.])({names})(?!\w)", lambda m: f"${_TRANSITION_PARAMS[m.group(1)][1]}", statement
            )
            found.append((name, statement))
    return found


def test_the_transitions_find_a_run_by_its_primary_key(conn: psycopg.Connection[Any]) -> None:
    """20261202050000_runs_by_primary_key.sql: a transition reads or changes its run by id, and the planner takes the
    primary key for it under a generic plan even where chain_runs_active_deadline (a partial index on the active
    runs) looks tiny, as on a young database or after an ANALYZE that saw few active runs. (With the index's
    predicate, `status in ('queued', 'running')`, beside the id, it scanned that index instead: every active run's
    entry and every ended run's not yet vacuumed.) Here: 2,000 ended runs and one active, fresh statistics."""
    conn.execute(
        "insert into public.chain_runs (id, owner_id, chain_slug, chain_version, mode, status, input, request_hash,"
        " deadline_at, callback_event_id, completed_at, created_at)"
        " select gen_random_uuid(), 'pk:' || i, 'chain1', '1', 'local', case when i = 0 then 'running' else 'failed'"
        " end, '{}', 'h', now(), 'evt_pk_' || i, case when i > 0 then now() end, now() from generate_series(0, 2000) i"
    )
    conn.execute("analyze public.chain_runs")
    conn.execute("set local plan_cache_mode = force_generic_plan")
    types = ", ".join(t for t, _ in sorted(set(_TRANSITION_PARAMS.values()), key=lambda v: v[1]))
    statements = _transition_statements(conn)
    assert {name for name, _ in statements} == {"bc_take_step", "bc_complete_step", "bc_fail_step", "bc_finish_run"}
    for name, statement in statements:
        conn.execute(f"prepare transition_statement({types}) as {statement}")
        try:
            row = conn.execute(
                "explain (format json) execute transition_statement(null, null, null, null, null, null, null)"
            ).fetchone()
        finally:
            conn.execute("deallocate transition_statement")
        assert row is not None
        scans = [s for s in _scans(row[0][0]["Plan"]) if s.get("Relation Name") == "chain_runs"]
        assert scans, (name, statement)
        for scan in scans:
            assert scan.get("Index Name") == "chain_runs_pkey", (name, scan.get("Index Name"), statement)
