"""API throughput and latency through `babychain serve`, from many client threads.

Starts `babychain serve` in a fresh home folder (after `babychain keys create` made a database key there), then:
  creates  every thread POSTs /api/v1/chains/chain1/runs, each request with its own prompt (no webhook_url)
  gets     every thread GETs /api/v1/chains/get/{id} of runs the creates made with the thread's key
Each thread has its own keep-alive HTTP/1.1 httpx.Client; half the threads use the database key, half the bootstrap
key (BABYCHAIN_API_KEY). One untimed create and get per thread warm connections and handler imports first.

The engine behind the API must stay quiet, or its background work competes with the API for the same two cores:
  --first-step fail     (default) the local provider answers each run's first submit with 400
                        (BABYCHAIN_LOCAL_PROVIDER_FAIL=text_to_image:submit_400), so every run costs the engine one
                        claim + submit + fail and then nothing more
  --first-step pending  the local provider's jobs stay pending for an hour (BABYCHAIN_LOCAL_PROVIDER_DELAY_SECONDS),
                        so nothing renders, but the engine polls every pending step at its poll interval
The bench sets BABYCHAIN_LOCAL_PROVIDER_DELAY_SECONDS=3600 in both modes.

Reported per phase: requests/s, latency p50/p90/p99/max, non-2xx answers and transport errors, the client's own CPU
(this process, time.process_time), when the bench started the server the server's CPU (its process tree; of it, the
API containers' alone: the uvicorn workers, which do none of the engine's background work) and the embedded
Postgres's CPU, and the whole machine's busy CPU (how much of it was not this bench's shows whether another
workload on the machine skewed the figures).

Usage:
  python bench/api_load.py [--threads 16] [--creates 2000] [--gets 5000] [--duration SECONDS] [--json]
  python bench/api_load.py --serve-arg=--workers --serve-arg=4     # extra arguments for `babychain serve`
  python bench/api_load.py --url http://127.0.0.1:8080 --key KEY_A [--key KEY_B]   # a server already running
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from machine import CORES, load_text, machine_idle_seconds, process_cpu_seconds

CHAIN = "chain1"
DEFAULT_KEY = "bc_local_dev_key_0001"  # `babychain serve`'s development key, for --url without --key
HEALTH_TIMEOUT_SECONDS = 180.0
FAIL_FIRST_SUBMIT = "text_to_image:submit_400"


# ------------------------------------------------------------------------------------------------ requests


def run_body(n: int) -> dict[str, Any]:
    """A webhook-less chain1 request (the shape of `babychain.local.cli.demo_request`), distinct per `n`."""
    return {
        "input": {
            "chain_models": {
                "text_to_image_model": "bfl/flux-2-flex",
                "image_to_video_model": "bytedance/seedance-1.5-pro",
            },
            "text_to_image_params": {
                "prompt": f"a lighthouse on a cliff at dawn, soft pastel sky, take {n}",
                "width": 1024,
                "height": 768,
                "prompt_upsampling": False,
                "seed": abs(n),  # seeds are validated as >= 0; warm-up requests use negative n
                "safety_tolerance": 5,
                "output_format": "jpeg",
            },
            "image_to_video_params": {
                "content": [{"type": "text", "text": f"slow push-in on the lighthouse, take {n}"}],
                "ratio": "16:9",
                "duration": 3,
                "watermark": False,
            },
        }
    }


# ------------------------------------------------------------------------------------------------ a lean client


class RawResponse:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.content = body

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise httpx.HTTPStatusError(f"HTTP {self.status_code}", request=None, response=None)  # type: ignore[arg-type]


class RawClient:
    """One keep-alive HTTP/1.1 connection on a plain socket: a load generator that leaves the cores to the server.

    httpx costs 0.6-0.9 ms of CPU per request, which on two cores is CPU the server under test does not get. This
    speaks just enough HTTP/1.1 for the API's answers (Content-Length framing, which is all the edge sends).
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": parts.netloc, **headers}.items())
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def _connect(self) -> None:
        self._sock = socket.create_connection(self.address, timeout=60)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self._sock.makefile("rb")

    def request(self, method: str, path: str, body: bytes = b"") -> RawResponse:
        try:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            head = f"{method} {path} HTTP/1.1\r\n{self.fixed}"
            if body:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            self._sock.sendall(head.encode("latin-1") + b"\r\n" + body)
            status = int(self._reader.readline().split(b" ", 2)[1])
            length, close = 0, False
            while (line := self._reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = self._reader.read(length) if length else b""
            if close:
                self.close()
            return RawResponse(status, data)
        except (OSError, ValueError, IndexError) as exc:
            self.close()
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}") from exc

    def get(self, path: str) -> RawResponse:
        return self.request("GET", path)

    def post(self, path: str, json: Any = None) -> RawResponse:
        return self.request("POST", path, _json_bytes(json) if json is not None else b"")

    def close(self) -> None:
        if self._sock is not None:
            self._reader.close()
            self._sock.close()
            self._sock = None


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------------------ CPU


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _listens_on(proc: psutil.Process, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections("tcp"))
    except psutil.Error:
        return False


