"""Client CPU per outbound request of a step (provider submit and poll, output download), against the floor.

A keep-alive loopback server (the stand-ins' `QuietHandler`) runs in another process, so only the client's CPU is
counted (`time.process_time` of this process). Rows: `ProviderHttp` POST and GET (a provider submit and poll),
`fetch_bytes` of a small PNG (the output copy, media sniffing included), a bare `lean_http.fetch` POST (the client
under both), plain httpx (what both ran on before `lean_http`), and `http.client` as the floor of a Python HTTP/1.1
request; then the held request head of `lean_http` on and off, interleaved, with the server's CPU too.
Usage: PYTHONPATH=shared:. python bench/http_cpu.py [--calls 300] [--rounds 6]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable

import httpx
import psutil
from machine import cpu_us

from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.providers.http import ProviderHttp
from babychain.security import lean_http
from babychain.security.safe_http import fetch_bytes
from babychain.security.urls import system_resolver

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
ANSWER = {"id": "j1", "status": "succeeded", "output_url": "x"}


class Handler(QuietHandler, keep_alive=True):
    def do_GET(self) -> None:
        if self.path.endswith(".png"):
            self.send_bytes(200, PNG, "image/png")
        else:
            self.send_json(200, ANSWER)

    def do_POST(self) -> None:
        self.read_body()
        self.send_json(200, ANSWER)


def serve(port: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    server = LoopbackServer(Handler).start()
    port.put(server.port)
    while True:
        time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    ports: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(ports,), daemon=True)
    process.start()
    base = f"http://127.0.0.1:{ports.get(timeout=30)}"
    provider = ProviderHttp("bench")
    plain = httpx.Client()
    raw = http.client.HTTPConnection(base.removeprefix("http://"))
    body = {"model": "m", "request": {"prompt": "p" * 50}}

    def raw_post() -> None:
        raw.request("POST", "/v1/jobs", body=json.dumps(body), headers={"Content-Type": "application/json"})
        json.loads(raw.getresponse().read())

    rows: dict[str, Callable[[], object]] = {
        "ProviderHttp POST (submit)": lambda: provider.json_object(provider.send("POST", base + "/v1/jobs", body=body)),
        "ProviderHttp GET (poll)": lambda: provider.json_object(provider.send("GET", base + "/v1/jobs/j1")),
        "fetch_bytes PNG (output copy)": lambda: fetch_bytes(
            base + "/o.png", resolver=system_resolver, max_bytes=1 << 20, allow_loopback_http=True, media_kind="image"
        ),
        "lean_http.fetch POST": lambda: lean_http.fetch(
            "POST", base + "/v1/jobs", body=json.dumps(body).encode(), timeout=30
        ).json(),
        "plain httpx.Client POST": lambda: plain.post(base + "/v1/jobs", json=body).json(),
        "http.client POST (floor)": raw_post,
    }
    try:
        for name, fn in rows.items():
            cpu_us(fn, 50)
            values = [cpu_us(fn, args.calls) for _ in range(args.rounds)]
            print(f"{name:32s} median {statistics.median(values):6.0f} us CPU  (min {min(values):.0f})")
        server = psutil.Process(process.pid)
        submit = rows["ProviderHttp POST (submit)"]
        client: dict[int, list[float]] = {0: [], lean_http.HOLD_BYTES: []}
        peer: dict[int, list[float]] = {0: [], lean_http.HOLD_BYTES: []}
        hold = lean_http.HOLD_BYTES
        for _ in range(args.rounds):
            for size in (0, hold):
                lean_http.HOLD_BYTES = size  # 0: the head and the body go out in two writes
                before = sum(server.cpu_times()[:2])
                client[size].append(cpu_us(submit, args.calls))
                peer[size].append((sum(server.cpu_times()[:2]) - before) / args.calls * 1e6)
        lean_http.HOLD_BYTES = hold
        for size, label in ((0, "head and body apart"), (hold, "head held for the body")):
            print(
                f"POST, {label:24s} client {statistics.median(client[size]):5.0f} us, "
                f"server {statistics.median(peer[size]):5.0f} us CPU (medians of {args.rounds} rounds)"
            )
    finally:
        process.terminate()


if __name__ == "__main__":
    main()
