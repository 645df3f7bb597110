"""Cold start per handler: how long importing each Lambda handler module takes in a fresh interpreter, side by side
with a bare Powertools `APIGatewayHttpResolver` + `Tracer` + `Logger` (the baseline) in the same environment.

  python bench/cold_start.py [--runs 10] [--modes venv,layer,layer-nopyc] [--tree [LABEL=]PATH ...] [--save PATH]
  python bench/cold_start.py --tree before=/tmp/before --tree after=.      # two checkouts, measured side by side
  python bench/cold_start.py --json [--quick]        # for bench/run_all.py: ends with one JSON line (rows, notes)

--quick: 5 rounds of the venv and the built layer (with its .pyc) only, about a minute on a quiet machine; the
default (10 rounds of all three modes) takes about four.

Modes (each measured for every handler and for the baselines; every round runs each target of each tree and mode
once, in an order that rotates from round to round, so that the machine's load falls on all of them alike):
  venv         the source tree on this project's venv: `shared/` on PYTHONPATH, bytecode cached in `__pycache__` as
               any development checkout does (the first, discarded run writes it).
  layer        the layers as the tree's `make layers` builds them, unpacked into one `/opt/python` as Lambda does, on
               a CPython 3.13 (the runtime's version), with the layers' `.pyc` files. The dependency layer is built
               from the same lock for this machine's architecture (`LAYER_ARCH`): the same Python files as the arm64
               layer, with extension modules this machine can load. A tree whose build ships no bytecode (before it
               did) is compiled here the way the Makefile now does it.
  layer-nopyc  the same files without any `.pyc`: Lambda's /opt is read-only, so nothing compiled is ever cached.

Every run is a new interpreter with a Lambda-like environment (AWS_LAMBDA_FUNCTION_NAME, LAMBDA_TASK_ROOT, the
template's POWERTOOLS_* variables), so Powertools' Tracer is on and patches what it patches on Lambda. The clock runs
from just before the import to just after it (time.perf_counter for wall, time.process_time for CPU): interpreter
start-up is not counted. Layer runs use `python3.13 -S` with PYTHONPATH set to the layers and a copy of the runtime's
boto3/botocore (pip-installed for 3.13 and compiled, as the runtime ships them), so that nothing of the measuring
interpreter's own site-packages is seen, and PYTHONDONTWRITEBYTECODE=1 (a read-only /opt). The handler's folder
(app.py alone, as SAM packages it) is first on sys.path, like /var/task.

Targets: `baseline` is the resolver with Powertools' default Tracer, which patches every library the X-Ray SDK
supports that can be imported (botocore, httpx, psycopg, sqlite3 here); `baseline, botocore+httpx` is the same with
the Tracer patching what the handlers' Tracer patches, so a handler's difference to it is the handler's own import
cost. `get_run + psycopg_pool` is get_run followed by the Postgres driver, which the handlers load on their first
invocation (the store) and the default baseline loads at import.

Per target: the median wall time of the import with its quartiles, the median CPU time with its quartiles, the median
of the per-round differences to each baseline (wall and CPU), the number of modules loaded and which heavy libraries
among them. The header gives the load average and how many cores the rest of the machine kept busy during the runs
(median): wall times on a busy machine mostly measure the others; CPU times much less so. `--wait-idle 0.85` waits
before each round for a quiet moment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from machine import CORES, load_text, machine_idle_seconds

REPO = Path(__file__).resolve().parents[1]
MODES = ("venv", "layer", "layer-nopyc")
MODE_LABELS = {"venv": "venv", "layer": "built layer", "layer-nopyc": "built layer without .pyc"}
QUICK_MODES = ("venv", "layer")
TARGET_MS = 20  # issue 10: each handler within 20 ms of the bare resolver with Tracer, in the built layer
BASELINE = "baseline"
WATCHED = {
    "pydantic": "pydantic",
    "catalog": "babychain.chains.catalog",
    "httpx": "httpx",
    "psycopg": "psycopg",
    "sqlite3": "sqlite3",
    "botocore": "botocore",
}
BASELINE_CODE = """
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

app = APIGatewayHttpResolver()
tracer = Tracer()
logger = Logger()


@app.get("/ping")
def ping():
    return {"ok": True}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event, context):
    return app.resolve(event, context)
