"""How much time the engine itself adds to a chain, on one machine.

Runs chain3 on the local provider with no artificial provider delay and reads the stored timestamps:
  hop     = next step's started_at - previous step's completed_at (queue + claim + handoff, the engine's own cost)
  step    = completed_at - started_at (submit + polls + media generation + output copy)
  run     = last completed_at - run created_at
Usage: python bench/engine_overhead.py [--runs 10] [--concurrency 1] [--poll 0.05]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx

from babychain.local.cli import demo_request
from babychain.local.runner import LocalEngine

KEY = "bc_bench_key_000000001"


def _t(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def one_run(base_url: str) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        body = demo_request("chain3", "")
        body.pop("webhook_url")
        run = client.post("/api/v1/chains/chain3/runs", json=body).json()
        while run["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(0.02)
            run = client.get(f"/api/v1/chains/get/{run['id']}").json()
        result: dict[str, Any] = run
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        engine = LocalEngine(
            home,
            overrides={"api_keys": (KEY,), "local_provider_delay_seconds": 0.0, "poll_interval_seconds": args.poll},
        ).start()
        try:
            one_run(engine.base_url)  # warm-up: imports, first connections
            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                runs = list(pool.map(lambda _: one_run(engine.base_url), range(args.runs)))
            wall = time.monotonic() - started
        finally:
            engine.stop()
    assert all(r["status"] == "succeeded" for r in runs), [r["status"] for r in runs]
    hops = [_t(b["started_at"]) - _t(a["completed_at"]) for r in runs for a, b in itertools.pairwise(r["steps"])]
    first_claim = [_t(r["steps"][0]["started_at"]) - _t(r["created_at"]) for r in runs]
    totals = [_t(r["steps"][-1]["completed_at"]) - _t(r["created_at"]) for r in runs]
    per_kind: dict[str, list[float]] = {}
    for r in runs:
        for s in r["steps"]:
            per_kind.setdefault(s["step_key"], []).append(_t(s["completed_at"]) - _t(s["started_at"]))

    def fmt(xs: list[float]) -> str:
        xs = sorted(xs)
        return f"p50 {statistics.median(xs) * 1000:7.1f} ms   max {xs[-1] * 1000:7.1f} ms   (n={len(xs)})"

    print(f"chain3 x {args.runs}, concurrency {args.concurrency}, poll interval {args.poll}s, provider delay 0")
    print(f"  create -> first claim   {fmt(first_claim)}")
    print(f"  step hop (handoff)      {fmt(hops)}")
    for key, xs in per_kind.items():
        print(f"  step {key:<18} {fmt(xs)}")
    print(f"  whole run               {fmt(totals)}")
    print(f"  throughput              {args.runs / wall:.2f} runs/s over {wall:.1f} s")


if __name__ == "__main__":
    main()
