"""System calls per outbound request of a step (strace -c of this process), against a keep-alive loopback server.

The server is http_cpu.py's (another process). After 20 untimed requests, `strace -c` is attached to this process for
N requests of each kind: a `ProviderHttp` POST (a provider submit) and a `fetch_bytes` of a small PNG (the output
copy). Counts are per request.

Usage: PYTHONPATH=shared:bench:. python bench/http_syscalls.py [--requests 500]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

from http_cpu import serve

from babychain.providers.http import ProviderHttp
from babychain.security.safe_http import fetch_bytes
from babychain.security.urls import system_resolver

_ROW = re.compile(r"^\s*(\d+)\s+(\d*)\s+(\w+)\s*$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    ports: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(ports,), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{ports.get(timeout=30)}"
    provider = ProviderHttp("bench")
    body = {"model": "m", "request": {"prompt": "p" * 50}}
    kinds: dict[str, Callable[[], object]] = {
        "ProviderHttp POST": lambda: provider.json_object(provider.send("POST", base + "/v1/jobs", body=body)),
        "fetch_bytes PNG": lambda: fetch_bytes(
            base + "/o.png", resolver=system_resolver, max_bytes=1 << 20, allow_loopback_http=True, media_kind="image"
        ),
    }
    try:
        for name, request in kinds.items():
            for _ in range(20):
                request()
            out = f"/tmp/bc-http-syscalls-{os.getpid()}.txt"
            command = ["strace", "-c", "-U", "calls,errors,name", "-S", "calls", "-o", out, "-p", str(os.getpid())]
            tracer = subprocess.Popen(command, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # attached
            for _ in range(args.requests):
                request()
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            with open(out) as f:
                rows = [m.groups() for m in map(_ROW.match, f) if m and m.group(3) != "total"]
            os.unlink(out)
            counts = {call: int(calls) / args.requests for calls, _, call in rows}
            # strace's own wait for this process and its signal show up as a fraction of a call: not the request's.
            shown = ", ".join(f"{call} {n:.2f}" for call, n in counts.items() if n >= 0.01)
            print(f"{name:18s} {sum(n for n in counts.values() if n >= 0.01):5.2f} per request: {shown}")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
