"""chain3 throughput of the one-machine engine when the provider costs nothing: the engine's own ceiling.

A loopback stand-in (a minimal asyncio HTTP/1.1 server) speaks the local provider's wire protocol (POST /v1/jobs, GET
and DELETE /v1/jobs/{id}) and answers every job as already `succeeded`, with a tiny real output (a 64x64 image in the
requested format, a 64x64 one-second MP4) that it serves itself. It runs in a process of its own (this file with
--provider-only), so its CPU and threads do not mix with the engine's. `LocalEngine(home,
overrides={"local_provider_url": <stand-in>, ...})` is pointed at it; an engine that ignores a preset
`local_provider_url` is detected and refused.

For each concurrency level, that many client threads (plain keep-alive `http.client` connections, the cheapest
client at hand: the bench shares the machine with the engine) each create a chain3 run through the API (no
webhook_url), wait for it to end and create the next. Completion is seen by one watcher that reads the runs' status
straight from Postgres every 10 ms, so waiting adds no API load. One untimed warm-up run goes first.

Reported per level, over the runs that ended (a run whose create or wait failed is counted as an error): runs/s,
steps/s; hop p50/p99 (next step's started_at - previous step's completed_at, from the run resource, as in
engine_overhead.py); whole-run p50/p99 (last completed_at - created_at); CPU per run of
  bench     this process (time.process_time): the client threads, the watcher and whatever engine work runs
            in-process (the supervisor), plus the watcher's Postgres backend
  children  every other descendant process but the stand-in (live ones via psutil, exited ones through their reaper)
  postgres  the embedded Postgres (processes named `postgres`: descendants, or the daemonized postmaster found by its
            data or socket folder, and all their children) but the watcher's backend
and, outside that total, the stand-in provider's own CPU per run; also the whole machine's busy CPU during the level
and how much of it was not this bench's (another workload on the machine skews the figures).

Usage: python bench/chain_throughput.py [--concurrency 1 4 16] [--runs 30 60 100] [--poll 0.05] [--by-message] [--json]
(`--runs N` alone uses N at every level. `--by-message`: BABYCHAIN_NEXT_STEP_IN_INVOCATION off, so every next step
goes by its queue message and the hop is the local queue's round trip instead of 0.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import io
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import psycopg
from machine import CORES, load_text, machine_idle_seconds, process_cpu_seconds
from PIL import Image, ImageDraw

from babychain.local import media
from babychain.local.cli import demo_request
from babychain.local.runner import LocalEngine
from babychain.media_types import content_type_for, extension_for, normalize_format

KEY = "bc_bench_key_000000001"
CHAIN = "chain3"
TERMINAL = ["succeeded", "failed", "canceled"]
RUN_TIMEOUT_SECONDS = 120.0


# ------------------------------------------------------------------------------------------------ instant provider


def tiny_outputs() -> dict[str, bytes]:
    """One small, real file per output format: 64x64 PNG, JPEG and WebP, and a 64x64 one-second H.264 MP4."""
    image = Image.new("RGB", (64, 64), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(240, 200, 60))
    outputs: dict[str, bytes] = {}
    for fmt in ("png", "jpeg", "webp"):
        buf = io.BytesIO()
        image.save(buf, format=fmt.upper())
        outputs[fmt] = buf.getvalue()
    outputs["mp4"] = media.image_to_video(outputs["png"], "instant", seed=1, duration_seconds=1.0, fps=4, max_side=64)
    return outputs


class InstantProvider:
    """A loopback server speaking the local provider's job API; every job is done when submitted.

    A minimal HTTP/1.1 server on asyncio (keep-alive, Content-Length bodies, one response per request in one write),
    served from a thread of its own: the stand-in plays a provider on another machine, so its CPU here should be as
    small as it can be. `http.server` parsed every request's headers with the email package, ~1.9 ms of CPU per
    chain3 run (6 requests) on the machine the engine shares; this costs a fraction of that.
    """

    def __init__(self) -> None:
        self.outputs = tiny_outputs()
        self.submits = 0
        self._jobs: dict[str, str] = {}  # job id -> output format
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="instant-provider", daemon=True)

    def start(self) -> InstantProvider:
        ready = threading.Event()
        self._loop.call_soon(ready.set)
        self._thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._sock.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._loop.create_server(lambda: _ProviderConnection(self), sock=self._sock))
        self._loop.run_forever()

    def submit(self, body: dict[str, Any]) -> dict[str, Any] | None:
        step_key = str(body.get("step_key", ""))
        fmt = "mp4" if step_key == "image_to_video" else normalize_format(body["request"].get("output_format") or "png")
        job_id = hashlib.sha256(str(body["idempotency_key"]).encode()).hexdigest()[:24]
        self._jobs[job_id] = fmt  # one serving thread: no lock needed
        self.submits += 1
        return self.job(job_id)

    def job(self, job_id: str) -> dict[str, Any] | None:
        fmt = self._jobs.get(job_id)
        if fmt is None:
            return None
        return {"id": job_id, "status": "succeeded", "output_url": f"{self.url}/files/{job_id}{extension_for(fmt)}"}

    def file(self, name: str) -> tuple[bytes, str] | None:
        suffix = name.rsplit(".", 1)[-1]
        if suffix not in ("png", "jpg", "webp", "mp4"):
            return None
        return self.outputs[normalize_format(suffix)], content_type_for(suffix)

    def answer(self, method: str, target: str, body: bytes) -> tuple[int, bytes, str]:
        """Status, body and content type for one request."""
        path = urlsplit(target).path
        found: dict[str, Any] | None = None
        if method == "POST" and path == "/v1/jobs":
            found = self.submit(json.loads(body))
        elif method == "GET" and path == "/stats":
            found = {"submits": self.submits}
        elif method == "GET" and path.startswith("/files/"):
            served = self.file(path.removeprefix("/files/"))
            if served is not None:
                return 200, *served
        elif method in ("GET", "DELETE") and path.startswith("/v1/jobs/"):
            found = self.job(path.removeprefix("/v1/jobs/"))  # DELETE: already done, nothing to cancel
        if found is None:
            return 404, json.dumps({"error": {"code": "not_found"}}).encode(), "application/json"
        return 200, json.dumps(found).encode(), "application/json"


class _ProviderConnection(asyncio.Protocol):
    """One client connection of the stand-in: requests parsed as they arrive, answered in order."""

    def __init__(self, provider: InstantProvider) -> None:
        self.provider = provider
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            request_line, *header_lines = self.buffer[:head_end].decode("latin-1").split("\r\n")
            headers = {n.strip().lower(): v.strip() for n, _, v in (h.partition(":") for h in header_lines)}
            method, target, _version = request_line.split(" ", 2)
            if "chunked" in headers.get("transfer-encoding", ""):
                self._reply(400, b"chunked request bodies are not spoken here", "text/plain", close=True)
                return
            end = head_end + 4 + int(headers.get("content-length") or 0)
            if len(self.buffer) < end:
                return  # the rest of the body is on its way
            body, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
            status, payload, content_type = self.provider.answer(method, target, body)
            self._reply(status, payload, content_type, close=headers.get("connection", "").lower() == "close")

    def _reply(self, status: int, payload: bytes, content_type: str, *, close: bool) -> None:
        assert self.transport is not None
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
        self.transport.write(head.encode() + (b"Connection: close\r\n\r\n" if close else b"\r\n") + payload)
        if close:
            self.transport.close()
            self.buffer = b""


def serve_provider() -> None:
    """--provider-only: serve the stand-in, print its URL, and exit when stdin closes."""
    provider = InstantProvider().start()
    print(provider.url, flush=True)
    sys.stdin.read()
    provider.stop()


@dataclass
class ProviderProcess:
    url: str
    process: subprocess.Popen[str]

    @classmethod
    def start(cls) -> ProviderProcess:
        process = subprocess.Popen(
            [sys.executable, __file__, "--provider-only"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            process.kill()
            raise RuntimeError(f"the instant provider did not start: {url!r}")
        return cls(url, process)

    def submits(self) -> int:
        count: int = httpx.get(self.url + "/stats").json()["submits"]
        return count

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ------------------------------------------------------------------------------------------------ CPU accounting


def postgres_markers(home: Path, dsn: str) -> list[str]:
    """What a postmaster's command line carries for this engine: the home folder, or the DSN's socket folder."""
    return [str(home), *(h for h in parse_qs(urlsplit(dsn).query).get("host", []) if h.startswith("/"))]


@dataclass
class CpuSample:
    bench: float  # this process's own threads, and the Postgres backends that serve them (the watcher's)
    children: float  # descendants but Postgres and the stand-in, plus every child this process has reaped
    postgres: float
    provider: float  # the stand-in provider process
    machine_idle: float
    clock: float  # time.monotonic() when sampled

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(
            self.bench - other.bench,
            self.children - other.children,
            self.postgres - other.postgres,
            self.provider - other.provider,
            self.machine_idle - other.machine_idle,
            self.clock - other.clock,
        )

    def machine_busy(self) -> float:
        """Of a difference of samples: CPU seconds the whole machine was busy in between."""
        return self.clock * CORES - self.machine_idle


def sample_cpu(markers: list[str], provider_pid: int, bench_backends: tuple[int, ...] = ()) -> CpuSample:
    """`bench_backends`: Postgres backends that serve this bench, not the engine (counted as bench, not postgres)."""
    me = psutil.Process()
    reaped = me.cpu_times()
    children, postgres, bench_postgres = reaped.children_user + reaped.children_system, 0.0, 0.0
    procs = {p.pid: p for p in me.children(recursive=True) if p.pid != provider_pid}
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if proc.info["name"] == "postgres" and any(m in cmdline for m in markers):
            procs[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                procs.update((p.pid, p) for p in proc.children(recursive=True))
    for proc in procs.values():
        try:
            is_postgres = proc.name() == "postgres"
        except psutil.Error:
            continue
        if is_postgres and proc.pid in bench_backends:
            bench_postgres += process_cpu_seconds(proc)
        elif is_postgres:
            postgres += process_cpu_seconds(proc)
        else:
            children += process_cpu_seconds(proc)
    provider = process_cpu_seconds(psutil.Process(provider_pid))
    return CpuSample(
        time.process_time() + bench_postgres, children, postgres, provider, machine_idle_seconds(), time.monotonic()
    )


# ------------------------------------------------------------------------------------------------ driving runs


class CompletionWatcher:
    """Reads the status of the runs being waited for from Postgres every `interval` seconds; wakes their waiters.

    `backend_pid` is its Postgres backend: its CPU is the bench's, not the engine's (see `sample_cpu`).
    """

    def __init__(self, dsn: str, interval: float = 0.01) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        self.backend_pid: int = self._conn.info.backend_pid
        self._interval = interval
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="completion-watcher", daemon=True)
        self._thread.start()

    def wait(self, run_id: str, timeout: float) -> None:
        done = threading.Event()
        with self._lock:
            self._waiting[run_id] = done
        if not done.wait(timeout):
            raise TimeoutError(f"run {run_id} did not end within {timeout:.0f} s")

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = list(self._waiting)
            if not ids:
                continue
            rows = self._conn.execute(
                "select id::text from chain_runs where id = any(%s::uuid[]) and status = any(%s)", (ids, TERMINAL)
            ).fetchall()
            with self._lock:
                for (run_id,) in rows:
                    self._waiting.pop(run_id).set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def create_body() -> dict[str, Any]:
    body = demo_request(CHAIN, "")
    body.pop("webhook_url")
    return body


class CreateRefused(Exception):
    """The API did not answer a create with 202."""


def drive(
    base_url: str,
    watcher: CompletionWatcher,
    runs: int,
    concurrency: int,
    at_start: Callable[[], object] | None = None,
) -> tuple[list[str], dict[str, int], float]:
    """`concurrency` threads create a run, wait for it to end, repeat, until `runs` runs were tried.

    Each thread is a plain keep-alive HTTP/1.1 client (`http.client`) sending the same encoded body: the load
    generator shares the machine with the engine, so it should cost as little as it can (httpx cost ~1 ms of CPU
    per create here). `at_start` is called once every thread has connected, before the clock starts and before any
    thread sends its first create.
    Returns the ids of the runs that ended, the errors of those that did not (by exception name) and the wall time.
    """
    counter = itertools.count()
    ids: list[str] = []
    failures: Counter[str] = Counter()
    gate = threading.Barrier(concurrency + 1)  # every thread connected
    go = threading.Event()  # at_start has run and the clock started
    target = urlsplit(base_url)
    path = f"{target.path.rstrip('/')}/api/v1/chains/{CHAIN}/runs"
    body = json.dumps(create_body()).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def create(conn: http.client.HTTPConnection) -> str:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status != 202:
            raise CreateRefused(f"HTTP {response.status}: {answer[:200]!r}")
        run_id: str = json.loads(answer)["id"]
        return run_id

    def worker() -> None:
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
        conn.request("GET", "/api/health")  # connect before the clock starts, not all at once after it
        conn.getresponse().read()
        gate.wait()
        go.wait()
        try:
            while next(counter) < runs:  # itertools.count is atomic under the GIL
                try:
                    run_id = create(conn)
                    watcher.wait(run_id, RUN_TIMEOUT_SECONDS)
                    ids.append(run_id)
                except (OSError, http.client.HTTPException, CreateRefused, TimeoutError) as exc:
                    failures[type(exc).__name__] += 1  # counted and reported; the thread carries on
                    conn.close()  # http.client reconnects on the next request
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, name=f"driver-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    gate.wait()
    if at_start is not None:
        at_start()
    started = time.monotonic()
    go.set()
    for thread in threads:
        thread.join()
    return ids, dict(failures), time.monotonic() - started


# ------------------------------------------------------------------------------------------------ figures


def _t(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(p * len(xs)) - 1))] if xs else math.nan


@dataclass
class LevelResult:
    concurrency: int
    runs: int
    seconds: float
    runs_per_second: float
    steps_per_second: float
    hop_p50_ms: float
    hop_p99_ms: float
    run_p50_ms: float
    run_p99_ms: float
    bench_cpu_ms_per_run: float
    children_cpu_ms_per_run: float
    postgres_cpu_ms_per_run: float
    total_cpu_ms_per_run: float
    provider_cpu_ms_per_run: float
    machine_busy_cpu_seconds: float  # every process on the machine during the level
    outside_cpu_seconds: float  # the part of that not accounted to this bench (other work on the machine)
    statuses: dict[str, int]
    errors: dict[str, int]  # runs that did not end, by the client's exception


def measure(
    engine: LocalEngine, watcher: CompletionWatcher, cpu_of: Callable[[], CpuSample], runs: int, concurrency: int
) -> LevelResult:
    start: list[CpuSample] = []
    ids, errors, wall = drive(engine.base_url, watcher, runs, concurrency, at_start=lambda: start.append(cpu_of()))
    cpu = cpu_of() - start[0]
    with httpx.Client(base_url=engine.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        resources = [client.get(f"/api/v1/chains/get/{run_id}").json() for run_id in ids]
    statuses: dict[str, int] = {}
    for r in resources:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    done = [r for r in resources if r["status"] == "succeeded"]
    hops = [_t(b["started_at"]) - _t(a["completed_at"]) for r in done for a, b in itertools.pairwise(r["steps"])]
    totals = [_t(r["steps"][-1]["completed_at"]) - _t(r["created_at"]) for r in done]
    steps = sum(len(r["steps"]) for r in resources)

    def per_run(seconds: float) -> float:
        return round(seconds * 1000 / max(1, len(ids)), 1)

    return LevelResult(
        concurrency=concurrency,
        runs=len(ids),
        seconds=round(wall, 2),
        runs_per_second=round(len(ids) / wall, 2),
        steps_per_second=round(steps / wall, 2),
        hop_p50_ms=round(percentile(hops, 0.5) * 1000, 1),
        hop_p99_ms=round(percentile(hops, 0.99) * 1000, 1),
        run_p50_ms=round(percentile(totals, 0.5) * 1000, 1),
        run_p99_ms=round(percentile(totals, 0.99) * 1000, 1),
        bench_cpu_ms_per_run=per_run(cpu.bench),
        children_cpu_ms_per_run=per_run(cpu.children),
        postgres_cpu_ms_per_run=per_run(cpu.postgres),
        total_cpu_ms_per_run=per_run(cpu.bench + cpu.children + cpu.postgres),
        provider_cpu_ms_per_run=per_run(cpu.provider),
        machine_busy_cpu_seconds=round(cpu.machine_busy(), 2),
        outside_cpu_seconds=round(cpu.machine_busy() - cpu.bench - cpu.children - cpu.postgres - cpu.provider, 2),
        statuses=statuses,
        errors=errors,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--runs", type=int, nargs="+", default=[30, 60, 100], help="runs per level (or one for all)")
    parser.add_argument("--poll", type=float, default=0.05, help="the engine's poll_interval_seconds")
    parser.add_argument("--by-message", action="store_true", help="every next step by its queue message")
    parser.add_argument("--json", action="store_true", help="also print a one-line JSON summary")
    parser.add_argument("--provider-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.provider_only:
        serve_provider()
        return {}
    runs = args.runs if len(args.runs) == len(args.concurrency) else [args.runs[0]] * len(args.concurrency)

    load_before = os.getloadavg()
    provider = ProviderProcess.start()
    results: list[LevelResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bc-chain-throughput-") as tmp:
            home = Path(tmp).resolve()
            engine = LocalEngine(
                home,
                overrides={
                    "api_keys": (KEY,),
                    "poll_interval_seconds": args.poll,
                    "local_provider_url": provider.url,
                    "local_provider_delay_seconds": 0.0,
                    "next_step_in_invocation": not args.by_message,
                },
            ).start()
            watcher = CompletionWatcher(engine.settings.database_url)
            try:
                markers = postgres_markers(home, engine.settings.database_url)

                def cpu_of() -> CpuSample:
                    return sample_cpu(markers, provider.process.pid, (watcher.backend_pid,))

                warm = measure(engine, watcher, cpu_of, 1, 1)  # imports, first connections, caches
                if provider.submits() == 0 or warm.statuses != {"succeeded": 1}:
                    raise RuntimeError(
                        f"warm-up run: {warm.statuses}, {provider.submits()} submits reached the instant provider "
                        "(does LocalEngine honour a preset local_provider_url?)"
                    )
                for concurrency, count in zip(args.concurrency, runs, strict=True):
                    results.append(measure(engine, watcher, cpu_of, count, concurrency))
            finally:
                watcher.close()
                engine.stop()
    finally:
        provider.stop()
    load_after = os.getloadavg()

    print(f"{CHAIN} on an instant provider, poll interval {args.poll}s; CPU per run = bench + children + postgres")
    for r in results:
        print(
            f"  concurrency {r.concurrency:2d}: {r.runs:4d} runs in {r.seconds:6.2f} s  {r.runs_per_second:6.2f} runs/s"
            f"  {r.steps_per_second:6.2f} steps/s   hop p50 {r.hop_p50_ms:6.1f} p99 {r.hop_p99_ms:6.1f} ms"
            f"   run p50 {r.run_p50_ms:7.1f} p99 {r.run_p99_ms:7.1f} ms"
        )
        print(
            f"                  CPU/run {r.total_cpu_ms_per_run:6.1f} ms = {r.bench_cpu_ms_per_run:.1f} + "
            f"{r.children_cpu_ms_per_run:.1f} + {r.postgres_cpu_ms_per_run:.1f}"
            f"   (stand-in provider {r.provider_cpu_ms_per_run:.1f})   statuses {r.statuses}  errors {r.errors or 0}"
        )
        print(
            f"{'':18}machine busy {r.machine_busy_cpu_seconds:.2f} CPU-s of {r.seconds * CORES:.2f} available, "
            f"{r.outside_cpu_seconds:.2f} of it outside this bench"
        )
    print(f"  load average (1, 5, 15 min) before {load_text(load_before)}, after {load_text(load_after)}")
    summary = {
        "bench": "chain_throughput",
        "chain": CHAIN,
        "next_steps_by_message": args.by_message,
        "poll_interval_seconds": args.poll,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "levels": [asdict(r) for r in results],
    }
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
