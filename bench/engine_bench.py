"""The harness's engine section: chain3 on the instant provider at concurrency 1, 4, 16, with the server's own counts.

Reuses chain_throughput.py (the instant provider in its own process, the completion watcher, the per-level figures
and CPU accounting) and adds, read from the embedded Postgres itself:
  statements per run  top-level statements in the server log (`log_statement = 'all'`, switched on with ALTER SYSTEM
                      for one counting pass of runs at concurrency 1 only, so logging does not slow the timed
                      levels); the engine's background (sweeper, supervisor, idle consumers) is measured over an idle
                      window just before and subtracted; the bench's own connections are told apart by
                      application_name. The embedded server ships no pg_stat_statements (no shared library for it),
                      which is why the log is used.
  nested calls        pg_stat_user_functions (`track_functions = 'all'`) over the whole session, per run: how often
                      helpers such as babychain_private.bc_run_json run inside the top-level functions
  WAL per run         pg_current_wal_lsn() before and after the counting pass, less the idle window's rate; WAL
                      records by pg_waldump --stats over the same range
  HOT updates         pg_stat_user_tables n_tup_hot_upd / n_tup_upd of chain_steps (and chain_runs, the queue table)
                      over the whole session, read after the engine stopped (backends flush their statistics when
                      they exit)
  peak memory         RSS (and PSS, which splits shared pages fairly) of the engine's processes: its containers,
                      the bench process that supervises them, and the embedded Postgres, sampled while runs go
  queue hop           a second engine with BABYCHAIN_NEXT_STEP_IN_INVOCATION off runs the concurrency-16 level again:
                      every next step goes by its queue message (as a poll, a webhook or an invocation short of time
                      does), so its hop (producer completed -> next step claimed) is the local queue's round trip
                      through a waiting executor, not 0 as in the levels above where the completing executor
                      submits the next step itself
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import psycopg
from chain_throughput import (
    KEY,
    CompletionWatcher,
    CpuSample,
    ProviderProcess,
    drive,
    measure,
    postgres_markers,
    sample_cpu,
)
from psycopg.conninfo import make_conninfo
from report import figure, spread_text, table

from babychain.local.runner import LocalEngine

BENCH_APP = "bench-harness"
STATEMENT_LINE = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] app=(\S*) LOG:  (?:statement|execute [^:]*): (.*)$")
FUNCTION = re.compile(r"\b(bc_\w+)\s*\(")
STEP_TABLES = ("chain_steps", "chain_runs", "bc_queue_messages")


def with_app(dsn: str, app: str) -> str:
    return make_conninfo(dsn, application_name=app)


class MemorySampler:
    """Peak RSS and PSS of a set of processes, sampled in a thread (RSS every 0.2 s, PSS every 1 s)."""

    def __init__(self, pids: Any) -> None:
        self._pids = pids  # callable -> dict[label, list[pid]]
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_by_role: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.2):
            with_pss = tick % 5 == 0
            tick += 1
            rss = pss = 0
            roles: Counter[str] = Counter()
            for role, pids in self._pids().items():
                for pid in pids:
                    try:
                        proc = psutil.Process(pid)
                        if with_pss:
                            info = proc.memory_full_info()
                            pss += getattr(info, "pss", info.rss)
                            value = info.rss
                        else:
                            value = proc.memory_info().rss
                    except psutil.Error:
                        continue
                    rss += value
                    roles[role] += value
            self.peak_rss = max(self.peak_rss, rss)
            if with_pss:
                self.peak_pss = max(self.peak_pss, pss)
            for role, value in roles.items():
                self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), value)


def engine_pids(engine: LocalEngine, markers: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"supervisor (bench process)": [os.getpid()]}
    for name, pid in engine.container_pids().items():
        if pid is not None:
            groups.setdefault(name.rsplit("-", 1)[0], []).append(pid)
    postgres: list[int] = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and any(m in " ".join(proc.info["cmdline"] or ()) for m in markers):
            postgres.append(proc.pid)
            with contextlib.suppress(psutil.Error):
                postgres += [p.pid for p in proc.children(recursive=True)]
    groups["postgres"] = sorted(set(postgres))
    return groups


def set_logging(conn: psycopg.Connection[Any], on: bool) -> None:
    if on:
        conn.execute("alter system set log_statement = 'all'")
        conn.execute("alter system set log_parameter_max_length = 0")
        conn.execute("alter system set log_line_prefix = '%m [%p] app=%a '")
    else:
        conn.execute("alter system reset log_statement")
    conn.execute("select pg_reload_conf()")
    time.sleep(0.5)  # every backend applies the reload at its next command


def count_statements(log: Path, start: int, end: int) -> tuple[Counter[str], int]:
    """Top-level statements logged between two byte offsets, by function (or first word); and the bench's own."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    kinds: Counter[str] = Counter()
    own = 0
    for line in text.splitlines():
        m = STATEMENT_LINE.match(line)
        if not m:
            continue
        if m.group(2).startswith("bench"):
            own += 1
            continue
        statement = m.group(3)
        fn = FUNCTION.search(statement)
        kinds[fn.group(1) if fn else (statement.split() or ["?"])[0].upper()] += 1
    return kinds, own