def server_cpu(serve_pid: int, home: Path, port: int | None = None) -> dict[str, float]:
    """CPU seconds so far of the `serve` process tree and of the embedded Postgres whose data lives under `home`;
    with `port`, also of the API containers alone (`api`: the tree's processes listening on it, uvicorn's workers),
    part of `server`.

    pg_ctl daemonizes the postmaster, so it is found by its command line (`-D <home>/...`) rather than as a child.
    """
    seen: set[int] = set()
    totals = {"server": 0.0, "postgres": 0.0, "api": 0.0}
    roots = [psutil.Process(serve_pid)]
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(home) in " ".join(proc.info["cmdline"] or ()):
            roots.append(proc)
    for root in roots:
        for proc in _tree(root):
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                bucket = "postgres" if proc.name() == "postgres" else "server"
            except psutil.Error:
                continue
            spent = process_cpu_seconds(proc)
            totals[bucket] += spent
            if port is not None and bucket == "server" and _listens_on(proc, port):
                totals["api"] += spent
    return totals


# ------------------------------------------------------------------------------------------------ the server


@dataclass
class Server:
    url: str
    keys: list[str]
    pid: int | None = None
    home: Path | None = None

    def cpu(self) -> dict[str, float] | None:
        if self.pid is None or self.home is None:
            return None
        return server_cpu(self.pid, self.home, urlsplit(self.url).port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"serve did not answer /api/health within {HEALTH_TIMEOUT_SECONDS:.0f} s:\n{log.read_text()}")


