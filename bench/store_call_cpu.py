"""Client CPU of one store call (`PostgresStore.call`) on a real embedded Postgres, against the psycopg cursor path.

Starts a throwaway embedded Postgres with the project's migrations, creates one three-step run, then times N calls
of a cheap function (`bc_get_run` of that run: a ~2 KB answer; `bc_health`: a tiny one) with `time.process_time`
of this process only (the server's CPU is not counted). Rows, interleaved round by round on the same pool:

  cursor  the call as it was before branch `storecall`: `pool.connection()`, then
          `conn.execute("select f(%s)", (Jsonb(params),)).fetchone()` (psycopg's cursor, query conversion, adapters)
  store   `PostgresStore.call` as it is now
  json    the floor inside Python: `json.dumps` of the parameters and `json.loads` of the answer, nothing else

Usage: PYTHONPATH=shared:. python bench/store_call_cpu.py [--calls 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from machine import cpu_us
from psycopg.types.json import Jsonb

from babychain.store.embedded import start_embedded_postgres
from babychain.store.migrations import apply_migrations
from babychain.store.postgres import PostgresStore


def run_body() -> dict[str, Any]:
    """A chain3-shaped run (three steps), as the create path stores it."""
    run_id = str(uuid.uuid4())
    kinds = [("text_to_image", "image"), ("image_to_image", "image"), ("image_to_video", "video")]
    return {
        "id": run_id,
        "owner_id": "bench:store-call",
        "chain_slug": "chain3",
        "chain_version": "2026-05-23",
        "mode": "local",
        "input": {"text_to_image_params": {"prompt": "a lighthouse at dusk, long exposure", "seed": 593}},
        "metadata": {"customer": "bench"},
        "webhook_url": "https://example.com/hook",
        "idempotency_key": None,
        "request_hash": "hash",
        "run_timeout_seconds": 3600.0,
        "callback_event_id": f"evt_{run_id}",
        "steps": [
            {
                "step_index": i,
                "step_key": key,
                "step_kind": kind,
                "model_identifier": f"local/{key}",
                "depends_on": [kinds[i - 1][0]] if i else [],
                "params": {"prompt": "a lighthouse at dusk", "width": 1024, "height": 768},
            }
            for i, (key, kind) in enumerate(kinds)
        ],
        "estimate": {"usd": 0.1},
    }


def cursor_call(store: PostgresStore, function: str, params: dict[str, Any]) -> Any:
    """`PostgresStore.call` before branch `storecall` (its error translation left out: nothing fails here)."""
    with store._pool.connection() as conn:
        row = conn.execute(f"select {function}(%s)", (Jsonb(params),)).fetchone()
    return row[0] if row else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bc-store-call-") as tmp:
        dsn, server = start_embedded_postgres(tmp, cleanup_mode="delete")
        apply_migrations(dsn)
        store = PostgresStore(dsn, max_size=2)
        try:
            run_id = store.create_run(run_body())["run"]["id"]
            cases = {"bc_get_run": {"run_id": run_id, "owner_id": None}, "bc_health": {}}
            rows: dict[str, Callable[[], object]] = {}
            for function, params in cases.items():
                answer = store.call(function, params)
                assert answer == cursor_call(store, function, params)  # the same answer both ways
                encoded = json.dumps(answer).encode()
                print(f"{function}: parameters {len(json.dumps(params))} B, answer {len(encoded)} B")
                rows[f"{function} cursor"] = lambda f=function, p=params: cursor_call(store, f, p)  # type: ignore[misc]
                rows[f"{function} store"] = lambda f=function, p=params: store.call(f, p)  # type: ignore[misc]
                rows[f"{function} json"] = lambda p=params, e=encoded: json.loads(e) and json.dumps(p)  # type: ignore[misc]
            for fn in rows.values():  # warm up
                cpu_us(fn, 50)
            samples: dict[str, list[float]] = {name: [] for name in rows}
            load = os.getloadavg()[0]
            for _ in range(args.rounds):
                for name, fn in rows.items():
                    samples[name].append(cpu_us(fn, args.calls))
            load = max(load, os.getloadavg()[0])
        finally:
            store.close()
            server.cleanup()
    print(f"client CPU per call, µs ({args.rounds} rounds of {args.calls} calls, interleaved; load ≤{load:.1f})")
    print(f"{'row':24} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in samples.items():
        print(f"{name:24} {statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}")


if __name__ == "__main__":
    main()