def wal_records(bin_path: Path | None, pgdata: Path, start: str, end: str) -> int | None:
    """WAL records between two LSNs, from pg_waldump --stats; None when pg_waldump cannot tell."""
    if bin_path is None or not (bin_path / "pg_waldump").exists() or start == end:
        return None
    done = subprocess.run(
        [str(bin_path / "pg_waldump"), "-p", str(pgdata / "pg_wal"), "-s", start, "-e", end, "--stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"^Total\s+(\d+)", done.stdout, re.MULTILINE)
    return int(m.group(1)) if m else None


def table_counters(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    rows = conn.execute(
        "select relname, n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where relname = any(%s)",
        (list(STEP_TABLES),),
    ).fetchall()
    return {name: (upd, hot) for name, upd, hot in rows}


def function_calls(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("select schemaname || '.' || funcname, calls from pg_stat_user_functions").fetchall()
    return dict(rows)


def counting_pass(
    engine: LocalEngine, watcher: CompletionWatcher, conn: psycopg.Connection[Any], runs: int, idle: float
) -> dict[str, Any]:
    """Runs at concurrency 1 with statement logging on; statements and WAL per run, net of the idle background."""
    log = Path(engine.home) / "pg" / "log"
    set_logging(conn, True)
    try:
        lsn0 = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        off0, t0 = log.stat().st_size, time.monotonic()
        time.sleep(idle)
        lsn1 = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        off1, t1 = log.stat().st_size, time.monotonic()
        started: list[int] = []  # the log's size once the client has connected: its health check is not a run's

        def at_start() -> None:
            time.sleep(0.2)  # the logging collector writes the health check's line
            started.append(log.stat().st_size)

        ids, errors, wall = drive(engine.base_url, watcher, runs, 1, at_start=at_start)
        time.sleep(0.2)  # the same for the last run's lines
        lsn2 = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        off2 = log.stat().st_size
    finally:
        set_logging(conn, False)
    background, _ = count_statements(log, off0, off1)
    during, own = count_statements(log, started[0], off2)
    idle_seconds = t1 - t0
    wal = conn.execute(
        "select pg_wal_lsn_diff(%s, %s)::bigint, pg_wal_lsn_diff(%s, %s)::bigint", (lsn1, lsn0, lsn2, lsn1)
    ).fetchone()
    assert wal is not None
    idle_wal, run_wal = wal
    scale = wall / idle_seconds
    n = max(1, len(ids))
    net = {k: (during[k] - background.get(k, 0) * scale) / n for k in during}
    bin_path = getattr(engine._pg, "bin_path", None)
    records = wal_records(Path(bin_path) if bin_path else None, Path(engine.home) / "pg", lsn1, lsn2)
    idle_records = wal_records(Path(bin_path) if bin_path else None, Path(engine.home) / "pg", lsn0, lsn1)
    return {
        "runs": len(ids),
        "errors": errors,
        "seconds": round(wall, 2),
        "statements_gross_per_run": round(sum(during.values()) / n, 2),
        "background_statements_per_second": round(sum(background.values()) / idle_seconds, 2),
        "statements_net_per_run": round(sum(net.values()), 2),
        "statements_by_kind_per_run": {k: round(v, 2) for k, v in sorted(net.items(), key=lambda kv: -kv[1])},
        "statements_gross_by_kind_per_run": {k: round(v / n, 2) for k, v in during.items()},
        "background_by_kind_per_run": {k: round(v * scale / n, 2) for k, v in background.items()},
        "statements_net_without_receives_per_run": round(sum(v for k, v in net.items() if k != "bc_queue_receive"), 2),
        "background_by_kind": dict(background),
        "bench_own_statements": own,
        "wal_bytes_per_run": round((run_wal - idle_wal * scale) / n),
        "wal_bytes_idle_per_second": round(idle_wal / idle_seconds),
        "wal_records_per_run": None if records is None else round((records - (idle_records or 0) * scale) / n, 1),
    }


def start_engine(home: Path, provider: ProviderProcess, poll: float, **overrides: Any) -> LocalEngine:
    return LocalEngine(
        home,
        overrides={
            "api_keys": (KEY,),
            "poll_interval_seconds": poll,
            "local_provider_url": provider.url,
            "local_provider_delay_seconds": 0.0,
            **overrides,
        },
    ).start()


def by_message_levels(
    provider: ProviderProcess, poll: float, levels: list[tuple[int, int]], reps: int
) -> dict[int, list[dict[str, Any]]]:
    """Levels (concurrency, runs) on an engine whose executors hand every next step to its queue message."""
    with tempfile.TemporaryDirectory(prefix="bc-harness-hop-") as tmp:
        home = Path(tmp).resolve()
        engine = start_engine(home, provider, poll, next_step_in_invocation=False)
        watcher = CompletionWatcher(with_app(engine.settings.database_url, "bench-watcher"))
        markers = postgres_markers(home, engine.settings.database_url)
        try:

            def cpu_of() -> CpuSample:
                return sample_cpu(markers, provider.process.pid, (watcher.backend_pid,))

            warm = measure(engine, watcher, cpu_of, 1, 1)
            if warm.statuses != {"succeeded": 1}:
                raise RuntimeError(f"warm-up run (next steps by message): {warm.statuses}")
            out: dict[int, list[dict[str, Any]]] = {c: [] for c, _ in levels}
            for _ in range(reps):
                for concurrency, runs in levels:
                    out[concurrency].append(measure(engine, watcher, cpu_of, runs, concurrency).__dict__)
        finally:
            watcher.close()
            engine.stop()
    if all(level["hop_p99_ms"] == 0 for level in out[max(out)]):
        raise RuntimeError("every hop read 0 with next_step_in_invocation off: the setting did not reach the executors")
    return out


def run(quick: bool, poll: float = 0.05) -> dict[str, Any]:
    levels = [(1, 10), (4, 24), (16, 48)] if quick else [(1, 30), (4, 60), (16, 150)]
    reps = 3
    count_runs, idle = (10, 3.0) if quick else (30, 5.0)
    per_level: dict[int, list[dict[str, Any]]] = {c: [] for c, _ in levels}
    provider = ProviderProcess.start()
    total_runs = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bc-harness-engine-") as tmp:
            home = Path(tmp).resolve()
            engine = start_engine(home, provider, poll)
            dsn = engine.settings.database_url
            conn = psycopg.connect(with_app(dsn, BENCH_APP), autocommit=True)
            conn.execute("alter system set track_functions = 'all'")
            conn.execute("select pg_reload_conf()")
            server_version = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
            watcher = CompletionWatcher(with_app(dsn, "bench-watcher"))
            markers = postgres_markers(home, dsn)
            try:

                def cpu_of() -> CpuSample:
                    return sample_cpu(markers, provider.process.pid, (watcher.backend_pid,))

                warm = measure(engine, watcher, cpu_of, 1, 1)
                if warm.statuses != {"succeeded": 1}:
                    raise RuntimeError(f"warm-up run: {warm.statuses}")
                total_runs += 1
                with MemorySampler(lambda: engine_pids(engine, markers)) as memory:
                    for _ in range(reps):
                        for concurrency, count in levels:
                            level = measure(engine, watcher, cpu_of, count, concurrency)
                            per_level[concurrency].append(level.__dict__)
                            total_runs += level.runs
                counts = counting_pass(engine, watcher, conn, count_runs, idle)
                total_runs += counts["runs"]
            finally:
                watcher.close()
                engine.stop()
                time.sleep(1.0)  # the containers' backends exit and flush their statistics
            tables = table_counters(conn)
            calls = function_calls(conn)
            conn.close()
        # Concurrency 1 too: the queue's own round trip, without waiting for a busy executor.
        by_message = by_message_levels(provider, poll, [(c, n) for c, n in levels if c in (1, 16)], reps)
    finally:
        provider.stop()
    return summarize(per_level, counts, tables, calls, total_runs, memory, server_version, quick, poll, by_message)


def summarize(
    per_level: dict[int, list[dict[str, Any]]],
    counts: dict[str, Any],
    tables: dict[str, tuple[int, int]],
    calls: dict[str, int],
    total_runs: int,
    memory: MemorySampler,
    server_version: str,
    quick: bool,
    poll: float,
    by_message: dict[int, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    cmd = f"python bench/run_all.py{' --quick' if quick else ''} --only engine"
    figures: dict[str, Any] = {}
    rows = []
    levels_to_show: list[tuple[str, int, list[dict[str, Any]]]] = [(f"c{c}", c, lv) for c, lv in per_level.items()]
    for c, lv in (by_message or {}).items():
        levels_to_show.append((f"c{c}_message", c, lv))
    for level_key, c, levels in levels_to_show:
        how = ", next steps by queue message" if level_key.endswith("_message") else ""

        def fig(key: str, label: str, unit: str, better: str, levels: list[dict[str, Any]] = levels) -> Any:
            return figure(label, [lv[key] for lv in levels], unit, better=better, command=cmd)

        figures[f"{level_key}_runs_per_second"] = fig(
            "runs_per_second", f"chain3 runs/s, concurrency {c}{how}", "runs/s", "higher"
        )
        figures[f"{level_key}_steps_per_second"] = fig(
            "steps_per_second", f"steps/s, concurrency {c}{how}", "steps/s", "higher"
        )
        figures[f"{level_key}_hop_p50"] = fig("hop_p50_ms", f"hop p50, concurrency {c}{how}", "ms", "lower")
        figures[f"{level_key}_hop_p99"] = fig("hop_p99_ms", f"hop p99, concurrency {c}{how}", "ms", "lower")
        figures[f"{level_key}_cpu_python"] = fig(
            "children_cpu_ms_per_run", f"CPU per run, engine Python, concurrency {c}{how}", "ms", "lower"
        )
        figures[f"{level_key}_cpu_postgres"] = fig(
            "postgres_cpu_ms_per_run", f"CPU per run, Postgres, concurrency {c}{how}", "ms", "lower"
        )
        figures[f"{level_key}_cpu_bench"] = fig(
            "bench_cpu_ms_per_run",
            f"CPU per run, bench process (client + supervisor), concurrency {c}{how}",
            "ms",
            "lower",
        )
        f = figures
        rows.append(
            [
                f"{c}{' by message' if how else ''} ({levels[0]['runs'] if levels else '?'} \u00d7 {len(levels)})",
                *(
                    spread_text(f[f"{level_key}_{k}"])
                    for k in (
                        "runs_per_second",
                        "steps_per_second",
                        "hop_p50",
                        "hop_p99",
                        "cpu_python",
                        "cpu_postgres",
                        "cpu_bench",
                    )
                ),
                spread_text(figure("", [lv["run_p50_ms"] for lv in levels])),
                f"{sum(lv['outside_cpu_seconds'] for lv in levels):.1f} of "
                f"{sum(lv['machine_busy_cpu_seconds'] for lv in levels):.1f}",
                ", ".join(f"{k} {v}" for k, v in _sum_dicts([lv["statuses"] for lv in levels]).items())
                + (
                    f"; errors {_sum_dicts([lv['errors'] for lv in levels])}"
                    if any(lv["errors"] for lv in levels)
                    else ""
                ),
            ]
        )
    figures["statements_per_run"] = figure(
        "statements per chain3 run (server log, net of background)",
        [counts["statements_net_per_run"]],
        "statements",
        better="lower",
        command=cmd,
    )
    figures["statements_per_run_without_receives"] = figure(
        "statements per chain3 run other than queue receives (server log, net)",
        [counts["statements_net_without_receives_per_run"]],
        "statements",
        better="lower",
        command=cmd,
    )
    figures["queue_receives_per_run"] = figure(
        "queue receive statements per chain3 run (server log, net)",
        [counts["statements_by_kind_per_run"].get("bc_queue_receive", 0.0)],
        "statements",
        better="lower",
        command=cmd,
    )
    figures["wal_bytes_per_run"] = figure(
        "WAL bytes per chain3 run", [counts["wal_bytes_per_run"]], "bytes", better="lower", command=cmd
    )
    if counts.get("wal_records_per_run") is not None:
        figures["wal_records_per_run"] = figure(
            "WAL records per chain3 run", [counts["wal_records_per_run"]], "records", better="lower", command=cmd
        )
    hot = {name: (hot / upd if upd else None, upd, hot) for name, (upd, hot) in tables.items()}
    steps_share = hot.get("chain_steps", (None, 0, 0))[0]
    figures["chain_steps_hot_share"] = figure(
        "chain_steps updates that are HOT", [100 * steps_share] if steps_share is not None else [], "%", better="higher"
    )
    figures["chain_steps_updates_per_run"] = figure(
        "chain_steps row updates per run",
        [tables.get("chain_steps", (0, 0))[0] / max(1, total_runs)],
        "updates",
        better="lower",
    )
    figures["peak_rss"] = figure(
        "peak RSS, engine processes + Postgres (sum)", [memory.peak_rss / 2**20], "MiB", better="lower", command=cmd
    )
    figures["peak_pss"] = figure(
        "peak PSS, engine processes + Postgres (sum)", [memory.peak_pss / 2**20], "MiB", better="lower", command=cmd
    )
    nested = {k: v / max(1, total_runs) for k, v in calls.items() if v}
    details = [
        f"chain3 on the instant provider (chain_throughput.py's stand-in, its own process), poll interval {poll} s; "
        f"each level repeated {len(next(iter(per_level.values())))} times in one engine, interleaved (1, 4, 16, 1, "
        "4, 16, ...); cells are the median over the repetitions with the range in brackets. 'By message' is a "
        "second engine with BABYCHAIN_NEXT_STEP_IN_INVOCATION off, its levels 1 and 16 repeated as often: the "
        "completing executor does not submit the next step itself but sends its queue message, so its hop is the "
        "local queue's (send, wake-up of a waiting executor, receive, claim; at 16 also the wait for a free one of "
        "the 4 executors), the hop of a step that travels by message (a poll, a webhook, an invocation short of "
        "time); in the other levels the hop is 0. CPU per run: engine "
        "Python = the container processes (API workers, step executors, callback senders, sweeper); Postgres = the "
        "embedded server's processes but the watcher's backend; bench = this process (keep-alive http.client "
        "threads, the completion watcher, and the engine's supervisor thread) and the watcher's Postgres backend; "
        "the stand-in provider (a minimal asyncio server) is counted apart. 'Outside' is CPU the machine spent on "
        "other work during the levels (other helpers' tests): the larger it is, the noisier the figures.",
        "",
        *table(
            [
                "concurrency (runs \u00d7 reps)",
                "runs/s",
                "steps/s",
                "hop p50 ms",
                "hop p99 ms",
                "CPU ms/run Python",
                "CPU ms/run Postgres",
                "CPU ms/run bench",
                "whole run p50 ms",
                "outside CPU-s of machine busy",
                "statuses",
            ],
            rows,
        ),
        "",
        f"**Statements per run, from the server** (Postgres {server_version}; `log_statement = 'all'` for "
        f"{counts['runs']} runs at concurrency 1 in {counts['seconds']} s; pg_stat_statements is not available in "
        "the embedded server). Top-level statements as the server logged them, by function, net of the engine's idle "
        f"background ({counts['background_statements_per_second']} statements/s: "
        f"{_kinds(counts['background_by_kind'])}, measured over an idle window just before); the bench's own "
        f"connections ({counts['bench_own_statements']} statements) and the client's health check before the "
        "runs are excluded: "
        f"**{counts['statements_net_per_run']} per run** (gross {counts['statements_gross_per_run']}), of which "
        f"{counts['statements_net_without_receives_per_run']} are not queue receives. A receive also acknowledges "
        "the consumer's previous message; receives beyond the messages sent (`bc_queue_send` rows, one message each "
        "here) are consumers woken by a NOTIFY that found nothing.",
        "",
        *table(
            ["statement", "per run (gross)", "idle background, scaled to the pass, per run", "per run (net)"],
            [
                [
                    f"`{k}`",
                    counts["statements_gross_by_kind_per_run"].get(k, 0.0),
                    counts["background_by_kind_per_run"].get(k, 0.0),
                    v,
                ]
                for k, v in counts["statements_by_kind_per_run"].items()
            ],
        ),
        "",
        f"**Nested function calls per run** (pg_stat_user_functions with `track_functions = 'all'`, over the whole "
        f"session of {total_runs} runs at every concurrency, background included; `bc_get_run` includes the bench's "
        "own read of each finished run through the API, one per run; queue receives per run fall as concurrency "
        "rises, since one NOTIFY wake-up then finds more work):",
        "",
        *table(
            ["function", "calls per run"],
            [[f"`{k}`", f"{v:.2f}"] for k, v in sorted(nested.items(), key=lambda kv: -kv[1])],
        ),
        "",
        f"**WAL and HOT**: {counts['wal_bytes_per_run']} bytes of WAL per run"
        + (
            f" in {counts['wal_records_per_run']} records (pg_waldump --stats)"
            if counts.get("wal_records_per_run") is not None
            else ""
        )
        + f" during the counting pass (idle background {counts['wal_bytes_idle_per_second']} bytes/s subtracted). "
        "Updates over the whole session (pg_stat_user_tables, read after the engine stopped):",
        "",
        *table(
            ["table", "updates", "HOT updates", "HOT share", "updates per run"],
            [
                [
                    name,
                    upd,
                    h,
                    f"{100 * share:.1f}%" if share is not None else "\u2013",
                    f"{upd / max(1, total_runs):.1f}",
                ]
                for name, (share, upd, h) in hot.items()
            ],
        ),
        "",
        f"**Peak memory** while the levels ran (sampled every 0.2 s; PSS every 1 s): RSS sum "
        f"{memory.peak_rss / 2**20:.0f} MiB, PSS sum {memory.peak_pss / 2**20:.0f} MiB (RSS counts shared pages "
        "once per process, PSS divides them). Peak RSS per role (sum over its processes): "
        + ", ".join(f"{role} {v / 2**20:.0f} MiB" for role, v in sorted(memory.peak_by_role.items())),
    ]
    return {
        "title": "Engine: chain3 on an instant provider",
        "command": cmd,
        "figures": figures,
        "details": details,
        "levels": per_level,
        "levels_by_message": by_message,
        "counting": counts,
        "tables": tables,
        "function_calls_per_run": nested,
        "memory": {"peak_rss": memory.peak_rss, "peak_pss": memory.peak_pss, "peak_by_role": memory.peak_by_role},
        "server_version": server_version,
        "total_runs": total_runs,
    }


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])) or "none"


def _sum_dicts(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(total)
