"""Where Postgres's CPU goes in a chain3 run: every statement the engine sends, timed on the server's side.

Runs chain3 runs one after another through the engine's own code in this process: the API's `create_run`, a queue
consumer's receive (with its lease, as a step executor container holds it) and the step executor's
`handle_step_message`, against chain_throughput.py's instant provider (in this process). Every store call goes
through one connection, and the CPU time of that connection's backend is read from /proc/<pid>/schedstat
(nanoseconds) around each call, together with the WAL written (pg_current_wal_insert_lsn, read on a side
connection). The consumer lease's backend (it receives the queue's NOTIFY) and the server's other processes
(walwriter, checkpointer, autovacuum: the postmaster's reaped children) are measured over the whole pass.

Reported: per store function, calls per run, backend CPU per call (median and p90, µs), WAL bytes per call and the
CPU per run it adds up to; the functions' self time from pg_stat_user_functions (nested helpers and trigger
functions, `track_functions = 'all'`); and the per-run total, which is what the harness's "Postgres CPU per run"
counts at concurrency 1 (at higher concurrency it adds contention, the watcher and the API's other reads).

Usage: python bench/pg_cpu.py [--runs 300] [--migrations DIR | --compare DIR] [--perf FILE] [--json]
(`--migrations DIR` applies another set of migrations, e.g. an older commit's from `git archive`, for a before;
`--compare DIR` runs two engines, DIR's migrations and the current ones, their runs interleaved ten at a time, so
that the machine's load (CPU time per call moves ±20% with it here) falls on both alike;
`--perf FILE` records the measured backend with `perf record --call-graph dwarf` during the pass (also for
`perf report -i FILE --children`) and splits its samples by the store call they fell in (the calls' times and the
samples' are both CLOCK_MONOTONIC), and within each by what the backend was doing (PARTS below).)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path
from typing import Any

import psycopg
from chain_throughput import CHAIN, KEY, InstantProvider, create_body
from machine import schedstat_ns

from babychain.auth import Principal
from babychain.engine.create import create_run
from babychain.engine.executor import handle_step_message
from babychain.local.queue import STEP_QUEUE, ConsumerLease, PostgresQueue, ReceivedMessage
from babychain.local.runner import LocalEngine
from babychain.store import migrations
from babychain.store.postgres import PostgresStore

RECEIVER = 424242


def reaped_ns(pid: int) -> int:
    """CPU of the children a process has reaped (cutime + cstime of /proc/<pid>/stat), in ns (tick resolution)."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class TimedStore(PostgresStore):
    """One connection; each call's backend CPU (ns) and WAL bytes recorded by function."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, max_size=1)
        with self._pool.connection() as conn:
            self.backend_pid: int = conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        self._side = psycopg.connect(dsn, autocommit=True)
        self.cpu: dict[str, list[int]] = defaultdict(list)
        self.wal: dict[str, list[int]] = defaultdict(list)
        self.recording = False
        self.windows: list[tuple[float, float, str]] = []

    def _lsn(self) -> str:
        return self._side.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]

    def call(self, function: str, params: dict[str, Any]) -> Any:
        if not self.recording:
            return super().call(function, params)
        lsn0 = self._lsn()
        started = time.monotonic()
        t0 = schedstat_ns(self.backend_pid)
        result = super().call(function, params)
        t1 = schedstat_ns(self.backend_pid)
        lsn1 = self._lsn()
        self.cpu[function].append(t1 - t0)
        self.windows.append((started, time.monotonic(), function))
        wal = self._side.execute("select pg_wal_lsn_diff(%s, %s)::bigint", (lsn1, lsn0)).fetchone()
        self.wal[function].append(int(wal[0]) if wal else 0)
        return result

    def close(self) -> None:
        self._side.close()
        super().close()


def other_processes(conn: psycopg.Connection[Any], exclude: set[int]) -> dict[str, int]:
    """CPU ns of the server's processes by backend type, but the measured ones; the postmaster's reaped children."""
    rows = conn.execute("select pid, backend_type from pg_stat_activity").fetchall()
    out: dict[str, int] = defaultdict(int)
    for pid, kind in rows:
        if pid in exclude or pid == conn.info.backend_pid:
            continue
        try:
            out[kind] += schedstat_ns(pid)
        except OSError:
            continue
    postmaster = conn.execute("select pg_postmaster_start_time() is not null").fetchone()
    assert postmaster is not None
    with open(Path(conn.execute("show data_directory").fetchone()[0]) / "postmaster.pid") as f:  # type: ignore[index]
        pm = int(f.readline())
    out["postmaster (reaped children: autovacuum workers, ...)"] = reaped_ns(pm)
    out["postmaster"] = schedstat_ns(pm)
    return dict(out)


def wal_records(engine: LocalEngine, start: str, end: str, runs: int) -> dict[str, list[float]]:
    """WAL records and bytes per run by record type (pg_waldump --stats=record), over the measured pass: the
    side connection's reads write nothing, so this is the engine's own."""
    import subprocess

    bin_path = getattr(engine._pg, "bin_path", None)
    if bin_path is None:
        return {}
    done = subprocess.run(
        [
            str(Path(bin_path) / "pg_waldump"),
            "-p",
            str(Path(engine.home) / "pg" / "pg_wal"),
            "-s",
            start,
            "-e",
            end,
            "--stats=record",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out: dict[str, list[float]] = {}
    for line in done.stdout.splitlines():
        # "Heap/HOT_UPDATE   123 ( 1.23)   4567 ( 8.90)   0 ( 0.00)   4567 ( 8.90)": count, record bytes, FPI bytes
        m = re.match(r"^(\S+/\S+)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)", line)
        if m:
            count, rec, fpi = int(m.group(2)), int(m.group(3)), int(m.group(4))
            out[m.group(1)] = [round(count / runs, 2), round(rec / runs), round(fpi / runs)]
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1] - kv[1][2]))


# What the backend was doing, by the frames on its stack (the first that matches, in this order).
PARTS = [
    ("commit (WAL flush, fdatasync)", ("CommitTransactionCommand",)),
    ("CHECK constraints", ("ExecConstraints",)),
    ("timer trigger", ("afterTriggerInvokeEvents", "AfterTriggerSaveEvent", "TriggerEnabled")),
    ("NOTIFY", ("Async_Notify", "AtCommit_Notify", "PreCommit_Notify", "pg_notify")),
    ("SQL helper functions", ("fmgr_sql",)),
    ("planning", ("GetCachedPlan", "pg_plan_queries", "pg_analyze_and_rewrite_fixedparams", "raw_parser")),
    ("executor start/end", ("standard_ExecutorStart", "standard_ExecutorEnd")),
    ("index inserts", ("ExecInsertIndexTuples",)),
    ("heap insert/update/delete", ("heap_insert", "heap_update", "heap_delete", "heap_lock_tuple")),
    ("scans", ("ExecScan", "ExecIndexScan", "BitmapHeapNext", "IndexNext", "ExecAgg", "ExecSort")),
    ("json", ("jsonb_in", "to_jsonb", "jsonb_build_object", "jsonb_agg_transfn", "JsonbValueToJsonb", "jsonb_out")),
    ("client protocol", ("pq_getbyte", "socket_flush", "pq_getmessage", "WaitEventSetWait", "ReadCommand")),
]


def split_samples(perf: Path, windows: list[tuple[float, float, str]]) -> dict[str, dict[str, int]]:
    """Samples per store call and part (PARTS, else 'other'), from `perf script` of the recording."""
    import bisect
    import subprocess

    text = subprocess.run(
        ["perf", "script", "-i", str(perf), "-F", "time,ip,sym"], capture_output=True, text=True, check=False
    ).stdout
    starts = [w[0] for w in windows]
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        try:
            at = float(lines[0].strip().rstrip(":").split()[-1])
        except ValueError:
            continue
        frames = {line.split()[1].split("+")[0] for line in lines[1:] if len(line.split()) > 1}
        i = bisect.bisect_right(starts, at) - 1
        function = windows[i][2] if i >= 0 and at <= windows[i][1] else "(between calls)"
        part = next((name for name, marks in PARTS if frames & set(marks)), "other")
        out[function][part] += 1
    return {k: dict(v) for k, v in out.items()}


def function_times(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, float, float]]:
    rows = conn.execute(
        "select schemaname || '.' || funcname, calls, total_time, self_time from pg_stat_user_functions"
    ).fetchall()
    return {name: (calls, total, self_) for name, calls, total, self_ in rows}


def one_run(
    svc: Any, queue: PostgresQueue, lease: ConsumerLease, principal: Principal, acked: ReceivedMessage | None
) -> ReceivedMessage | None:
    """A chain3 run as the engine does it: create (with the first step's send), the consumer's receive (which
    acknowledges the previous message), the executor's steps; returns the message to acknowledge next."""
    create_run(svc, principal, CHAIN, create_body(), None)
    lease.wait(0.0)  # read the wake-up the send notified
    delivery = queue.receive_next(RECEIVER, ack=acked, idle_wait_seconds=5.0)
    assert len(delivery.messages) == 1, delivery
    outcome = handle_step_message(svc, delivery.messages[0].body, lambda: 300.0)
    assert outcome == "succeeded", outcome
    if not delivery.more:
        # It took the last due message and is registered as a waiter already: the next run's receive (which the
        # next send's wake-up brings) acknowledges this one (consume()).
        return delivery.messages[0]
    # Without that (a database before 20261202061000): the consumer's next receive acknowledges it and, finding
    # nothing, registers the consumer as a waiter.
    empty, _ = queue.receive(RECEIVER, ack=delivery.messages[0], idle_wait_seconds=5.0)
    assert not empty
    return None


def start_engine(stack: contextlib.ExitStack, provider: InstantProvider, migrations_dir: Path | None) -> LocalEngine:
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bc-pg-cpu-"))
    original = migrations.apply_migrations.__defaults__
    if migrations_dir is not None:
        migrations.apply_migrations.__defaults__ = (migrations_dir,)
    try:
        engine = LocalEngine(
            Path(tmp),
            workers=False,
            api_workers=1,
            overrides={"api_keys": (KEY,), "local_provider_url": provider.url, "local_provider_delay_seconds": 0.0},
        ).start()
    finally:
        migrations.apply_migrations.__defaults__ = original
    stack.callback(engine.stop)
    return engine


def profile(runs: int, migrations_dir: Path | None, perf: Path | None = None) -> dict[str, Any]:
    provider = InstantProvider().start()
    try:
        with contextlib.ExitStack() as stack:
            return _drain(_profile(start_engine(stack, provider, migrations_dir), runs, perf))
    finally:
        provider.stop()


def compare(runs: int, before_dir: Path) -> dict[str, Any]:
    """Two engines, `before_dir`'s migrations and the current ones, their runs interleaved in chunks of ten so that
    both see the same load on the machine."""
    provider = InstantProvider().start()
    try:
        with contextlib.ExitStack() as stack:
            subjects = {
                "before": _profile(start_engine(stack, provider, before_dir), runs, None),
                "after": _profile(start_engine(stack, provider, None), runs, None),
            }
            results: dict[str, Any] = {}
            while len(results) < len(subjects):
                for name, gen in subjects.items():
                    if name in results:
                        continue
                    try:
                        next(gen)
                    except StopIteration as done:
                        results[name] = done.value
            return results
    finally:
        provider.stop()


def _drain(gen: Generator[None, None, dict[str, Any]]) -> dict[str, Any]:
    while True:
        try:
            next(gen)
        except StopIteration as done:
            result: dict[str, Any] = done.value
            return result


CHUNK = 10


def _profile(engine: LocalEngine, runs: int, perf: Path | None) -> Generator[None, None, dict[str, Any]]:
    """Yields after the warm-up and after every CHUNK measured runs (for `compare`); returns the figures."""
    import dataclasses
    import signal
    import subprocess

    dsn = engine.settings.database_url
    admin = psycopg.connect(dsn, autocommit=True)
    admin.execute("alter system set track_functions = 'all'")
    admin.execute("select pg_reload_conf()")
    time.sleep(0.3)
    store = TimedStore(dsn)
    queue = PostgresQueue(store, STEP_QUEUE, visibility_timeout_seconds=300)
    svc = dataclasses.replace(engine._services(), store=store, step_queue=queue)
    principal = Principal(owner_id=f"bench:{uuid.uuid4().hex}", name="bench", scopes=frozenset({"runs:write"}))
    lease = ConsumerLease(dsn, RECEIVER, queue)
    lease_pid = lease._conn.info.backend_pid
    queue.receive(RECEIVER, idle_wait_seconds=5.0)  # registered as a waiter, as an idle consumer is
    acked = None
    for _ in range(max(5, runs // 10)):  # warm: plans cached, pages in memory
        acked = one_run(svc, queue, lease, principal, acked)
    yield
    admin.execute("select pg_stat_reset()")
    admin.execute("select pg_stat_force_next_flush()")
    exclude = {store.backend_pid, lease_pid}
    others0 = other_processes(admin, exclude)
    lease0 = schedstat_ns(lease_pid)
    recorder = None
    if perf is not None:
        command = ["perf", "record", "-q", "-F", "999", "--call-graph", "dwarf,32768", "-k", "CLOCK_MONOTONIC"]
        command += ["-o", str(perf)]
        recorder = subprocess.Popen([*command, "-p", str(store.backend_pid)])
        time.sleep(1.0)  # perf attaches
    lsn0 = admin.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
    store.recording = True
    started = time.monotonic()
    paused = 0.0
    for done in range(runs):
        acked = one_run(svc, queue, lease, principal, acked)
        if (done + 1) % CHUNK == 0 and done + 1 < runs:
            store.recording = False
            pause = time.monotonic()
            yield
            paused += time.monotonic() - pause
            store.recording = True
    wall = time.monotonic() - started - paused
    store.recording = False
    lsn1 = admin.execute("select pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    admin.execute("select pg_switch_wal()")  # the range is complete on disk for pg_waldump
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    lease1 = schedstat_ns(lease_pid)
    others1 = other_processes(admin, exclude)
    lease.close()
    store.close()
    time.sleep(0.5)  # the backends flush their function statistics as they exit
    admin.execute("select pg_stat_force_next_flush()")
    functions = function_times(admin)
    tables = {
        f"{schema}.{name}": [round(x / runs, 2) for x in counts]
        for schema, name, *counts in admin.execute(
            "select schemaname, relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del from pg_stat_user_tables "
            "where n_tup_ins + n_tup_upd + n_tup_del > 0 order by 3 desc"
        ).fetchall()
    }
    server_version = admin.execute("show server_version").fetchone()[0]  # type: ignore[index]
    records = wal_records(engine, lsn0, lsn1, runs)
    admin.close()

    per_function = {}
    for name, values in store.cpu.items():
        xs = sorted(values)
        per_function[name] = {
            "calls_per_run": round(len(xs) / runs, 2),
            "cpu_us_median": round(statistics.median(xs) / 1000, 1),
            "cpu_us_p90": round(xs[int(0.9 * (len(xs) - 1))] / 1000, 1),
            "cpu_us_mean": round(statistics.fmean(xs) / 1000, 1),
            "cpu_ms_per_run": round(sum(xs) / runs / 1e6, 3),
            "wal_bytes_per_call": round(statistics.fmean(store.wal[name])),
        }
    others = {k: round((others1.get(k, 0) - others0.get(k, 0)) / runs / 1e6, 3) for k in others1}
    statements_ms = sum(f["cpu_ms_per_run"] for f in per_function.values())
    nested = {
        name: {"calls_per_run": round(c / runs, 2), "self_us_per_call": round(1000 * s / c, 1) if c else 0.0}
        for name, (c, _t, s) in functions.items()
        if c
    }
    split = split_samples(perf, store.windows) if perf is not None else None
    return {
        "perf_split": split,
        "bench": "pg_cpu",
        "runs": runs,
        "server_version": server_version,
        "seconds": round(wall, 2),
        "statements": dict(sorted(per_function.items(), key=lambda kv: -kv[1]["cpu_ms_per_run"])),
        "statements_cpu_ms_per_run": round(statements_ms, 3),
        "lease_backend_cpu_ms_per_run": round((lease1 - lease0) / runs / 1e6, 3),
        "other_processes_cpu_ms_per_run": others,
        "wal_bytes_per_run": round(sum(sum(v) for v in store.wal.values()) / runs),
        "wal_records_per_run": records,
        "table_writes_per_run": tables,
        "function_self_time": dict(
            sorted(nested.items(), key=lambda kv: -kv[1]["calls_per_run"] * kv[1]["self_us_per_call"])
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--migrations", type=Path, default=None)
    parser.add_argument("--perf", type=Path, default=None, help="perf record the measured backend into this file")
    parser.add_argument(
        "--compare", type=Path, default=None, help="interleave runs on these migrations (before) and the current ones"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.compare is not None:
        both = compare(args.runs, args.compare)
        for name, result in both.items():
            print(f"== {name}")
            report(result)
        if args.json:
            print(json.dumps(both))
        return
    result = profile(args.runs, args.migrations, args.perf)
    report(result)
    if args.json:
        print(json.dumps(result))


def report(result: dict[str, Any]) -> None:
    print(f"chain3 runs one at a time: {result['runs']} in {result['seconds']} s (Postgres {result['server_version']})")
    print(f"{'statement':24} {'per run':>8} {'CPU µs median':>14} {'p90':>8} {'WAL B/call':>11} {'CPU ms/run':>11}")
    for name, f in result["statements"].items():
        print(
            f"{name:24} {f['calls_per_run']:8.2f} {f['cpu_us_median']:14.1f} {f['cpu_us_p90']:8.1f} "
            f"{f['wal_bytes_per_call']:11d} {f['cpu_ms_per_run']:11.3f}"
        )
    print(
        f"statements' backend CPU per run: {result['statements_cpu_ms_per_run']:.3f} ms; "
        f"WAL {result['wal_bytes_per_run']} bytes per run"
    )
    print("WAL per run by record type (records, record bytes, full-page image bytes):")
    for name, (n, rec, fpi) in result["wal_records_per_run"].items():
        print(f"  {name:32} {n:6.2f} {rec:7d} {fpi:7d}")
    print("row writes per run (pg_stat_user_tables): inserted, updated, of which HOT, deleted")
    for name, (ins, upd, hot, dele) in result["table_writes_per_run"].items():
        print(f"  {name:42} {ins:6.2f} {upd:6.2f} {hot:6.2f} {dele:6.2f}")
    print(f"the consumer lease's backend (NOTIFY): {result['lease_backend_cpu_ms_per_run']:.3f} ms per run")
    print(
        "other server processes, ms per run: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["other_processes_cpu_ms_per_run"].items() if v)
    )
    print("function self time (pg_stat_user_functions):")
    for name, f in result["function_self_time"].items():
        print(f"  {name:45} {f['calls_per_run']:6.2f} per run  {f['self_us_per_call']:8.1f} µs self per call")
    if result["perf_split"]:
        split = result["perf_split"]
        parts = [name for name, _ in PARTS] + ["other"]
        total = sum(sum(v.values()) for v in split.values())
        print(f"perf samples of the backend by call and part ({total} samples; % of all):")
        print(f"  {'part':32}" + "".join(f"{k[:16]:>17}" for k in split))
        for part in parts:
            print(f"  {part:32}" + "".join(f"{100 * v.get(part, 0) / total:16.1f}%" for v in split.values()))
        print(f"  {'all':32}" + "".join(f"{100 * sum(v.values()) / total:16.1f}%" for v in split.values()))


if __name__ == "__main__":
    main()
