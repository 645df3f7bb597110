"""The history benchmark: every query the engine runs, timed and explained over a large history of runs.

Starts a throwaway embedded Postgres with the project's migrations and fills it with set-based SQL
(generate_series): N runs (30% of them belong to one big caller, the rest to 1,000 others; chain1/chain2 45% each,
chain3 10%; succeeded 88%, failed 10%, canceled 2%, and 0.2% still active), three steps per run in the state their
run implies, a callback delivery per run with a webhook (every tenth has a failed attempt before it), a provider
webhook receipt per such run. Foreign keys are not checked while loading (session_replication_role = replica; the
rows are consistent by construction), and the indexes that back no constraint are built after the load; then VACUUM
ANALYZE.

Then it calls the real SQL functions (`select bc_x(%s::jsonb)`, as the store adapter does: no server-side prepared
statement), each `--calls` times with varying arguments, and reports the median and range in ms of the whole call
from Python, and the server's own time in the function (track_functions). The repeatable ones first run once with
each argument, timed apart as "first call": at 1,000,000 runs their pages are often in neither shared buffers
(128 MB) nor the OS cache (this VM pages out file pages idle for a minute), so that round measures disk reads:
  sweeper      bc_sweep with nothing overdue and with every active step due (rolled back), bc_purge_expired_runs
               (1-day retention, the sweeper's batch, rolled back), bc_end_callback_leases, bc_queue_receive on an
               empty queue
  list         bc_list_runs for the big caller: no filter, each status, each chain, status + chain (one that matches
               little), a cursor deep in the caller's history; and a small caller
  get          bc_get_run, bc_get_step, bc_find_step_by_job, bc_list_callback_deliveries, bc_authenticate_key
  create       bc_create_run (three steps, an idempotency key), bc_record_webhook_receipt
  transitions  bc_take_step (claim), bc_record_submission, bc_take_step (check), bc_defer_step, bc_complete_step
               (claiming the next step) on the runs just created, as the executor calls them; then bc_cancel_run
The repeatable ones (all but create and transitions) are then called as many times again with the session's
plan_cache_mode forced to custom and to generic plans (the functions' own statements follow it), and WAL bytes per
call are read from the server's insert position.
How each is answered: the last of those calls also reads, in its own transaction, the server's per-transaction
counters (pg_stat_xact_user_tables, pg_stat_get_xact_numscans of each index; flushed just before with
pg_stat_force_next_flush): which tables were sequentially scanned (and how many rows that read), which indexes were
used and how many index tuples they returned. For the functions written in SQL the body is also run under
EXPLAIN (ANALYZE, BUFFERS) as a prepared statement (rolled back), with a custom and with a generic plan (SQL
functions' plans are cached since PostgreSQL 18, so a caller can get either): its scan nodes are listed (Index Only
Scan, Index Scan, Bitmap Heap Scan, Seq Scan), with the rows they read (returned plus removed by a filter), the
conditions they only filtered by, and the time of the top node's input (for a list: finding the page before its JSON
is built). A sequential scan of a table of more than 1,000 rows is marked SEQ SCAN.

Usage: python bench/history.py [--runs 50000] [--calls 20] [--json] [--migrations DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from babychain.engine.sweeper import PURGE_BATCH, PURGE_RECEIPT_BATCH
from babychain.store.embedded import start_embedded_postgres
from babychain.store.migrations import apply_migrations

BIG = "key:big"
STEP_KEYS = ("text_to_image", "image_to_image", "image_to_video")
MODELS = ("bfl/flux-2-flex", "bfl/flux-kontext-pro", "bytedance/seedance-1.5-pro")
LARGE_TABLE_ROWS = 1000  # a sequential scan of a table with more rows than this is reported as one

GENERATE_RUNS = """
insert into public.chain_runs (id, owner_id, chain_slug, chain_version, mode, status, input, metadata, webhook_url,
    idempotency_key, request_hash, output, error_code, error_message, deadline_at,
    callback_event_id, callback_status, callback_attempts, created_at, updated_at, completed_at)