"""
# The same resolver with the Tracer patching what the handlers' Tracer patches (babychain.observability): the
# difference to a handler is the handler's own import cost.
SAME_PATCHES = "baseline, botocore+httpx"
SAME_PATCHES_CODE = BASELINE_CODE.replace("Tracer()", 'Tracer(patch_modules=("botocore", "httpx"))')
EXTRA_TARGETS = {"get_run + psycopg_pool": ("get_run", "import app\nimport psycopg_pool")}
CHILD = """
import sys, time
sys.path.insert(0, {task!r})
_t0 = time.perf_counter()
_c0 = time.process_time()
{code}
_wall = time.perf_counter() - _t0
_cpu = time.process_time() - _c0
import json
print("COLDSTART " + json.dumps({{"wall_ms": _wall * 1000, "cpu_ms": _cpu * 1000, "modules": len(sys.modules),
    "loaded": {{name: module in sys.modules for name, module in {watched!r}.items()}}}}))
"""
# What template.yaml's Globals and Lambda itself put in the environment that Powertools reads at import.
LAMBDA_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "_HANDLER": "app.lambda_handler",
    "BABYCHAIN_PROVIDER_MODE": "byok",
    "BABYCHAIN_STORE": "postgres",
    "POWERTOOLS_SERVICE_NAME": "babychain",
    "POWERTOOLS_METRICS_NAMESPACE": "BabyChain/bench",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "LANG": "en_US.UTF-8",
    "TZ": ":UTC",
}


@dataclass
class Target:
    name: str
    function: str  # the handler folder whose LAMBDA_TASK_ROOT the run gets
    code: str


@dataclass
class Mode:
    name: str
    python: str
    flags: list[str]
    pythonpath: list[str]
    extra_env: dict[str, str] = field(default_factory=dict)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def git_describe(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


def find_python313(given: str | None) -> str:
    if given:
        return given
    found = subprocess.run(
        [sys.executable, str(REPO / "layers" / "find_python.py"), "3.13"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        raise SystemExit("The layer modes need a CPython 3.13: pass --python313 PATH (or use --modes venv).")
    return found.stdout.strip()


def has_pyc(python_dir: Path) -> bool:
    return any(python_dir.rglob("*.cpython-313.pyc"))


def compile_pyc(python313: str, python_dir: Path) -> None:
    """The Makefile's compile_layer, for a tree whose build does not do it."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    compileall = [python313, "-S", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash"]
    run([*compileall, "-d", "/opt/python", str(python_dir)], env=env)


def strip_pyc(python_dir: Path) -> None:
    for cache in sorted(python_dir.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)


def build_layers(tree: Path, work: Path, python313: str) -> dict[str, Any]:
    """`make layers` of the tree for this machine's architecture, unpacked twice: with and without bytecode."""
    build = work / "build"
    shutil.rmtree(build, ignore_errors=True)
    started = time.monotonic()
    make = ["make", "--no-print-directory", "-f", str(tree / "Makefile"), "layers", f"LAYERS_DIR={build}"]
    variables = [f"PYTHON={sys.executable}", f"LAYER_ARCH={platform.machine()}", f"LAYER_COMPILE_PYTHON={python313}"]
    run([*make, *variables], cwd=tree, timeout=900)
    info: dict[str, Any] = {"build_seconds": round(time.monotonic() - started, 1)}
    for variant in ("pyc", "nopyc"):
        opt = work / f"opt-{variant}" / "python"
        shutil.rmtree(opt.parent, ignore_errors=True)
        opt.mkdir(parents=True)
        for layer in ("shared", "dependencies"):  # Lambda extracts every layer into the same /opt
            shutil.copytree(build / layer / "python", opt, dirs_exist_ok=True, symlinks=True)
        if variant == "nopyc":
            strip_pyc(opt)
        elif not has_pyc(opt):
            compile_pyc(python313, opt)
            info["pyc"] = "compiled by this bench (the tree's build ships none)"
        else:
            info["pyc"] = "as built by the tree's Makefile"
    return info


def runtime_packages(work: Path, python313: str) -> Path:
    """boto3, botocore and s3transfer as the Lambda runtime provides them (same versions as this venv's)."""
    target = work / "runtime"
    if (target / "botocore").is_dir():
        return target
    try:
        pin = f"boto3=={metadata.version('boto3')}"
    except metadata.PackageNotFoundError:
        pin = "boto3"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    run([*pip, "--target", str(target), "--python-version", "3.13", "--only-binary=:all:", pin], timeout=600)
    run([python313, "-S", "-m", "compileall", "-q", "-j", "0", str(target)])
    return target


