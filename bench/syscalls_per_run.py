"""System calls per chain3 run of the one-machine engine's Python processes (strace -c), on the instant provider.

The engine and the stand-in provider are chain_throughput.py's. After one untimed warm-up run, `strace -f -c` is
attached to every engine process (the fork server too, so containers forked later are traced), split in two groups:
`api` (processes that listen on the API port) and `workers` (step executors, callback sender, sweeper, fork server).
Then exactly `--runs` chain3 runs are driven at `--concurrency`, strace is stopped, and each group's counts are
divided by the number of runs. Postgres, the stand-in and this process are not traced.

strace slows every traced call, so the timing-dependent counts (a poll that finds its data already there, the
queue's receives) differ from an untraced run; compare branches under the same settings.

`--cpu`: no strace; the same two groups' user and system CPU per run instead (psutil, sampled before and after the
runs; a container that starts meanwhile counts whole).

Usage: PYTHONPATH=shared:. python bench/syscalls_per_run.py [--runs 300] [--concurrency 16] [--top 25] [--cpu]
       [--by-message]   (every next step by its queue message, as chain_throughput.py --by-message)
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from chain_throughput import KEY, CompletionWatcher, ProviderProcess, drive

from babychain.local.runner import LocalEngine

_ROW = re.compile(r"^\s*(\d+)\s+(\d*)\s+(\w+)\s*$")


def _groups(provider_pid: int) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"api": [], "workers": []}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid == provider_pid or proc.name() == "postgres" or "strace" in proc.name():
                continue
            listening = any(c.status == psutil.CONN_LISTEN for c in proc.net_connections("tcp"))
        except psutil.NoSuchProcess:
            continue
        if "resource_tracker" in " ".join(proc.cmdline()):
            continue
        groups["api" if listening else "workers"].append(proc.pid)
    return groups


def _cpu(provider_pid: int) -> dict[str, dict[int, tuple[float, float, int, int]]]:
    """(user, system) CPU seconds and (voluntary, involuntary) context switches of each engine process, by group."""
    sample: dict[str, dict[int, tuple[float, float, int, int]]] = {}
    for group, pids in _groups(provider_pid).items():
        sample[group] = {}
        for pid in pids:
            try:
                process = psutil.Process(pid)
                times, switches = process.cpu_times(), process.num_ctx_switches()
            except psutil.NoSuchProcess:
                continue
            sample[group][pid] = (times.user, times.system, switches.voluntary, switches.involuntary)
    return sample


def _parse(path: Path) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for line in path.read_text().splitlines():
        match = _ROW.match(line)
        if match and match.group(3) != "total":
            counts[match.group(3)] = (int(match.group(1)), int(match.group(2) or 0))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cpu", action="store_true", help="user and system CPU per run, without strace")
    parser.add_argument("--by-message", action="store_true", help="every next step by its queue message")
    args = parser.parse_args()

    provider = ProviderProcess.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bc-syscalls-") as tmp:
            home = Path(tmp).resolve()
            engine = LocalEngine(
                home,
                overrides={
                    "api_keys": (KEY,),
                    "poll_interval_seconds": 0.05,
                    "local_provider_url": provider.url,
                    "local_provider_delay_seconds": 0.0,
                    "next_step_in_invocation": not args.by_message,
                },
            ).start()
            watcher = CompletionWatcher(engine.settings.database_url)
            tracers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
            try:
                drive(engine.base_url, watcher, 1, 1)  # warm-up: imports, first connections
                if args.cpu:
                    before = _cpu(provider.process.pid)
                    ids, errors, wall = drive(engine.base_url, watcher, args.runs, args.concurrency)
                    after = _cpu(provider.process.pid)
                else:
                    for group, pids in _groups(provider.process.pid).items():
                        out = home / f"strace-{group}.txt"
                        command = ["strace", "-f", "-c", "-U", "calls,errors,name", "-S", "calls", "-o", str(out)]
                        for pid in pids:
                            command += ["-p", str(pid)]
                        tracers[group] = (subprocess.Popen(command, stderr=subprocess.DEVNULL), out)
                    time.sleep(1.0)  # attached
                    ids, errors, wall = drive(engine.base_url, watcher, args.runs, args.concurrency)
                    time.sleep(0.2)
            finally:
                for tracer, _ in tracers.values():
                    tracer.send_signal(signal.SIGINT)
                for tracer, _ in tracers.values():
                    tracer.wait(30)
                results = {group: _parse(out) for group, (_, out) in tracers.items()}
                watcher.close()
                engine.stop()
    finally:
        provider.stop()

    if args.cpu:
        runs = len(ids)
        print(
            f"chain3, {runs} runs at concurrency {args.concurrency} in {wall:.2f} s ({runs / wall:.1f} runs/s, errors "
            f"{errors or 0}), load average {os.getloadavg()[0]:.2f}; CPU per run, ms"
        )
        for group in ("api", "workers"):
            old, new = before[group], after[group]
            total = [sum(new[pid][i] - old.get(pid, (0.0, 0.0, 0, 0))[i] for pid in new) / runs for i in range(4)]
            print(
                f"  {group:8s} user {total[0] * 1000:5.2f}  system {total[1] * 1000:5.2f}   context switches per run: "
                f"voluntary {total[2]:5.1f}, involuntary {total[3]:5.1f}"
            )
        return

    runs = len(ids)
    print(
        f"chain3, {runs} runs at concurrency {args.concurrency} in {wall:.2f} s under strace (errors {errors or 0}), "
        f"load average {os.getloadavg()[0]:.2f}; system calls per run"
    )
    for group, counts in results.items():
        total = sum(calls for calls, _ in counts.values())
        print(f"  {group}: {total / runs:.1f} per run")
        for name, (calls, failed) in sorted(counts.items(), key=lambda item: -item[1][0])[: args.top]:
            print(f"    {name:<18} {calls / runs:7.2f}" + (f"  ({failed / runs:.2f} failed)" if failed else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
