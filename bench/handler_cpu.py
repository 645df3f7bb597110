"""CPU of the engine's own Python per create request and per step message, measured in one process.

The create_run and step_executor Lambda handlers are called directly, as the one-machine shape calls them (an API
Gateway v2 event from `lambda_shim.http_event`; an SQS event from `lambda_shim.sqs_event`), against the embedded
Postgres and the instant provider of chain_throughput.py (a process of its own). Only the handler call is timed
(`time.process_time`, this process only): no uvicorn, no HTTP client, no queue receive, no Postgres server CPU. So
the figures are the handlers' own CPU, steadier than the engine bench's whole-machine accounting on a shared machine.
The step handler's CPU is also split into user and system time (`getrusage`): the system part (the output files'
folders and inodes, socket calls) moves with the machine's load far more than the Python part does.

    PYTHONPATH=shared:. .venv/bin/python bench/handler_cpu.py [--runs 200] [--profile create|step] [--json]

`--edge` sends the same requests through the one-machine HTTP edge instead (`http_server.ApiGatewayApp`, driven as
uvicorn drives it, in this process: the event built from the ASGI request, the handler, the reply), so the figures
include the edge's own work but not uvicorn's HTTP parsing. Each create is followed by a get of its run (`get_run`).

`--profile` runs the chosen handler under cProfile (CPU clock) and prints the top functions. `--calls` counts the Python
function calls of each handler instead (cProfile): a measure of the work that does not move with the machine's load.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from chain_throughput import CHAIN, KEY, ProviderProcess, create_body

from babychain.local.http_server import ApiGatewayApp
from babychain.local.lambda_shim import LambdaContext, http_event, load_handler, sqs_event
from babychain.local.runner import LocalEngine

ROUTE = "POST /api/v1/chains/{slug}/runs"
GET_ROUTE = "GET /api/v1/chains/get/{run_id}"


def create_headers(body: bytes, key: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {KEY}",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "idempotency-key": key,
        "user-agent": "handler-cpu",
    }


def get_event(run_id: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {KEY}", "user-agent": "handler-cpu"}
    return http_event("GET", f"/api/v1/chains/get/{run_id}", "", headers, b"", GET_ROUTE, {"run_id": run_id})


class EdgeDriver:
    """Calls `ApiGatewayApp` as uvicorn does (one ASGI request: scope, receive, send), answering as a handler would:
    a dict with statusCode and body."""

    def __init__(self, artifacts: Path) -> None:
        import asyncio

        self.app = ApiGatewayApp(artifacts)
        self.loop = asyncio.new_event_loop()

    def __call__(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> dict[str, Any]:
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "http_version": "1.1",
            "client": ("127.0.0.1", 50000),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        }
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, receive, send))
        return {"statusCode": sent[0]["status"], "body": b"".join(m.get("body", b"") for m in sent[1:]).decode()}


def create_event(body: bytes, key: str) -> dict[str, Any]:
    path = f"/api/v1/chains/{CHAIN}/runs"
    return http_event("POST", path, "", create_headers(body, key), body, ROUTE, {"slug": CHAIN})


def run(runs: int, profile: str | None, calls: bool = False, edge: bool = False) -> dict[str, Any]:
    provider = ProviderProcess.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bc-handler-cpu-") as tmp:
            engine = LocalEngine(
                Path(tmp),
                workers=False,
                api_workers=0,
                overrides={
                    "api_keys": (KEY,),
                    "local_provider_url": provider.url,
                    "local_provider_delay_seconds": 0.0,
                },
            ).start()
            try:
                return _measure(engine, runs, profile, calls, EdgeDriver(Path(tmp)) if edge else None)
            finally:
                engine.stop()
    finally:
        provider.stop()


def _measure(
    engine: LocalEngine, runs: int, profile: str | None, calls: bool, edge: EdgeDriver | None
) -> dict[str, Any]:
    # As the containers do: locally no metrics are shipped, and Powertools warns on every invocation without one.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    create = load_handler("create_run")
    step = load_handler("step_executor")
    get = load_handler("get_run")
    body = json.dumps(create_body()).encode()
    queue = engine.step_queue
    profiler = cProfile.Profile(time.process_time)  # CPU, not wall time (waiting on Postgres)
    counters = {"create": cProfile.Profile(), "step": cProfile.Profile(), "get": cProfile.Profile()}
    create_cpu: list[float] = []
    get_cpu: list[float] = []
    step_cpu: list[float] = []
    steps_done = 0
    step_user = step_sys = 0.0  # the step handler's CPU split: user (Python) and system (the kernel's share)
    for i in range(runs + 5):  # the first 5 warm up (first connections, caches)
        idempotency_key = f"bench-{i}-{os.getpid()}"
        event = create_event(body, idempotency_key)
        watching = counters["create"] if calls else profiler if profile == "create" else None
        if watching is not None and i >= 5:
            watching.enable()
        t0 = time.process_time()
        if edge is not None:
            response = edge("POST", event["rawPath"], create_headers(body, idempotency_key), body)
        else:
            response = create(event, LambdaContext(function_name="create_run"))
        spent = time.process_time() - t0
        if watching is not None:
            watching.disable()
        if response["statusCode"] != 202:
            raise RuntimeError(f"create answered {response['statusCode']}: {response.get('body')}")
        if i >= 5:
            create_cpu.append(spent)
        run_id = json.loads(response["body"])["id"]
        event = get_event(run_id)
        watching = counters["get"] if calls else profiler if profile == "get" else None
        if watching is not None and i >= 5:
            watching.enable()
        t0 = time.process_time()
        if edge is not None:
            response = edge("GET", event["rawPath"], {"authorization": f"Bearer {KEY}", "user-agent": "handler-cpu"})
        else:
            response = get(event, LambdaContext(function_name="get_run"))
        spent = time.process_time() - t0
        if watching is not None:
            watching.disable()
        if response["statusCode"] != 200:
            raise RuntimeError(f"get answered {response['statusCode']}: {response.get('body')}")
        if i >= 5:
            get_cpu.append(spent)
        while (message := queue.take(timeout=0.0)) is not None:
            steps_done += 1
            sqs = sqs_event("local-steps", [(str(steps_done), message, 1)])
            watching = counters["step"] if calls else profiler if profile == "step" else None
            if watching is not None and i >= 5:
                watching.enable()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.process_time()
            answer = step(sqs, LambdaContext(function_name="step_executor"))
            spent = time.process_time() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            if i >= 5:
                step_user += r1.ru_utime - r0.ru_utime
                step_sys += r1.ru_stime - r0.ru_stime
            if watching is not None:
                watching.disable()
            if answer.get("batchItemFailures"):
                raise RuntimeError(f"step message failed: {message}")
            if i >= 5:
                step_cpu.append(spent)
    statuses = engine.store.call("bc_queue_stats", {"queue": "steps"}) if engine.store else None
    result = {
        "runs": runs,
        "create_ms_per_request": 1000 * statistics.fmean(create_cpu),
        "create_ms_median": 1000 * statistics.median(create_cpu),
        "get_ms_per_request": 1000 * statistics.fmean(get_cpu),
        "get_ms_median": 1000 * statistics.median(get_cpu),
        "edge": edge is not None,
        "step_messages": len(step_cpu),
        "step_ms_per_run": 1000 * sum(step_cpu) / runs,
        "step_ms_per_message_median": 1000 * statistics.median(step_cpu),
        "step_user_ms_per_run": 1000 * step_user / runs,
        "step_system_ms_per_run": 1000 * step_sys / runs,
        "queue": statuses,
        "load_average": os.getloadavg(),
    }
    if calls:
        result["create_calls_per_request"] = pstats.Stats(counters["create"]).total_calls / runs  # type: ignore[attr-defined]
        result["get_calls_per_request"] = pstats.Stats(counters["get"]).total_calls / runs  # type: ignore[attr-defined]
        result["step_calls_per_run"] = pstats.Stats(counters["step"]).total_calls / runs  # type: ignore[attr-defined]
    if profile:
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--profile", choices=("create", "get", "step"))
    parser.add_argument("--calls", action="store_true", help="count Python function calls (not timed)")
    parser.add_argument("--edge", action="store_true", help="send creates and gets through the HTTP edge (ASGI)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.runs, args.profile, args.calls, args.edge)
    edge_on = args.edge
    if args.json:
        print(json.dumps(result))
    elif args.calls:
        print(
            f"{result['runs']} {CHAIN} runs: {result['create_calls_per_request']:.0f} Python calls per create request, "
            f"{result['get_calls_per_request']:.0f} per get, {result['step_calls_per_run']:.0f} per run "
            f"in step messages ({result['step_messages']} messages)"
        )
    else:
        print(
            f"{result['runs']} {CHAIN} runs{' through the edge' if edge_on else ''}: "
            f"create {result['create_ms_per_request']:.2f} ms CPU per request "
            f"(median {result['create_ms_median']:.2f}); get {result['get_ms_per_request']:.2f} ms "
            f"(median {result['get_ms_median']:.2f}); steps {result['step_ms_per_run']:.2f} ms CPU per run over "
            f"{result['step_messages']} messages (median {result['step_ms_per_message_median']:.2f} ms per message; "
            f"user {result['step_user_ms_per_run']:.2f} + system {result['step_system_ms_per_run']:.2f} ms per run); "
            f"load average {' '.join(f'{x:.2f}' for x in result['load_average'])}"
        )


if __name__ == "__main__":
    main()