def _stop_postgres(home: Path) -> None:
    """Stops a postmaster left behind under `home` (serve stops it itself when it exits cleanly)."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and f"-D {home}" in " ".join(proc.info["cmdline"] or ()):
            proc.terminate()
            try:
                proc.wait(15)
            except psutil.TimeoutExpired:
                proc.kill()


@contextmanager
def started_server(python: str, serve_args: list[str], first_step: str) -> Iterator[Server]:
    """`babychain keys create` then `babychain serve` on a free port, in a throwaway home folder."""
    home = Path(tempfile.mkdtemp(prefix="bc-api-load-")).resolve()
    bootstrap = "bc_bench_" + secrets.token_urlsafe(24)
    env = {**os.environ, "BABYCHAIN_API_KEY": bootstrap, "BABYCHAIN_LOCAL_PROVIDER_DELAY_SECONDS": "3600"}
    if first_step == "fail":
        env["BABYCHAIN_LOCAL_PROVIDER_FAIL"] = FAIL_FIRST_SUBMIT
    cli = [python, "-m", "babychain.local.cli", "--home", str(home)]
    log = home / "serve.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        created = subprocess.run(
            [*cli, "keys", "create", "--name", "api-load"], env=env, capture_output=True, text=True, timeout=180
        )
        found = re.findall(r"\bbc_[A-Za-z0-9_-]{20,}", created.stdout)
        if created.returncode != 0 or not found:
            raise RuntimeError(f"keys create failed ({created.returncode}):\n{created.stdout}\n{created.stderr}")
        port = _free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*cli, "serve", "--port", str(port), *serve_args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, log)
        yield Server(url=url, keys=[found[-1], bootstrap], pid=proc.pid, home=home)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _stop_postgres(home)
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ load phases


@dataclass
class PhaseResult:
    phase: str
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: dict[str, int]
    errors: dict[str, int]
    client_cpu_seconds: float
    client_cpu_ms_per_request: float
    server_cpu_seconds: float | None = None
    postgres_cpu_seconds: float | None = None
    api_cpu_seconds: float | None = None  # of server_cpu_seconds: the API containers (uvicorn workers) alone
    machine_busy_cpu_seconds: float = 0.0  # every process on the machine, from the kernel's counters


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p * len(sorted_values)) - 1))]


# A request: (client, thread index, request number) -> response. Raises httpx.HTTPError on transport failure.
Request = Callable[[Any, int, int], Any]  # (client, thread, n) -> response


def run_phase(
    name: str,
    server: Server,
    clients: list[Any],
    request: Request,
    *,
    total: int,
    duration: float | None,
    on_response: Callable[[int, httpx.Response], None] | None = None,
    rate: float | None = None,
) -> PhaseResult:
    """Runs `request` from one thread per client until `total` requests were sent (or `duration` seconds passed).

    Without `rate` every thread sends its next request as soon as the last one is answered (closed loop: the
    throughput the server can give 16 callers). With `rate` (requests/s over all threads) the requests are sent on a
    schedule (open loop), and each latency is counted from the request's scheduled time, so a server that falls
    behind shows it in the latency instead of quietly slowing the schedule (no coordinated omission).
    """
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in clients]
    statuses: list[Counter[str]] = [Counter() for _ in clients]
    errors: list[Counter[str]] = [Counter() for _ in clients]
    start_gate = threading.Barrier(len(clients) + 1, action=lambda: _set_schedule_start())
    deadline = math.inf
    schedule_start = 0.0

    def _set_schedule_start() -> None:
        nonlocal schedule_start
        schedule_start = time.perf_counter() + 0.01

    def worker(t: int) -> None:
        client, mine, codes, failures = clients[t], latencies[t], statuses[t], errors[t]
        start_gate.wait()
        while True:
            n = next(counter)  # itertools.count is atomic under the GIL
            if (duration is None and n >= total) or time.monotonic() >= deadline:
                return
            began = time.perf_counter()
            if rate is not None:
                due = schedule_start + n / rate
                if due > began:
                    time.sleep(due - began)
                began = due
            try:
                response = request(client, t, n)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
                continue
            mine.append(time.perf_counter() - began)
            if not 200 <= response.status_code < 300:
                codes[str(response.status_code)] += 1
            elif on_response is not None:
                on_response(t, response)

    threads = [threading.Thread(target=worker, args=(t,), name=f"{name}-{t}") for t in range(len(clients))]
    for thread in threads:
        thread.start()
    server_before = server.cpu()
    idle_before, cpu_before = machine_idle_seconds(), time.process_time()
    started = time.monotonic()
    if duration is not None:
        deadline = started + duration
    start_gate.wait()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    cpu, idle = time.process_time() - cpu_before, machine_idle_seconds() - idle_before
    server_after = server.cpu()
    values = sorted(x for xs in latencies for x in xs)
    done = len(values) + sum(sum(c.values()) for c in errors)
    result = PhaseResult(
        phase=name,
        requests=done,
        seconds=round(seconds, 3),
        requests_per_second=round(len(values) / seconds, 1),
        p50_ms=round(percentile(values, 0.50) * 1000, 2),
        p90_ms=round(percentile(values, 0.90) * 1000, 2),
        p99_ms=round(percentile(values, 0.99) * 1000, 2),
        max_ms=round(values[-1] * 1000, 2) if values else math.nan,
        non_2xx=dict(sum(statuses, Counter())),
        errors=dict(sum(errors, Counter())),
        client_cpu_seconds=round(cpu, 3),
        client_cpu_ms_per_request=round(cpu * 1000 / max(1, done), 3),
        machine_busy_cpu_seconds=round(seconds * CORES - idle, 2),
    )
    if server_before is not None and server_after is not None:
        result.server_cpu_seconds = round(server_after["server"] - server_before["server"], 3)
        result.postgres_cpu_seconds = round(server_after["postgres"] - server_before["postgres"], 3)
        result.api_cpu_seconds = round(server_after["api"] - server_before["api"], 3)
    return result


def bench(
    server: Server,
    threads: int,
    creates: int,
    gets: int,
    duration: float | None,
    create_rate: float | None = None,
    get_rate: float | None = None,
    client_kind: str = "raw",
) -> list[PhaseResult]:
    keys = [server.keys[t % len(server.keys)] for t in range(threads)]
    clients: list[Any] = [
        RawClient(server.url, {"Authorization": f"Bearer {key}"})
        if client_kind == "raw"
        else httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for key in keys
    ]
    ids: dict[str, list[str]] = {key: [] for key in keys}  # runs are readable only with the key that made them
    ids_lock = threading.Lock()
    create_path = f"/api/v1/chains/{CHAIN}/runs"
    try:
        for t, client in enumerate(clients):  # warm-up: connections, handler imports; not counted
            warm = client.post(create_path, json=run_body(-1 - t))
            warm.raise_for_status()
            client.get(f"/api/v1/chains/get/{warm.json()['id']}").raise_for_status()

        def remember(t: int, response: httpx.Response) -> None:
            run_id = response.json()["id"]
            with ids_lock:
                ids[keys[t]].append(run_id)

        create_phase = run_phase(
            "creates",
            server,
            clients,
            lambda client, _t, n: client.post(create_path, json=run_body(n)),
            total=creates,
            duration=duration,
            on_response=remember,
            rate=create_rate,
        )
        if not all(ids.values()):
            raise RuntimeError(f"no runs were created for some key: {create_phase}")
        get_phase = run_phase(
            "gets",
            server,
            clients,
            lambda client, t, n: client.get(f"/api/v1/chains/get/{ids[keys[t]][n % len(ids[keys[t]])]}"),
            total=gets,
            duration=duration,
            rate=get_rate,
        )
    finally:
        for client in clients:
            client.close()
    return [create_phase, get_phase]


# ------------------------------------------------------------------------------------------------ main


def _print_phase(r: PhaseResult) -> None:
    print(
        f"  {r.phase:<8} {r.requests:6d} req in {r.seconds:6.2f} s  {r.requests_per_second:7.1f} req/s   "
        f"p50 {r.p50_ms:7.1f}  p90 {r.p90_ms:7.1f}  p99 {r.p99_ms:7.1f}  max {r.max_ms:7.1f} ms"
    )
    print(f"           non-2xx {r.non_2xx or 0}  transport errors {r.errors or 0}")
    line = f"           CPU: client {r.client_cpu_seconds:.2f} s ({r.client_cpu_ms_per_request:.2f} ms/req)"
    if r.server_cpu_seconds is not None and r.postgres_cpu_seconds is not None:
        per = 1000 / max(1, r.requests)
        line += (
            f", server {r.server_cpu_seconds:.2f} s ({r.server_cpu_seconds * per:.2f} ms/req)"
            f", postgres {r.postgres_cpu_seconds:.2f} s ({r.postgres_cpu_seconds * per:.2f} ms/req)"
        )
        if r.api_cpu_seconds is not None:
            line += f"; of the server, API containers {r.api_cpu_seconds:.2f} s ({r.api_cpu_seconds * per:.2f} ms/req)"
    print(line)
    busy = f"           machine busy {r.machine_busy_cpu_seconds:.2f} CPU-s of {r.seconds * CORES:.2f} available"
    if r.server_cpu_seconds is not None and r.postgres_cpu_seconds is not None:
        ours = r.client_cpu_seconds + r.server_cpu_seconds + r.postgres_cpu_seconds
        busy += f", {r.machine_busy_cpu_seconds - ours:.2f} of it outside this bench"
    print(busy)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--creates", type=int, default=2000, help="requests in the creates phase")
    parser.add_argument("--gets", type=int, default=5000, help="requests in the gets phase")
    parser.add_argument("--duration", type=float, help="run each phase this many seconds instead of a count")
    parser.add_argument("--url", help="bench a server that is already running instead of starting one")
    parser.add_argument("--key", action="append", default=[], help="API key(s) for --url; threads alternate them")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for `babychain serve`")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs `babychain serve`")
    parser.add_argument("--first-step", choices=["fail", "pending"], default="fail", help="see the module docstring")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="load generator: plain sockets (lean) or httpx"
    )
    parser.add_argument("--create-rate", type=float, help="send creates on a schedule, this many per second in all")
    parser.add_argument("--get-rate", type=float, help="send gets on a schedule, this many per second in all")
    parser.add_argument("--json", action="store_true", help="also print a one-line JSON summary")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    if args.url:
        server = Server(url=args.url.rstrip("/"), keys=args.key or [DEFAULT_KEY])
        phases = bench(server, args.threads, args.creates, args.gets, args.duration, args.create_rate, args.get_rate)
    else:
        with started_server(args.python, args.serve_arg, args.first_step) as server:
            phases = bench(
                server,
                args.threads,
                args.creates,
                args.gets,
                args.duration,
                args.create_rate,
                args.get_rate,
                args.client,
            )
    load_after = os.getloadavg()

    where = args.url or f"babychain serve {' '.join(args.serve_arg)}".rstrip()
    print(
        f"{CHAIN} API load from {args.threads} threads ({args.client} client, keep-alive HTTP/1.1, one connection"
        f" each) on {where}"
    )
    if not args.url:
        print(f"  engine background: first step {args.first_step}")
    for name, rate in (("creates", args.create_rate), ("gets", args.get_rate)):
        print(f"  {name}: " + (f"open loop, {rate:g} req/s scheduled" if rate else "closed loop (as fast as answered)"))
    for phase in phases:
        _print_phase(phase)
    print(f"  load average (1, 5, 15 min) before {load_text(load_before)}, after {load_text(load_after)}")
    summary = {
        "bench": "api_load",
        "chain": CHAIN,
        "threads": args.threads,
        "client": args.client,
        "create_rate": args.create_rate,
        "get_rate": args.get_rate,
        "server": where,
        "first_step": None if args.url else args.first_step,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "phases": {p.phase: asdict(p) for p in phases},
    }
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
