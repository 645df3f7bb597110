"""The benchmark harness: every figure of the performance issue from one command, written to docs/benchmarks.md.

    python bench/run_all.py --quick          # reduced sizes (history of 50,000 runs): about 1.5-2 minutes
    python bench/run_all.py                  # full sizes (history of 1,000,000 runs), meant to stay under 10 minutes
    python bench/run_all.py --only engine history   # some sections (the results file then holds only those)
    python bench/run_all.py --render         # rewrite docs/benchmarks.md from the results files, running nothing

(Full size, timed on 2026-12-01 at d507f47 on this 2-core machine with nothing else running: 517.6 s in all; engine
32 s, webhook 32 s, cold_start 265 s, history 166 s (147 of them generating 1,000,000 runs), api 24 s. Under a load
average of 9-18 from other work the history section alone took 6.3-9.3 minutes: run it on a quiet machine.)

Run it with the project's interpreter and `PYTHONPATH=shared:.` from the repository root. Sections:
  engine      chain3 on an instant provider at concurrency 1, 4, 16 (engine_bench.py, on chain_throughput.py):
              runs/s, steps/s, hop p50/p99, CPU per run (engine Python / Postgres / the bench process), statements
              per run from the server's log, nested function calls, WAL bytes and records per run, HOT share of
              chain_steps updates, peak RSS/PSS of the engine's processes; and concurrency 16 again on an engine
              that sends every next step by its queue message (BABYCHAIN_NEXT_STEP_IN_INVOCATION off): the queue
              hop's p50/p99 and runs/s
  webhook     provider completion -> next step claimed, BFL webhook vs polling only (webhook_advance.py)
  cold_start  bench/cold_start.py when it exists, as a subprocess (interface below); otherwise "not available"
  history     N historical runs made with generate_series, every sweeper/list/get/create/transition query timed and
              explained (history.py)
  api         the API under load through `babychain serve` (api_load.py)
  floor       one blocking round trip to Postgres on this machine, before any work (round_trip_floor.py): the
              backend's and the client's CPU per call for `select 1`, a plpgsql call, an unflushed and a flushed
              insert; read the engine's CPU per run against it (a chain3 run is 6 transactions, 5 flushed, and 11
              blocking round trips in its step executor)

Each run writes bench/results/<UTC time>-<commit>-<mode>.json (when, commit, machine, load averages, every
section's figures and raw data) and rewrites docs/benchmarks.md from the latest results file next to the first and
the previous one of the same mode: the first quick and the first full run are the "before" of later optimisations.
The machine is shared: the load average is recorded at the start of every section and the engine section reports
how much CPU other processes used while it ran; read the figures with that in mind.

Cold start interface (for bench/cold_start.py, written separately): the harness runs
    <python> bench/cold_start.py --json [--quick]
from the repository root with the same environment, with a 420 s timeout, and reads the last line of its standard
output that parses as a JSON object:
    {"bench": "cold_start", "unit": "ms",
     "rows": [{"name": "api handler, built layer", "median": 312.0, "min": 300.1, "max": 330.2, "n": 5}, ...],
     "notes": ["free text lines shown under the table", ...]}
Each row becomes a figure (lower is better) keyed by its name, so keep names stable between runs; a row may carry
more keys (shown in the details table). A non-zero exit or no JSON line is reported as a failure of the section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from machine import CORES, load_text
from report import figure, load_results, number, render_markdown, spread_text, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SECTIONS = ["engine", "webhook", "cold_start", "history", "api", "floor"]

PREAMBLE = [
    "# Benchmarks",
    "",
    "Written by `bench/run_all.py` (the harness; see its docstring for the sections and the cold-start interface).",
    "Every figure comes from one harness run on this 2-core machine; the raw results are in `bench/results/`.",
    "Regenerate with:",
    "",
    "```bash",
    "PYTHONPATH=shared:. .venv/bin/python bench/run_all.py --quick   # or without --quick for the full sizes",
    "```",
    "",
    "The machine is shared with other work (other sessions run tests on it): each section records the load average",
    "at its start, and the engine section how much CPU went to processes outside the bench. Absolute figures move",
    "with that load; compare runs made under similar load, and prefer ratios and server-side counts (statements,",
    "WAL, HOT share, scans) which do not depend on it.",
]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def machine_facts() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": CORES,
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "postgres": "?",
    }


# ------------------------------------------------------------------------------------------------ sections


def section_engine(quick: bool) -> dict[str, Any]:
    import engine_bench

    return engine_bench.run(quick)


def section_webhook(quick: bool) -> dict[str, Any]:
    import webhook_advance

    runs, poll = (3, 5.0) if quick else (5, 5.0)
    cmd = f"python bench/webhook_advance.py --runs {runs} --poll {poll:g}"
    webhook = [d * 1000 for d in webhook_advance.measure(True, runs, poll)]
    polling = [d * 1000 for d in webhook_advance.measure(False, runs, poll)]
    figures = {
        "webhook_ms": figure("BFL completion → next step claimed, webhook", webhook, "ms", better="lower", command=cmd),
        "polling_ms": figure(
            f"BFL completion → next step claimed, polling every {poll:g} s", polling, "ms", better="lower", command=cmd
        ),
    }
    return {
        "title": "Webhook advancement: provider completion → next step",
        "command": cmd,
        "figures": figures,
        "details": [
            "chain1 in byok mode, the real BFL and BytePlus adapters against their loopback stand-ins (0.5 s jobs); "
            "from the BFL job turning Ready (the stand-in's end_time) to the engine claiming the video step. Median "
            f"over {runs} runs, range in brackets.",
            "",
            *table(
                ["advancement", "ms"],
                [
                    ["webhook (polling as fallback)", spread_text(figures["webhook_ms"])],
                    [f"polling only, every {poll:g} s", spread_text(figures["polling_ms"])],
                ],
            ),
        ],
        "raw": {"webhook_ms": webhook, "polling_ms": polling},
    }


def section_cold_start(quick: bool) -> dict[str, Any]:
    script = ROOT / "bench" / "cold_start.py"
    cmd = f"python bench/cold_start.py --json{' --quick' if quick else ''}"
    if not script.exists():
        return {
            "title": "Cold start",
            "figures": {},
            "details": ["Not available: bench/cold_start.py is not in this tree (the section runs when it is)."],
            "status": "not available",
        }
    done = subprocess.run(
        [sys.executable, str(script), "--json", *(["--quick"] if quick else [])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,  # 265 s on a quiet machine (full mode, 2026-12-01)
        check=False,
    )
    data = None
    for line in reversed(done.stdout.splitlines()):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            data = parsed
            break
    if done.returncode != 0 or data is None:
        raise RuntimeError(f"cold_start.py exited {done.returncode} without a JSON line:\n{done.stderr[-2000:]}")
    unit = data.get("unit", "ms")
    figures, rows = {}, []
    extra = sorted({k for r in data.get("rows", []) for k in r} - {"name", "median", "min", "max", "n"})
    for r in data.get("rows", []):
        key = re.sub(r"[^a-z0-9]+", "_", str(r["name"]).lower()).strip("_")
        figures[key] = {
            "label": f"cold start: {r['name']}",
            "unit": unit,
            "median": r.get("median"),
            "min": r.get("min", r.get("median")),
            "max": r.get("max", r.get("median")),
            "n": r.get("n", 1),
            "better": "lower",
            "command": cmd,
        }
        rows.append([r["name"], spread_text(figures[key]), *(r.get(k, "") for k in extra)])
    return {
        "title": "Cold start",
        "command": cmd,
        "figures": figures,
        "details": [*table(["measure", unit, *extra], rows), "", *data.get("notes", [])],
        "raw": data,
    }


def section_history(quick: bool) -> dict[str, Any]:
    import history

    n, calls = (50_000, 20) if quick else (1_000_000, 20)
    cmd = f"python bench/history.py --runs {n} --calls {calls}"
    result = history.run(n, calls)
    figures: dict[str, Any] = {
        "generate_seconds": figure(f"history: generate {n:,} runs", [result["generate_seconds"]], "s"),
        "database_mib": figure(
            f"history: database size at {n:,} runs",
            [result["sizes"]["database_bytes"] / 2**20],
            "MiB",
            better="lower",
        ),
    }
    rows = []
    for q in result["queries"]:
        key = re.sub(r"[^a-z0-9]+", "_", f"{q['group']} {q['label']}".lower()).strip("_")
        figures[key] = {
            "label": f"{q['group']}: {q['label']}",
            "unit": "ms",
            "median": q["median_ms"],
            "min": q["min_ms"],
            "max": q["max_ms"],
            "n": q["calls"],
            "better": "lower",
            "command": cmd,
        }

        def plan(kind: str, q: dict[str, Any] = q) -> str:
            p = q.get(kind)
            if not p:
                return "\u2013"
            nodes = "; ".join(dict.fromkeys(p["nodes"])) or "no scan"
            text = f"{p['execution_ms']:.3f} ms, {p['verdict']} ({nodes}), {p['shared_hit'] + p['shared_read']} buffers"
            if "rows_read" in p:  # results from before history.py reported these have no such keys
                text += f", {p['rows_read']} rows read"
                if p.get("input_ms") is not None:
                    text += f", input {p['input_ms']:.3f} ms"
                if p["filters"]:
                    text += f", filter: {'; '.join(p['filters'])}"
            return text

        def mode(kind: str, q: dict[str, Any] = q) -> str:
            m = q.get(kind + "_ms")
            return f"{m['median']:.3g} ({m['min']:.3g}\u2013{m['max']:.3g})" if m else "\u2013"

        rows.append(
            [
                q["group"],
                q["label"],
                spread_text(figures[key]),
                "\u2013" if q.get("server_ms") is None else f"{q['server_ms']:.3g}",
                "\u2013" if q.get("first_call_ms") is None else f"{q['first_call_ms']:.3g}",
                mode("custom"),
                mode("generic"),
                q["verdict"],
                q["index_tuples_read"],
                q["seq_rows_read"],
                plan("custom_plan"),
                plan("generic_plan"),
            ]
        )
    # The target is every query fast whatever plan the server caches: the slowest median over the three ways of
    # calling (as the server chooses, custom plans forced, generic plans forced), per group.
    for group in dict.fromkeys(q["group"] for q in result["queries"]):
        worst = max(
            (max([q["median_ms"], *(q[m]["median"] for m in ("custom_ms", "generic_ms") if m in q)]), q["label"])
            for q in result["queries"]
            if q["group"] == group
        )
        figures[f"{group}_slowest_any_plan"] = figure(
            f"history: slowest {group} query, any plan mode ({worst[1]})", [worst[0]], "ms", better="lower"
        )
    rels = result["sizes"]["relations"][:12]
    return {
        "title": f"History: every query at {n:,} runs",
        "command": cmd,
        "figures": figures,
        "details": [
            f"{n:,} runs generated with set-based SQL in {result['generate_seconds']} s "
            f"({', '.join(f'{k} {v} s' for k, v in result['generate_phases'].items())}); database "
            f"{result['sizes']['database_bytes'] / 2**20:,.0f} MiB. Each query is the real SQL function called "
            f"{calls} times (median, range; after a first round with the same arguments, timed apart as 'first call', "
            "whose pages may not be cached yet; 'server ms' is the server's own time in the function, from "
            "track_functions), then (the queries that can be repeated) {calls} times more with the "
            "session's plan_cache_mode forced to custom and to generic plans, which the function's own statements "
            "follow; 'scans' is what the last call read, from the server's per-transaction "
            "counters; the plans are the function body's under EXPLAIN (ANALYZE, BUFFERS) with a custom and a generic "
            "plan (functions written in plpgsql have no body plan here, only the counters), the scans that ran, and "
            "the rows they read (returned plus removed by a filter). SEQ SCAN marks a "
            f"sequential scan of a table over {history.LARGE_TABLE_ROWS} rows.",
            "",
            *table(
                [
                    "group",
                    "query",
                    "ms",
                    "server ms (in the function)",
                    "first call ms (pages not cached)",
                    "ms, custom plans forced",
                    "ms, generic plans forced",
                    "scans",
                    "index tuples read",
                    "seq rows read",
                    "custom plan",
                    "generic plan",
                ],
                rows,
            ),
            "",
            "Largest relations:",
            "",
            *table(
                ["relation", "kind", "MiB", "rows (estimate)"],
                [[r["name"], r["kind"], f"{r['bytes'] / 2**20:,.1f}", f"{r['rows']:,}"] for r in rels],
            ),
        ],
        "raw": result,
        "server_version": result["server_version"],
    }


def section_api(quick: bool) -> dict[str, Any]:
    import api_load

    creates, gets = (500, 2000) if quick else (3000, 8000)
    argv = ["--creates", str(creates), "--gets", str(gets)]
    cmd = "python bench/api_load.py " + " ".join(argv)
    summary = api_load.main(argv)
    c, g = summary["phases"]["creates"], summary["phases"]["gets"]
    figures = {
        "creates_per_second": figure(
            "API creates/s (16 threads, closed loop)", [c["requests_per_second"]], "req/s", better="higher", command=cmd
        ),
        "create_p50": figure("API create p50", [c["p50_ms"]], "ms", better="lower", command=cmd),
        "create_p99": figure("API create p99", [c["p99_ms"]], "ms", better="lower", command=cmd),
        "gets_per_second": figure(
            "API gets/s (16 threads, closed loop)", [g["requests_per_second"]], "req/s", better="higher", command=cmd
        ),
        "get_p50": figure("API get p50", [g["p50_ms"]], "ms", better="lower", command=cmd),
        "get_p99": figure("API get p99", [g["p99_ms"]], "ms", better="lower", command=cmd),
    }
    for p, what in ((c, "create"), (g, "get")):
        if p.get("server_cpu_seconds") is not None and p.get("postgres_cpu_seconds") is not None:
            figures[f"{what}_cpu_ms"] = figure(
                f"API CPU per {what}, server + postgres",
                [(p["server_cpu_seconds"] + p["postgres_cpu_seconds"]) * 1000 / max(1, p["requests"])],
                "ms",
                better="lower",
                command=cmd,
            )
    rows = []
    for p in (c, g):
        per = 1000 / max(1, p["requests"])
        server = p.get("server_cpu_seconds")
        pg = p.get("postgres_cpu_seconds")
        rows.append(
            [
                p["phase"],
                p["requests"],
                number(p["requests_per_second"]),
                f"{number(p['p50_ms'])} / {number(p['p90_ms'])} / {number(p['p99_ms'])} / {number(p['max_ms'])}",
                f"{p['client_cpu_ms_per_request']:.2f} + {server * per if server is not None else 0:.2f} + "
                f"{pg * per if pg is not None else 0:.2f}",
                f"{p['machine_busy_cpu_seconds']:.1f} of {p['seconds'] * CORES:.1f}, "
                f"{p['machine_busy_cpu_seconds'] - p['client_cpu_seconds'] - (server or 0) - (pg or 0):.1f} outside",
                f"{p['non_2xx'] or 0} / {p['errors'] or 0}",
            ]
        )
    return {
        "title": "API under load through `babychain serve`",
        "command": cmd,
        "figures": figures,
        "details": [
            "16 client threads, one keep-alive HTTP/1.1 connection each (the lean raw-socket client), half with a "
            "database key and half with the bootstrap key; the engine claims, submits and fails each created run "
            "in the background (`--first-step fail`). One run of each phase: the spread is the latency "
            "distribution.",
            "",
            *table(
                [
                    "phase",
                    "requests",
                    "req/s",
                    "p50 / p90 / p99 / max ms",
                    "CPU ms per request: client + server + postgres",
                    "machine busy CPU-s of available, of it outside the bench",
                    "non-2xx / transport errors",
                ],
                rows,
            ),
        ],
        "raw": summary,
    }


def section_floor(quick: bool) -> dict[str, Any]:
    import round_trip_floor

    calls, rounds = (2000, 3) if quick else (5000, 5)
    cmd = f"python bench/round_trip_floor.py --calls {calls} --rounds {rounds}"
    measured = round_trip_floor.measure_in_throwaway_server(calls, rounds)
    figures = {}
    rows = []
    for name, f in measured.items():
        key = name.replace(", ", "_").replace(" ", "_")
        figures[f"{key}_backend_us"] = figure(
            f"backend CPU per call: {name}", f["backend_us"], "µs", better="lower", command=cmd
        )
        figures[f"{key}_client_us"] = figure(
            f"client CPU per call: {name}", f["client_us"], "µs", better="lower", command=cmd
        )
        rows.append([name, spread_text(figures[f"{key}_backend_us"]), spread_text(figures[f"{key}_client_us"])])
    return {
        "title": "The floor: one blocking round trip to Postgres on this machine",
        "command": cmd,
        "figures": figures,
        "details": [
            "One Unix-socket connection through raw libpq, as the store calls; CPU per call of the server backend "
            "(schedstat) and of the client (getrusage, user + system), median of the rounds, range in brackets. A "
            "chain3 run makes 6 transactions (5 flushed: create, take, 3 completions; the receive unflushed) and "
            "11 blocking round trips in its step executor (receive, take, 3 x (submit, download, complete)), so "
            "these figures times those counts are the part of its CPU that only fewer round trips or flushes "
            "could remove. Most of a bare round trip's cost here is the kernel's (context switches).",
            "",
            *table(["call", "backend µs", "client µs"], rows),
        ],
        "raw": measured,
    }


RUNNERS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "engine": section_engine,
    "webhook": section_webhook,
    "cold_start": section_cold_start,
    "history": section_history,
    "api": section_api,
    "floor": section_floor,
}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the results files are kept")
    parser.add_argument("--doc", type=Path, default=DOC, help="the markdown file to write")
    parser.add_argument("--render", action="store_true", help="only rewrite the doc from the results files")
    args = parser.parse_args(argv)
    if args.render:
        history = load_results(args.results_dir)
        if not history:
            parser.error(f"no results files in {args.results_dir}")
        args.doc.write_text(render_markdown(history[-1], history, PREAMBLE))
        print(f"wrote {args.doc} from {history[-1]['_file']}")
        return 0
    started = time.monotonic()
    now = datetime.now(UTC)
    result: dict[str, Any] = {
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "mode": "quick" if args.quick else "full",
        "command": "python bench/run_all.py"
        + (" --quick" if args.quick else "")
        + (f" --only {' '.join(args.only)}" if args.only else ""),
        "machine": machine_facts(),
        "load_average": {"start": load_text(os.getloadavg())},
        "sections": {},
    }
    failed = 0
    for name in args.only or SECTIONS:
        load = load_text(os.getloadavg())
        print(f"== {name} (load average {load})", flush=True)
        t0 = time.monotonic()
        try:
            section = RUNNERS[name](args.quick)
        except Exception as exc:  # a failed section is reported, the others still run
            failed += 1
            traceback.print_exc()
            section = {
                "title": name,
                "figures": {},
                "details": [f"**Failed**: `{type(exc).__name__}: {exc}`"],
                "status": "failed",
            }
        section["load_average"] = load
        section["seconds"] = round(time.monotonic() - t0, 1)
        section["details"] = [*section.get("details", []), "", f"Section time {section['seconds']} s."]
        if section.get("server_version"):
            result["machine"]["postgres"] = section["server_version"]
        result["sections"][name] = section
        print(f"== {name} done in {section['seconds']} s", flush=True)
    result["load_average"]["end"] = load_text(os.getloadavg())
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    name = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{result['git_commit'][:7]}-{result['mode']}.json"
    (results_dir / name).write_text(json.dumps(result, indent=1, default=str) + "\n")
    result["_file"] = name
    args.doc.write_text(render_markdown(result, load_results(results_dir), PREAMBLE))
    print(f"wrote {results_dir / name} and {args.doc} in {result['wall_seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