def task_dirs(tree: Path, work: Path, functions: list[str]) -> dict[str, Path]:
    """Each function's folder as SAM packages it (app.py alone), outside the tree so no cached bytecode comes along."""
    tasks = {}
    for function in functions:
        task = work / "task" / function
        shutil.rmtree(task, ignore_errors=True)
        task.mkdir(parents=True)
        shutil.copy2(tree / "functions" / function / "app.py", task / "app.py")
        tasks[function] = task
    return tasks


def child_env(mode: Mode, function: str, task: Path) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **LAMBDA_ENV}
    env.update(AWS_LAMBDA_FUNCTION_NAME=f"babychain-{function.replace('_', '-')}", LAMBDA_TASK_ROOT=str(task))
    env["PYTHONPATH"] = os.pathsep.join(mode.pythonpath)
    env.update(mode.extra_env)
    return env


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(share: float, max_wait: float) -> float:
    """Waits until a 2 s window finds at least `share` of all cores idle (or `max_wait` passes); returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait:
        idle, clock = machine_idle_seconds(), time.monotonic()
        time.sleep(2.0)
        if (machine_idle_seconds() - idle) / ((time.monotonic() - clock) * CORES) >= share:
            break
    return time.monotonic() - started


def measure(mode: Mode, target: Target, task: Path) -> dict[str, Any]:
    """One fresh interpreter importing the target; also how busy the rest of the machine was meanwhile (cores)."""
    code = CHILD.format(task=str(task), code=target.code, watched=WATCHED)
    idle, clock, children = machine_idle_seconds(), time.monotonic(), children_cpu_seconds()
    result = subprocess.run(
        [mode.python, *mode.flags, "-c", code],
        cwd=task,
        env=child_env(mode, target.function, task),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("COLDSTART ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{target.name} ({mode.name}) failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    elapsed = time.monotonic() - clock
    own = children_cpu_seconds() - children
    sample: dict[str, Any] = json.loads(lines[-1].removeprefix("COLDSTART "))
    sample["others_busy_cores"] = max(0.0, (elapsed * CORES - (machine_idle_seconds() - idle) - own) / elapsed)
    return sample


def paired_delta(samples: list[dict[str, Any]], baseline: list[dict[str, Any]], key: str) -> float:
    """The median over rounds of (this target - the baseline in the same round)."""
    return statistics.median(s[key] - b[key] for s, b in zip(samples, baseline, strict=True))


def summarize(
    samples: list[dict[str, Any]], baseline: list[dict[str, Any]], same_patches: list[dict[str, Any]]
) -> dict[str, Any]:
    walls = [s["wall_ms"] for s in samples]
    cpus = [s["cpu_ms"] for s in samples]
    q1, _, q3 = statistics.quantiles(walls, n=4) if len(walls) > 1 else (walls[0], 0, walls[0])
    cpu_q1, _, cpu_q3 = statistics.quantiles(cpus, n=4) if len(cpus) > 1 else (cpus[0], 0, cpus[0])
    return {
        "wall_p50": statistics.median(walls),
        "wall_q1": q1,
        "wall_q3": q3,
        "wall_min": min(walls),
        "wall_max": max(walls),
        "cpu_p50": statistics.median(cpus),
        "cpu_q1": cpu_q1,
        "cpu_q3": cpu_q3,
        "delta_wall_p50": paired_delta(samples, baseline, "wall_ms"),
        "delta_cpu_p50": paired_delta(samples, baseline, "cpu_ms"),
        "delta_same_patches_wall_p50": paired_delta(samples, same_patches, "wall_ms"),
        "delta_same_patches_cpu_p50": paired_delta(samples, same_patches, "cpu_ms"),
        "others_busy_cores_p50": statistics.median(s["others_busy_cores"] for s in samples),
        "modules": samples[-1]["modules"],
        "loaded": sorted(name for name, on in samples[-1]["loaded"].items() if on),
    }


def table(config: str, rows: dict[str, dict[str, Any]]) -> str:
    out = [
        f"**{config}**",
        "",
        "| target | wall p50 ms (q1-q3) | CPU p50 ms (q1-q3) | Δ vs baseline, wall / CPU ms | Δ vs baseline with the "
        "same patches, wall / CPU ms | modules | loads |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        delta = "-" if name == BASELINE else f"{r['delta_wall_p50']:+.0f} / {r['delta_cpu_p50']:+.0f}"
        same = "-"
        if name not in (BASELINE, SAME_PATCHES):
            same = f"{r['delta_same_patches_wall_p50']:+.0f} / {r['delta_same_patches_cpu_p50']:+.0f}"
        out.append(
            f"| {name} | {r['wall_p50']:.0f} ({r['wall_q1']:.0f}-{r['wall_q3']:.0f}) "
            f"| {r['cpu_p50']:.0f} ({r['cpu_q1']:.0f}-{r['cpu_q3']:.0f}) | {delta} | {same} | {r['modules']} "
            f"| {', '.join(r['loaded']) or '-'} |"
        )
    return "\n".join(out)


@dataclass
class Config:
    """One tree in one mode: what a round measures, target by target."""

    name: str
    label: str  # the tree's, when several are measured; "" otherwise
    mode: Mode
    targets: list[Target]
    tasks: dict[str, Path]


def tree_configs(label: str, tree: Path, args: argparse.Namespace, python313: str | None) -> tuple[list[Config], dict]:
    functions = args.functions or sorted(p.parent.name for p in tree.glob("functions/*/app.py"))
    work = args.work / label if len(args.tree) > 1 else args.work
    info: dict[str, Any] = {"tree": f"{tree} ({git_describe(tree)})"}
    if python313 and not args.reuse_build:
        print(f"building the layers of {tree} for {platform.machine()} ...", file=sys.stderr)
        info.update(build_layers(tree, work, python313))
    tasks = task_dirs(tree, work, functions)
    targets = [Target(BASELINE, functions[0], BASELINE_CODE), Target(SAME_PATCHES, functions[0], SAME_PATCHES_CODE)]
    targets += [Target(f, f, "import app") for f in functions]
    targets += [Target(n, f, code) for n, (f, code) in EXTRA_TARGETS.items() if f in functions]
    configs = []
    for name in args.modes:
        if name == "venv":
            mode = Mode(name, sys.executable, [], [str(tree / "shared")])
        else:
            assert python313 is not None
            runtime = runtime_packages(args.work, python313)
            opt = work / ("opt-pyc" if name == "layer" else "opt-nopyc") / "python"
            mode = Mode(name, python313, ["-S"], [str(opt), str(runtime)], {"PYTHONDONTWRITEBYTECODE": "1"})
        several = len(args.tree) > 1
        configs.append(Config(f"{label} {name}" if several else name, label if several else "", mode, targets, tasks))
    return configs, info


def measure_rounds(configs: list[Config], args: argparse.Namespace) -> tuple[dict, list[float]]:
    """Every target of every configuration once per round, in an order that rotates from round to round."""
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {c.name: {t.name: [] for t in c.targets} for c in configs}
    for config in configs:  # warm-up: the file cache, and the venv's __pycache__
        for target in config.targets:
            measure(config.mode, target, config.tasks[target.function])
    waits = []
    for round_no in range(args.runs):
        if args.wait_idle:
            waits.append(wait_for_idle(args.wait_idle, args.max_wait))
        for config in configs[round_no % len(configs) :] + configs[: round_no % len(configs)]:
            shift = round_no % len(config.targets)
            for target in config.targets[shift:] + config.targets[:shift]:
                sample = measure(config.mode, target, config.tasks[target.function])
                samples[config.name][target.name].append(sample)
        print(f"round {round_no + 1}/{args.runs} done", file=sys.stderr)
    return samples, waits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, help="measured runs per target and mode, after one warm-up (10; 5 quick)")
    parser.add_argument(
        "--modes", help=f"comma-separated, of {', '.join(MODES)} (all; quick: {', '.join(QUICK_MODES)})"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, the venv and the built layer only")
    parser.add_argument(
        "--tree",
        action="append",
        metavar="[LABEL=]PATH",
        help="a checkout to measure (default: this one); repeat to measure several side by side, e.g. "
        "--tree before=/tmp/before --tree after=.",
    )
    parser.add_argument("--functions", help="comma-separated handler folders (default: every functions/*/app.py)")
    parser.add_argument("--python313", help="the CPython 3.13 of the layer modes (default: layers/find_python.py)")
    parser.add_argument("--work", type=Path, help="where layers are built and unpacked (default: build/cold_start)")
    parser.add_argument("--reuse-build", action="store_true", help="measure the layers the last run built")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="before each round, wait for a 2 s window with this share of all cores idle (e.g. 0.85; 0: never)",
    )
    parser.add_argument("--max-wait", type=float, default=120.0, help="longest wait for an idle window, seconds")
    parser.add_argument("--save", type=Path, help="also write every sample and the summary here (JSON)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args(argv)
    args.runs = args.runs or (5 if args.quick else 10)
    args.modes = [m for m in (args.modes or ",".join(QUICK_MODES if args.quick else MODES)).split(",") if m]
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    trees = []
    for given in args.tree or [str(REPO)]:
        label, _, path = given.rpartition("=")
        trees.append((label or Path(path).resolve().name, Path(path).resolve()))
    args.tree = trees
    args.functions = args.functions.split(",") if args.functions else None
    args.work = (args.work or REPO / "build" / "cold_start").resolve()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    python313 = find_python313(args.python313) if any(m != "venv" for m in args.modes) else None
    configs: list[Config] = []
    trees: dict[str, Any] = {}
    for label, tree in args.tree:
        tree_config, trees[label] = tree_configs(label, tree, args, python313)
        configs += tree_config

    load_before = os.getloadavg()
    samples, waits = measure_rounds(configs, args)
    load_after = os.getloadavg()

    summary = {
        config: {name: summarize(runs, targets[BASELINE], targets[SAME_PATCHES]) for name, runs in targets.items()}
        for config, targets in samples.items()
    }
    header = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "trees": trees,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": f"{load_text(load_before)} before, {load_text(load_after)} after",
        "others_busy_cores_p50": {
            config: round(statistics.median(r["others_busy_cores_p50"] for r in rows.values()), 2)
            for config, rows in summary.items()
        },
        "idle_waits_s": [round(w, 1) for w in waits],
        "python": {
            c.mode.name: run([c.mode.python, "-S", "-c", "import sys; print(sys.version.split()[0])"]).stdout.strip()
            for c in configs
        },
        "runs": args.runs,
        "command": " ".join(["python", "bench/cold_start.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print("\n".join(f"{key}: {value}" for key, value in header.items()))
    for config, rows in summary.items():
        print()
        print(table(config, rows))
    result = {"header": header, "summary": summary, "samples": samples}
    if args.save:
        args.save.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.json:
        print(json.dumps(harness_json(configs, summary, header)))
    return result


def harness_json(configs: list[Config], summary: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """bench/run_all.py's cold-start interface: one row per target and configuration (wall ms), and notes."""
    rows = []
    verdicts = []
    for config in configs:
        where = MODE_LABELS[config.mode.name] + (f", {config.label}" if config.label else "")
        for name, r in summary[config.name].items():
            row = {"name": f"{name}, {where}", "median": round(r["wall_p50"], 1)}
            row.update(min=round(r["wall_min"], 1), max=round(r["wall_max"], 1), n=header["runs"])
            row["CPU median"] = round(r["cpu_p50"], 1)
            row["vs baseline"] = "" if name == BASELINE else f"{r['delta_wall_p50']:+.0f}"
            rows.append(row)
            handler = name not in (BASELINE, SAME_PATCHES) and name not in EXTRA_TARGETS
            if config.mode.name == "layer" and handler:
                verdicts.append((r["delta_wall_p50"], f"{name}{f' ({config.label})' if config.label else ''}"))
    met = [f"{who} {delta:+.0f}" for delta, who in sorted(verdicts) if delta <= TARGET_MS]
    missed = [f"{who} {delta:+.0f}" for delta, who in sorted(verdicts) if delta > TARGET_MS]
    notes = [
        "Import of each handler module in a fresh interpreter with a Lambda-like environment (the Tracer on), wall ms; "
        "'vs baseline' is the median of per-round differences to the bare APIGatewayHttpResolver + Tracer() + Logger() "
        "in the same configuration. 'baseline, botocore+httpx' patches what the handlers' Tracer patches. Built "
        "layer: `make layers` for this machine's architecture, unpacked into one /opt/python, CPython 3.13 -S.",
        f"Target: each handler within {TARGET_MS} ms of the baseline in the built layer. Met: "
        f"{', '.join(met) or 'none'}. Not met: {', '.join(missed) or 'none'}.",
        f"Load average {header['load_average']}; the rest of the machine kept "
        f"{max(header['others_busy_cores_p50'].values(), default=0):.2f} cores busy (median, worst configuration).",
        f"Python: {', '.join(f'{mode} {version}' for mode, version in header['python'].items())}; {header['date']}.",
    ]
    return {"bench": "cold_start", "unit": "ms", "rows": rows, "notes": notes}


if __name__ == "__main__":
    main()
