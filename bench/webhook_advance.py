"""Provider completion → next step submitted: with BFL webhooks versus polling alone.

Runs chain1 in byok mode against the BFL and BytePlus stand-ins (real adapters, real HTTP on loopback) and measures,
for each run, the time from the BFL job turning Ready (the stand-in's own `end_time`) to the engine claiming the
video step (its `started_at`; the BytePlus submit follows in the same handler call).
Usage: python bench/webhook_advance.py [--runs 5] [--poll 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stand-ins live with the tests

from tests.standins.bfl import BflStandIn
from tests.standins.byteplus import BytePlusStandIn

from babychain.local.cli import demo_request
from babychain.local.runner import LocalEngine

KEY = "bc_bench_key_000000001"


def measure(webhooks: bool, runs: int, poll: float) -> list[float]:
    bfl = BflStandIn(delay_seconds=0.5).start()
    byteplus = BytePlusStandIn(delay_seconds=0.5).start()
    delays = []
    try:
        with tempfile.TemporaryDirectory() as home:
            overrides: dict[str, Any] = {
                "api_keys": (KEY,),
                "provider_mode": "byok",
                "poll_interval_seconds": poll,
                "bfl_api_key": bfl.api_key,
                "bfl_api_base_url": bfl.api_base,
                "ark_api_key": byteplus.api_key,
                "ark_api_base_url": byteplus.base_url,
                # Without a BFL webhook secret the adapter asks for no webhook: polling only.
                "bfl_webhook_secret": "bench-secret" if webhooks else "",
            }
            engine = LocalEngine(home, overrides=overrides).start()
            try:
                with httpx.Client(base_url=engine.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
                    for _ in range(runs):
                        body = demo_request("chain1", "")
                        body.pop("webhook_url")
                        run = client.post("/api/v1/chains/chain1/runs", json=body).json()
                        while run["steps"][1]["status"] == "queued" and run["status"] in ("queued", "running"):
                            time.sleep(0.01)
                            run = client.get(f"/api/v1/chains/get/{run['id']}").json()
                        job_id = run["steps"][0]["attempts"][-1]["job_id"]
                        ready = bfl.jobs[job_id].result["end_time"]  # type: ignore[index]
                        started = datetime.fromisoformat(run["steps"][1]["started_at"]).timestamp()
                        delays.append(started - ready)
            finally:
                engine.stop()
    finally:
        bfl.stop()
        byteplus.stop()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args()
    for webhooks in (True, False):
        delays = sorted(measure(webhooks, args.runs, args.poll))
        label = "webhook + poll fallback" if webhooks else "polling only        "
        print(
            f"{label}  poll every {args.poll:>4} s   completion -> next submit: "
            f"p50 {statistics.median(delays) * 1000:7.1f} ms   max {delays[-1] * 1000:7.1f} ms   (n={len(delays)})"
        )


if __name__ == "__main__":
    main()