select md5('run' || i)::uuid,
       case when i %% 10 < 3 then 'key:big' else 'key:o' || (i %% 1000) end,
       chain, '1', 'local', status,
       jsonb_build_object('chain_models', jsonb_build_object('text_to_image_model', 'bfl/flux-2-flex',
                          'image_to_video_model', 'bytedance/seedance-1.5-pro'),
                          'text_to_image_params', jsonb_build_object('prompt', 'a lighthouse at dawn, take ' || i,
                          'width', 1024, 'height', 768, 'seed', i)),
       '{}'::jsonb,
       case when webhook then 'https://receiver.example/hooks/' || (i %% 100) end,
       case when i %% 4 = 0 then 'idem-' || i end,
       md5('req' || i),
       case when status = 'succeeded' then jsonb_build_object('final_step_key', 'image_to_video',
            'output_files', jsonb_build_array('https://files.example/' || i || '.mp4')) end,
       case status when 'failed' then 'provider_failed' when 'canceled' then 'client_canceled' end,
       case status when 'failed' then 'The provider failed.' when 'canceled' then 'Chain run was canceled.' end,
       case when status in ('queued', 'running') then now() + interval '1 hour' else created + interval '1 hour' end,
       'evt_' || i,
       case when not webhook then null when status in ('queued', 'running') then 'waiting' else 'delivered' end,
       case when webhook and status not in ('queued', 'running') then 1 + (i %% 10 = 0)::int else 0 end,
       created, created + interval '5 seconds',
       case when status not in ('queued', 'running') then created + interval '5 seconds' end
  from (
    select i,
           now() - (%(n)s - i) * interval '5 seconds' as created,
           case when i %% 100 < 45 then 'chain1' when i %% 100 < 90 then 'chain2' else 'chain3' end as chain,
           case when i %% 500 = 0 then 'running' when i %% 500 = 1 then 'queued'
                when (i / 7) %% 50 = 3 then 'canceled' when (i / 3) %% 10 = 1 then 'failed'
                else 'succeeded' end as status,
           i %% 2 = 0 as webhook
      from generate_series(1, %(n)s) i
  ) g
"""

GENERATE_STEPS = """
insert into public.chain_steps (run_id, step_index, step_key, step_kind, model_identifier, depends_on, status,
    params, request_params, input_files, output_files, provider, provider_job_id, attempt, seq, next_check_at,
    error_code, error_message, started_at, completed_at, created_at, updated_at)
select r.id, k, (%(keys)s::text[])[k + 1], case when k = 2 then 'video' else 'image' end, (%(models)s::text[])[k + 1],
       case when k = 0 then '{}'::text[] else array[(%(keys)s::text[])[k]] end,
       st,
       '{"prompt": "p"}'::jsonb,
       case when st not in ('queued', 'skipped') then '{"prompt": "p"}'::jsonb end,
       case when k > 0 and st not in ('queued', 'skipped') then '["https://files.example/in.png"]'::jsonb end,
       case when st = 'succeeded' then '["https://files.example/out.png"]'::jsonb end,
       case when st not in ('queued', 'skipped') then 'local' end,
       case when st not in ('queued', 'skipped') then md5(r.id::text || k) end,
       case when st in ('queued', 'skipped') then 0 else 1 end,
       case when st in ('queued', 'skipped') then 0 else 4 end,
       case when st = 'running' or (st = 'queued' and k = 0) then now() + interval '1 hour' end,
       case when st = 'failed' then 'provider_failed' end,
       case when st = 'failed' then 'The provider failed.' end,
       case when st = 'running' then now() - interval '1 minute'
            when st not in ('queued', 'skipped') then r.created_at + interval '1 second' end,
       case when st in ('succeeded', 'failed', 'canceled') then r.created_at + interval '2 seconds' end,
       r.created_at, r.updated_at
  from public.chain_runs r
  cross join generate_series(0, 2) k
  cross join lateral (select case
        when r.status = 'succeeded' then 'succeeded'
        when r.status in ('failed', 'canceled') then case when k = 0 then r.status else 'skipped' end
        when r.status = 'running' then case when k = 0 then 'succeeded' when k = 1 then 'running' else 'queued' end
        else 'queued' end as st) s
