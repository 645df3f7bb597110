"""What one blocking round trip to Postgres costs on this machine, before any work: the floor under every store call.

Starts a throwaway embedded Postgres and sends, over one Unix-socket connection through raw libpq (as
`PostgresStore.call` does), N calls of each:

  select 1              the protocol round trip alone
  plpgsql, no write     a function shaped like the engine's (`security definer set search_path = ''`, jsonb in
                        and out) that writes nothing
  insert, unflushed     that function inserting one row, committed with `synchronous_commit = off` (as the local
                        queue's receive and acknowledgements commit)
  insert, flushed       the same insert, committed with the WAL flush (as the create, the take and each completion)

For each: the server backend's CPU per call (user and system, from /proc/<pid>/stat; the total also from
/proc/<pid>/schedstat, in nanoseconds), and this client's CPU per call (user and system, getrusage) with its
voluntary context switches. One chain3 run makes 6 such transactions (5 flushed) and 11 blocking round trips in its
step executor, so these figures times those counts are the part of "CPU per run" that no change to the engine's
code can remove without removing a round trip or a flush (bench/RESULTS.md, "The floor under a run").

Usage: PYTHONPATH=shared:. python bench/round_trip_floor.py [--calls 5000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile

import psutil
import psycopg
from machine import schedstat_ns

from babychain.store.embedded import start_embedded_postgres

SETUP = """
create table if not exists public.bench_floor (id bigserial primary key, note text not null check (note <> ''));
create or replace function public.bench_floor_read(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$ begin return p; end $$;
create or replace function public.bench_floor_write(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
    if (p->>'flush')::boolean is false then
        perform set_config('synchronous_commit', 'off', true);
    end if;
    insert into public.bench_floor (note) values ('x');
    return p;
end $$;
"""

CASES = {
    "select 1": b"select 1",
    "plpgsql, no write": b"""select public.bench_floor_read('{"a": 1}'::jsonb)""",
    "insert, unflushed": b"""select public.bench_floor_write('{"flush": false}'::jsonb)""",
    "insert, flushed": b"""select public.bench_floor_write('{"flush": true}'::jsonb)""",
}


def backend_cpu(backend: psutil.Process) -> tuple[float, float, float]:
    """The backend's user and system seconds (clock ticks) and its total on-CPU seconds (schedstat, ns)."""
    times = backend.cpu_times()
    return times.user, times.system, schedstat_ns(backend.pid) / 1e9


def client_cpu() -> tuple[float, float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_nvcsw


def measure(dsn: str, calls: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Each case's per-call figures, one value per round, in µs (switches: per call)."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(SETUP)
        pgconn = conn.pgconn
        backend = psutil.Process(conn.info.backend_pid)
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in CASES}
        for _ in range(rounds):
            for name, query in CASES.items():
                for _ in range(max(100, calls // 20)):  # warm: the function's plans cached
                    pgconn.exec_params(query, [])
                b0, c0 = backend_cpu(backend), client_cpu()
                for _ in range(calls):
                    pgconn.exec_params(query, [])
                b1, c1 = backend_cpu(backend), client_cpu()
                one = {
                    "backend_us": (b1[2] - b0[2]) / calls * 1e6,
                    "backend_user_us": (b1[0] - b0[0]) / calls * 1e6,
                    "backend_system_us": (b1[1] - b0[1]) / calls * 1e6,
                    "client_us": (c1[0] + c1[1] - c0[0] - c0[1]) / calls * 1e6,
                    "client_user_us": (c1[0] - c0[0]) / calls * 1e6,
                    "client_system_us": (c1[1] - c0[1]) / calls * 1e6,
                    "client_switches": (c1[2] - c0[2]) / calls,
                }
                for key, value in one.items():
                    samples[name].setdefault(key, []).append(round(value, 2))
            conn.execute("truncate public.bench_floor")
    return samples


def measure_in_throwaway_server(calls: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="bc-floor-") as tmp:
        dsn, server = start_embedded_postgres(tmp, cleanup_mode="delete")
        try:
            return measure(dsn, calls, rounds)
        finally:
            server.cleanup()


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    measured = measure_in_throwaway_server(args.calls, args.rounds)
    figures = {name: {key: statistics.median(values) for key, values in f.items()} for name, f in measured.items()}
    print(f"one blocking round trip to Postgres, µs per call (median of {args.rounds} rounds of {args.calls})")
    head = ("backend", "(user", "system)", "client user", "system", "switches")
    print(f"{'':20s} {head[0]:>8s} {head[1]:>7s} {head[2]:>8s} {head[3]:>12s} {head[4]:>7s} {head[5]:>9s}")
    for name, f in figures.items():
        print(
            f"{name:20s} {f['backend_us']:8.1f} {f['backend_user_us']:7.1f} {f['backend_system_us']:8.1f}"
            f" {f['client_user_us']:12.1f} {f['client_system_us']:7.1f} {f['client_switches']:9.2f}"
        )
    if args.json:
        print(json.dumps(measured))
    return measured


if __name__ == "__main__":
    main()