"""

# Every submission that did not finish at once records its job id for webhook lookups (bc_record_submission).
GENERATE_STEP_JOBS = """
insert into public.chain_step_jobs (provider, provider_job_id, step_id)
select provider, provider_job_id, id from public.chain_steps where provider_job_id is not null
"""

# The sweeper's copy of the times of the steps it may pick, running or queued with a next check (the trigger that
# keeps it does not fire while loading).
GENERATE_STEP_TIMERS = """
insert into babychain_private.chain_step_timers (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
select id, run_id, status, step_kind, next_check_at, started_at, provider_job_id is not null
  from public.chain_steps where status = 'running' or (status = 'queued' and next_check_at is not null)
"""

GENERATE_DELIVERIES = """
insert into public.callback_deliveries (run_id, event_id, attempt, outcome, status_code, duration_ms, created_at)
select r.id, r.callback_event_id, a, case when a = r.callback_attempts then 'delivered' else 'failed' end,
       case when a = r.callback_attempts then 200 else 503 end, 40, r.completed_at + a * interval '1 second'
  from public.chain_runs r cross join generate_series(1, 2) a
 where r.callback_status = 'delivered' and a <= r.callback_attempts
"""

GENERATE_RECEIPTS = """
insert into public.provider_webhook_receipts (provider, receipt_id, received_at)
select 'bfl', 'rcpt-' || md5(r.id::text), r.created_at + interval '1 second'
  from public.chain_runs r where r.webhook_url is not null
"""


def generate(conn: psycopg.Connection[Any], n: int) -> dict[str, float]:
    """Fills the tables; returns seconds per phase."""
    timings: dict[str, float] = {}
    conn.execute("set synchronous_commit = off")
    conn.execute("set session_replication_role = replica")  # no FK triggers while loading
    conn.execute("set maintenance_work_mem = '256MB'")
    phases: list[tuple[str, str, dict[str, Any]]] = [
        ("runs", GENERATE_RUNS, {"n": n}),
        ("steps", GENERATE_STEPS, {"keys": list(STEP_KEYS), "models": list(MODELS)}),
        ("step jobs", GENERATE_STEP_JOBS, {}),
        ("step timers", GENERATE_STEP_TIMERS, {}),
        ("deliveries", GENERATE_DELIVERIES, {}),
        ("receipts", GENERATE_RECEIPTS, {}),
    ]
    # Indexes that back no constraint are built once after loading (a sorted build) instead of row by row during it:
    # the same indexes, in a fraction of the time. Unique and primary-key indexes stay (they are the constraints).
    secondary = conn.execute(
        "select i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) from pg_index i "
        "join pg_class t on t.oid = i.indrelid join pg_namespace n on n.oid = t.relnamespace "
        "where n.nspname = 'public' and t.relname = any(%s) "
        "and not exists (select from pg_constraint c where c.conindid = i.indexrelid)",
        (["chain_runs", "chain_steps", "callback_deliveries", "provider_webhook_receipts"],),
    ).fetchall()
    for name, _ in secondary:
        conn.execute(f"drop index {name}")
    for name, statement, params in phases:
        started = time.monotonic()
        conn.execute(statement, params or None)
        timings[name] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    for _, definition in secondary:
        conn.execute(definition)
    timings["indexes"] = round(time.monotonic() - started, 2)
    conn.execute("set session_replication_role = origin")
    conn.execute(
        "insert into public.api_keys (key_prefix, key_hash, name) "
        "select 'bc_k' || i, md5('key' || i), 'key ' || i from generate_series(1, 20) i"
    )
    started = time.monotonic()
    conn.execute("vacuum analyze")
    timings["vacuum_analyze"] = round(time.monotonic() - started, 2)
    return timings


def refresh(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """A kept history, brought to now: its active runs and steps are due in an hour again, as when generated (so
    "nothing overdue" stays true), and the rows the last run's calls left are vacuumed."""
    started = time.monotonic()
    conn.execute(
        "update public.chain_runs set deadline_at = now() + interval '1 hour' where status in ('queued', 'running')"
    )
    conn.execute(
        "update public.chain_steps set next_check_at = now() + interval '1 hour', "
        "started_at = case when status = 'running' then now() - interval '1 minute' else started_at end "
        "where status in ('queued', 'running') and next_check_at is not null"
    )
    conn.execute("vacuum analyze")
    return {"refresh": round(time.monotonic() - started, 2)}


def sizes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    rows = conn.execute(
        """select c.relname, c.relkind, pg_relation_size(c.oid), c.reltuples::bigint
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = 'public' and c.relkind in ('r', 'i') and pg_relation_size(c.oid) > 0
            order by pg_relation_size(c.oid) desc"""
    ).fetchall()
    database = conn.execute("select pg_database_size(current_database())").fetchone()
    return {
        "database_bytes": database[0] if database else None,
        "relations": [
            {"name": r[0], "kind": "index" if r[1] == "i" else "table", "bytes": r[2], "rows": r[3]} for r in rows
        ],
    }


# ------------------------------------------------------------------------------------------------ how it was answered


def read_xact_scans(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What the current transaction scanned so far, from the server's per-transaction counters."""
    seq = conn.execute(
        "select t.relname, t.seq_scan, t.seq_tup_read, u.n_live_tup from pg_stat_xact_user_tables t "
        "join pg_stat_user_tables u using (relid) where t.seq_scan > 0"
    ).fetchall()
    idx = conn.execute(
        "select c.relname, pg_stat_get_xact_numscans(c.oid), pg_stat_get_xact_tuples_returned(c.oid) "
        "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind = 'i' and n.nspname in ('public', 'babychain_private') "
        "and pg_stat_get_xact_numscans(c.oid) > 0"
    ).fetchall()
    return {
        "seq_scans": [{"table": r[0], "scans": r[1], "rows_read": r[2], "table_rows": r[3]} for r in seq],
        "index_scans": [{"index": r[0], "scans": r[1], "tuples_read": r[2]} for r in idx],
    }


def scan_nodes(plan: dict[str, Any]) -> list[str]:
    """The scan nodes of an EXPLAIN (FORMAT JSON) plan tree that ran, as `Node Type on relation using index`."""
    return [n["text"] for n in scan_details(plan) if n["loops"]]


def scan_details(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Each scan node of an EXPLAIN (ANALYZE, FORMAT JSON) plan tree: its text, whether it ran (an arm behind a false
    one-time filter never does), the rows it returned and removed by a filter, and which of its conditions the index
    took (`Index Cond`) and which it only filtered (`Filter`)."""
    found = []
    if "Scan" in plan.get("Node Type", ""):
        text = plan["Node Type"]
        if plan.get("Relation Name"):
            text += f" on {plan['Relation Name']}"
        if plan.get("Index Name"):
            text += f" using {plan['Index Name']}"
        loops = plan.get("Actual Loops", 0)
        found.append(
            {
                "text": text,
                "loops": loops,
                "rows": round(plan.get("Actual Rows", 0) * loops),
                "removed": round(plan.get("Rows Removed by Filter", 0) * loops),
                "heap_fetches": plan.get("Heap Fetches", 0),
                "index_cond": plan.get("Index Cond"),
                "filter": plan.get("Filter"),
            }
        )
    for child in plan.get("Plans", []):
        found += scan_details(child)
    return found


def classify(nodes: list[str], scans: dict[str, Any], table_rows: dict[str, int]) -> str:
    """A verdict: SEQ SCAN (a table of more than LARGE_TABLE_ROWS rows was read sequentially), index-only, index
    (index or bitmap scans), or seq (small table)."""
    big = {t for t, rows in table_rows.items() if rows > LARGE_TABLE_ROWS}
    seq_tables = {s["table"] for s in scans.get("seq_scans", [])}
    seq_tables |= {n.split(" on ", 1)[1].split()[0] for n in nodes if n.startswith("Seq Scan on ")}
    if seq_tables & big:
        return "SEQ SCAN " + ", ".join(sorted(seq_tables & big))
    if seq_tables:
        return "seq (small table)"
    relation_nodes = [n for n in nodes if " on " in n or " using " in n]
    if relation_nodes and all(n.startswith("Index Only Scan") for n in relation_nodes):
        return "index-only"
    if relation_nodes or scans.get("index_scans"):
        return "index"
    return "no scan"


def sql_body(conn: psycopg.Connection[Any], function: str) -> str | None:
    """The body of a `language sql` function in public, with its argument `p` as $1; None for plpgsql."""
    row = conn.execute(
        "select p.prosrc, l.lanname from pg_proc p join pg_language l on l.oid = p.prolang "
        "join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'public' and p.proname = %s",
        (function,),
    ).fetchone()
    if row is None or row[1] != "sql":
        return None
    return re.sub(r"\bp\b(?=\s*(->|\?))", "$1", row[0]).strip().rstrip(";")


def explain(conn: psycopg.Connection[Any], body: str, params: dict[str, Any], generic: bool) -> dict[str, Any]:
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(f"set local plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
            conn.execute("prepare bench_q(jsonb) as " + body)
            row = conn.execute(
                sql.SQL("explain (analyze, buffers, format json) execute bench_q({}::jsonb)").format(
                    sql.Literal(json.dumps(params))
                )
            ).fetchone()
    finally:
        conn.execute("deallocate all")
    assert row is not None
    top = row[0][0]
    plan = top["Plan"]
    details = scan_details(plan)
    # A Subquery Scan reads its subquery's rows, not a relation's: counting it would count those rows twice.
    ran = [d for d in details if d["loops"] and not d["text"].startswith("Subquery Scan")]
    return {
        "execution_ms": round(top.get("Execution Time", 0.0), 3),
        "planning_ms": round(top.get("Planning Time", 0.0), 3),
        "nodes": scan_nodes(plan),
        "shared_hit": plan.get("Shared Hit Blocks", 0),
        "shared_read": plan.get("Shared Read Blocks", 0),
        # How long the top node's input took: for a list, finding the page's rows, before their JSON is built.
        "input_ms": round(plan["Plans"][0].get("Actual Total Time", 0.0), 3) if plan.get("Plans") else None,
        # Rows the scans that ran returned plus those their filters threw away: what the plan read.
        "rows_read": sum(d["rows"] + d["removed"] for d in ran),
        "scans_ran": len(ran),
        "scans_not_run": len(details) - len(ran),
        # A scan condition left as a Filter on a large table reads rows it then discards (e.g. a cursor not taken
        # as an index condition).
        "filters": sorted({d["filter"] for d in ran if d["filter"]}),
        "index_conds": sorted({d["index_cond"] for d in ran if d["index_cond"]}),
    }


# ------------------------------------------------------------------------------------------------ the queries


class Bench:
    def __init__(self, conn: psycopg.Connection[Any], calls: int, n: int) -> None:
        self.conn = conn
        self.calls = calls
        self.n = n
        self.results: list[dict[str, Any]] = []
        self.rng = random.Random(7)
        conn.execute("set track_functions = 'all'")  # the server's time in each function, per call
        self.table_rows = {
            name: rows
            for name, rows in conn.execute(
                "select c.relname, c.reltuples::bigint from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname in ('public', 'babychain_private') and c.relkind = 'r'"
            ).fetchall()
        }

    def call(self, function: str, params: dict[str, Any]) -> Any:
        row = self.conn.execute(f"select public.{function}(%s::jsonb)", (Jsonb(params),)).fetchone()
        return row[0] if row else None

    def time(
        self,
        group: str,
        label: str,
        function: str,
        make: Callable[[int], dict[str, Any]],
        *,
        rollback: bool = False,
        plan_modes: bool = True,
    ) -> list[Any]:
        """Calls `function` with make(i) for i in range(calls), each its own transaction (rolled back when asked).

        The last call's transaction also reads the server's per-transaction scan counters before it ends; the body of
        a SQL function is then explained with the last call's arguments (rolled back). With `plan_modes` (calls that
        can be repeated: reads, and writes that are rolled back) the calls are then made again with the session's
        plan_cache_mode forced to custom and to generic plans: the function's own statements are planned that way
        (SQL functions' plans are cached since PostgreSQL 18, plpgsql's always were), so a caller that meets either
        plan is timed. WAL bytes per call are read from the server's insert position around the first round.
        """
        first: list[float] = []
        if plan_modes:
            # The first call with each argument reads pages that may not be in shared buffers (128 MB here, a few GB
            # of history) nor in the OS cache (this VM pages out file pages idle for a minute): a disk read, not the
            # query. Timed apart, as "first call"; the figures below are calls on cached pages.
            for i in range(self.calls):
                with self.conn.transaction(force_rollback=True):
                    started = time.perf_counter()
                    self.call(function, make(i))
                    first.append((time.perf_counter() - started) * 1000)
        times, answers, server = [], [], []
        scans: dict[str, Any] = {}
        wal_start = self.wal_lsn()
        for i in range(self.calls):
            params = make(i)
            if i == self.calls - 1:
                # The per-transaction counters are the backend's unflushed ones: flush them first (when it goes idle).
                self.conn.execute("select pg_stat_force_next_flush()")
            with self.conn.transaction(force_rollback=rollback):
                # The server's own time in the function (track_functions; the backend's counters not yet flushed,
                # which it flushes only outside a transaction): the whole call minus this is the round trip, the top
                # statement's parse and plan, and the client's decode.
                before = self.function_ms(function)
                started = time.perf_counter()
                answers.append(self.call(function, params))
                times.append((time.perf_counter() - started) * 1000)
                server.append(self.function_ms(function) - before)
                if i == self.calls - 1:
                    scans = read_xact_scans(self.conn)
        wal_bytes = self.wal_lsn() - wal_start
        entry: dict[str, Any] = {
            "group": group,
            "label": label,
            "function": function,
            "median_ms": round(statistics.median(times), 3),
            "min_ms": round(min(times), 3),
            "max_ms": round(max(times), 3),
            "calls": len(times),
            "server_ms": round(statistics.median(server), 3),
            "first_call_ms": round(statistics.median(first), 3) if first else None,
            "wal_bytes_per_call": round(wal_bytes / len(times)),
            "scans": scans,
        }
        if plan_modes:
            for mode in ("custom", "generic"):
                mode_times = []
                self.conn.execute(f"set plan_cache_mode = force_{mode}_plan")
                try:
                    for i in range(self.calls):
                        with self.conn.transaction(force_rollback=rollback):
                            started = time.perf_counter()
                            self.call(function, make(i))
                            mode_times.append((time.perf_counter() - started) * 1000)
                finally:
                    self.conn.execute("reset plan_cache_mode")
                entry[f"{mode}_ms"] = {
                    "median": round(statistics.median(mode_times), 3),
                    "min": round(min(mode_times), 3),
                    "max": round(max(mode_times), 3),
                }
        body = sql_body(self.conn, function)
        if body is not None:
            entry["custom_plan"] = explain(self.conn, body, make(self.calls - 1), generic=False)
            entry["generic_plan"] = explain(self.conn, body, make(self.calls - 1), generic=True)
        entry["verdict"] = classify([], scans, self.table_rows)
        for plan in ("custom_plan", "generic_plan"):
            if plan in entry:
                entry[plan]["verdict"] = classify(entry[plan]["nodes"], {}, self.table_rows)
        entry["index_tuples_read"] = sum(s["tuples_read"] for s in scans.get("index_scans", []))
        entry["seq_rows_read"] = sum(s["rows_read"] for s in scans.get("seq_scans", []))
        self.results.append(entry)
        return answers

    def function_ms(self, function: str) -> float:
        row = self.conn.execute(
            "select coalesce(sum(total_time), 0) from pg_stat_xact_user_functions "
            "where schemaname = 'public' and funcname = %s",
            (function,),
        ).fetchone()
        return float(row[0]) if row else 0.0

    def wal_lsn(self) -> int:
        row = self.conn.execute("select pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        return int(row[0]) if row else 0


def run_queries(conn: psycopg.Connection[Any], calls: int, n: int, clean_up: bool = False) -> list[dict[str, Any]]:
    """`clean_up`: delete the runs and receipts the calls made (a kept history stays the same from run to run)."""
    b = Bench(conn, calls, n)
    rng = b.rng
    big_ids = [r[0] for r in conn.execute("select id::text from chain_runs where owner_id = %s limit 5000", (BIG,))]
    rng.shuffle(big_ids)
    steps = conn.execute(
        "select id::text, provider_job_id, run_id::text from chain_steps where provider_job_id is not null limit 2000"
    ).fetchall()
    big_count = conn.execute("select count(*) from chain_runs where owner_id = %s", (BIG,)).fetchone()[0]  # type: ignore[index]
    depth = min(big_count - 1, max(1, n // 5))
    cursor = conn.execute(
        "select created_at::text, id::text from chain_runs where owner_id = %s order by created_at desc, id desc "
        "offset %s limit 1",
        (BIG, depth),
    ).fetchone()
    assert cursor is not None
    pick = lambda xs, i: xs[i % len(xs)]  # noqa: E731

    # sweeper
    sweep = {
        "grace_seconds": 5,
        "limit": 500,
        "image_step_timeout_seconds": 900,
        "video_step_timeout_seconds": 1800,
        "callback_stale_seconds": 300,
    }
    b.time("sweeper", "bc_sweep (nothing overdue)", "bc_sweep", lambda i: sweep, rollback=True)
    # A negative grace makes every active step's next check overdue: the most the sweeper has to return at once.
    b.time(
        "sweeper",
        "bc_sweep, every active step due (limit 500, rolled back)",
        "bc_sweep",
        lambda i: {**sweep, "grace_seconds": -7200},
        rollback=True,
    )
    # As the sweeper calls it. A 1-day window, so that the quick mode's history (50,000 runs, ~3 days) has runs to
    # delete too (a 30-day one found none there).
    b.time(
        "sweeper",
        f"bc_purge_expired_runs, 1 day, batch {PURGE_BATCH} (rolled back)",
        "bc_purge_expired_runs",
        lambda i: {"retention_days": 1, "limit": PURGE_BATCH, "receipt_limit": PURGE_RECEIPT_BATCH},
        rollback=True,
    )
    b.time(
        "sweeper",
        "bc_end_callback_leases",
        "bc_end_callback_leases",
        lambda i: {"host": "bench", "live_pids": ["1"], "max_attempts": 8},
    )
    b.time(
        "sweeper",
        "bc_queue_receive, empty queue",
        "bc_queue_receive",
        lambda i: {
            "queue": "steps",
            "max_messages": 1,
            "max_receives": 5,
            "visibility_timeout_seconds": 30,
            "receiver": 1,
        },
    )

    # list
    def lister(**filters: Any) -> Callable[[int], dict[str, Any]]:
        return lambda i: {"owner_id": BIG, "limit": 20, **filters}

    b.time("list", "list, no filter", "bc_list_runs", lister())
    for status in ("succeeded", "failed", "canceled", "running"):
        b.time("list", f"list, status={status}", "bc_list_runs", lister(status=status))
    for chain in ("chain2", "chain3"):
        b.time("list", f"list, chain={chain}", "bc_list_runs", lister(chain_slug=chain))
    b.time("list", "list, status=failed + chain=chain3", "bc_list_runs", lister(status="failed", chain_slug="chain3"))
    b.time(
        "list",
        "list, status=running + chain=chain3 (matches little)",
        "bc_list_runs",
        lister(status="running", chain_slug="chain3"),
    )
    b.time(
        "list",
        f"list, cursor at depth {depth:,}",
        "bc_list_runs",
        lister(cursor_created_at=cursor[0], cursor_id=cursor[1]),
    )
    b.time(
        "list",
        f"list, cursor at depth {depth:,} + status=failed",
        "bc_list_runs",
        lister(cursor_created_at=cursor[0], cursor_id=cursor[1], status="failed"),
    )
    b.time("list", "list, a small caller", "bc_list_runs", lambda i: {"owner_id": "key:o7", "limit": 20})

    # get
    b.time("get", "bc_get_run", "bc_get_run", lambda i: {"run_id": pick(big_ids, i), "owner_id": BIG})
    b.time("get", "bc_get_step", "bc_get_step", lambda i: {"step_id": pick(steps, i)[0]})
    b.time(
        "get",
        "bc_find_step_by_job",
        "bc_find_step_by_job",
        lambda i: {"provider": "local", "provider_job_id": pick(steps, i)[1]},
    )
    b.time("get", "bc_list_callback_deliveries", "bc_list_callback_deliveries", lambda i: {"run_id": pick(big_ids, i)})
    hashes = [hashlib.md5(f"key{k}".encode()).hexdigest() for k in range(1, 21)]
    b.time("get", "bc_authenticate_key", "bc_authenticate_key", lambda i: {"key_hash": pick(hashes, i)})

    # create
    new_ids = [str(uuid.uuid4()) for _ in range(calls)]

    def create(i: int) -> dict[str, Any]:
        return {
            "id": new_ids[i],
            "owner_id": BIG,
            "chain_slug": "chain3",
            "chain_version": "1",
            "mode": "local",
            "input": {"prompt": f"bench {i}"},
            "metadata": {},
            "webhook_url": None,
            "idempotency_key": f"bench-{new_ids[i]}",
            "request_hash": "h",
            "run_timeout_seconds": 3600,
            "callback_event_id": f"evt_bench_{i}",
            "estimate": None,
            "steps": [
                {
                    "step_index": k,
                    "step_key": key,
                    "step_kind": "video" if k == 2 else "image",
                    "model_identifier": MODELS[k],
                    "depends_on": [] if k == 0 else [STEP_KEYS[k - 1]],
                    "params": {"prompt": "p"},
                }
                for k, key in enumerate(STEP_KEYS)
            ],
        }

    created = b.time("create", "bc_create_run (3 steps, idempotency key)", "bc_create_run", create, plan_modes=False)
    b.time(
        "create",
        "bc_record_webhook_receipt (new)",
        "bc_record_webhook_receipt",
        lambda i: {"provider": "bfl", "receipt_id": f"bench-{new_ids[i]}"},
        plan_modes=False,
    )

    # transitions, on the runs just created
    first = [c["run"]["steps"][0]["id"] for c in created]

    # As the executor calls them for an asynchronous job: the message claims the step, the submission is recorded,
    # a poll message takes the running step for a check and defers it, the completion claims the next step.
    def take(i: int, step_id: str, seq: int) -> dict[str, Any]:
        return {"run_id": created[i]["run"]["id"], "step_id": step_id, "seq": seq, "submit_timeout_seconds": 60}

    b.time("transition", "bc_take_step (claim)", "bc_take_step", lambda i: take(i, first[i], 0), plan_modes=False)
    b.time(
        "transition",
        "bc_record_submission",
        "bc_record_submission",
        lambda i: {
            "step_id": first[i],
            "attempt": 1,
            "provider_job_id": f"job-{first[i]}",
            "delay_seconds": 1,
            "provider": "local",
            "request_params": {"prompt": "p"},
        },
        plan_modes=False,
    )
    b.time("transition", "bc_take_step (check)", "bc_take_step", lambda i: take(i, first[i], 2), plan_modes=False)
    b.time(
        "transition",
        "bc_defer_step",
        "bc_defer_step",
        lambda i: {"step_id": first[i], "seq": 2, "delay_seconds": 1},
        plan_modes=False,
    )
    b.time(
        "transition",
        "bc_complete_step (claims the next step)",
        "bc_complete_step",
        lambda i: {
            "step_id": first[i],
            "attempt": 1,
            "output_files": ["https://files.example/o.png"],
            "claim_next": {"submit_timeout_seconds": 60},
        },
        plan_modes=False,
    )
    b.time(
        "transition",
        "bc_cancel_run",
        "bc_cancel_run",
        lambda i: {"run_id": created[i]["run"]["id"]},
        plan_modes=False,
    )
    if clean_up:
        conn.execute("delete from public.chain_runs where id = any(%s::uuid[])", (new_ids,))
        conn.execute(
            "delete from public.provider_webhook_receipts where receipt_id = any(%s)",
            ([f"bench-{i}" for i in new_ids],),
        )
    return b.results


def run(n: int, calls: int, migrations: Path | None = None, keep: Path | None = None) -> dict[str, Any]:
    """`migrations`: another folder of migrations to measure (e.g. an older commit's, for a before/after).
    `keep`: a folder for the database that outlives the run; a later run with the same `n` reuses its history (only
    migrations it has not seen are applied), so one can iterate on a migration without generating again."""
    with tempfile.TemporaryDirectory(prefix="bc-history-") as tmp:
        folder = keep if keep is not None else Path(tmp) / "pg"
        dsn, server = start_embedded_postgres(folder, cleanup_mode="stop" if keep is not None else "delete")
        try:
            applied = apply_migrations(dsn, migrations) if migrations else apply_migrations(dsn)
            # As the engine's store calls: autocommit, and no server-side prepared statements (psycopg would prepare
            # a statement it saw 5 times; store/postgres.py sends each call as an unnamed statement).
            with psycopg.connect(
                dsn, autocommit=True, prepare_threshold=None, application_name="bench-history"
            ) as conn:
                kept = conn.execute("select current_setting('bench.history_runs', true)").fetchone()[0]  # type: ignore[index]
                if kept and int(kept) != n:
                    raise SystemExit(f"{folder} holds a history of {int(kept):,} runs, not {n:,}: use another folder")
                started = time.monotonic()
                timings = generate(conn, n) if not kept else refresh(conn)
                if keep is not None and not kept:
                    # Read by the next run's connections: the history is there.
                    conn.execute(
                        sql.SQL("alter database {} set bench.history_runs = {}").format(
                            sql.Identifier(conn.info.dbname), sql.Literal(str(n))
                        )
                    )
                generate_seconds = round(time.monotonic() - started, 1)
                size = sizes(conn)
                queries = run_queries(conn, calls, n, clean_up=keep is not None)
                version = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
        finally:
            server.cleanup()
    return {
        "runs": n,
        "calls": calls,
        "generate_seconds": generate_seconds,
        "generate_phases": timings,
        "sizes": size,
        "queries": queries,
        "server_version": version,
        "migrations": applied,
    }


def print_result(result: dict[str, Any]) -> None:
    print(
        f"history: {result['runs']:,} runs generated in {result['generate_seconds']} s "
        f"{result['generate_phases']}; database {result['sizes']['database_bytes'] / 2**20:.0f} MiB"
    )
    for q in result["queries"]:
        modes = "".join(
            f"  {kind} {q[kind + '_ms']['median']:.3f} ms" for kind in ("custom", "generic") if kind + "_ms" in q
        )
        plans = "".join(
            f"  {kind} plan {q[kind + '_plan']['execution_ms']:.3f} ms {q[kind + '_plan']['verdict']}"
            f" rows read {q[kind + '_plan']['rows_read']}"
            f"{' FILTER ' + '; '.join(q[kind + '_plan']['filters']) if q[kind + '_plan']['filters'] else ''}"
            for kind in ("custom", "generic")
            if kind + "_plan" in q
        )
        print(
            f"  {q['group']:<10} {q['label']:<55} {q['median_ms']:8.3f} ms ({q['min_ms']:.3f}\u2013{q['max_ms']:.3f})"
            f"  server {q['server_ms'] if q.get('server_ms') is not None else '-'}"
            f"  first call {q['first_call_ms'] if q.get('first_call_ms') is not None else '-'}"
            f"{modes}  {q['verdict']:<10} index tuples {q['index_tuples_read']} WAL/call {q['wal_bytes_per_call']}"
            f"{plans}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--migrations", type=Path, help="a folder of migrations to apply instead of the project's")
    parser.add_argument("--keep", type=Path, help="a folder that keeps the generated database for the next run")
    args = parser.parse_args(argv)
    result = run(args.runs, args.calls, args.migrations, args.keep)
    print_result(result)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
