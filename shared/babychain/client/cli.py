"""`babychain runs create|list|get|cancel|watch` and `babychain webhook verify`: the client on the command line.

These commands talk to any deployment over HTTP (`--url` or `BABYCHAIN_URL`, the key from `BABYCHAIN_API_KEY`) and
import nothing of the server, so they work from a client-only install. `--json` prints the API's JSON for scripts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from babychain.client.errors import (
    APIConnectionError,
    APIError,
    BabyChainError,
    MissingSettingError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from babychain.client.models import Run, Step
from babychain.client.sync import BabyChain
from babychain.client.webhooks import verify_webhook

SECRET_VARIABLE = "BABYCHAIN_CALLBACK_SECRET"
BAR_WIDTH = 24
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


class UsageError(Exception):
    """A problem with what was given on the command line or in a file: one line, exit code 2."""


def _out(line: str = "") -> None:
    print(line, flush=True)


def _fail(command: str, message: str, code: int) -> int:
    print(f"babychain {command}: {message}", file=sys.stderr, flush=True)
    return code


def _guarded(command: str, action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Every failure becomes one line on stderr and an exit code, never a traceback: 2 for a missing setting or bad
    input, 1 for an API error, an unreachable API, a run that did not succeed in time or a delivery that failed to
    verify, 130 for Ctrl-C."""

    def run(args: argparse.Namespace) -> int:
        try:
            return action(args)
        except (MissingSettingError, UsageError) as exc:
            return _fail(command, str(exc), 2)
        except (APIError, APIConnectionError, WaitTimeoutError, WebhookVerificationError) as exc:
            return _fail(command, str(exc), 1)
        except BabyChainError as exc:
            return _fail(command, str(exc), 2)
        except KeyboardInterrupt:
            return _fail(command, "interrupted", 130)

    return run


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[BabyChain]:
    with BabyChain(args.url, timeout=args.http_timeout) as client:
        yield client


def _print_json(data: Any) -> None:
    _out(json.dumps(data, indent=2))


def _read_json(path: str, what: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} {path} is not JSON: {exc}") from exc


# --- rendering ---------------------------------------------------------------------------------------------------


def _seconds(start: datetime | None, end: datetime | None) -> str:
    return f"{(end - start).total_seconds():.1f}s" if start and end else ""


def _bar(fraction: float) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"


def step_line(step: Step, total: int) -> str:
    """One step as a progress bar: done steps are full, a running one shows the provider's progress."""
    fraction = {"succeeded": 1.0, "running": step.progress or 0.0}.get(step.status, 0.0)
    percent = f"{round(fraction * 100):3d}%" if step.status in ("running", "succeeded") else "    "
    state: str = step.status
    if step.status == "succeeded":
        state += f" {_seconds(step.started_at, step.completed_at)}"
    elif step.error:
        state += f": {step.error.code}: {step.error.message or ''}".rstrip(": ")
    elif step.last_error:
        state += f" (retrying after {step.last_error.code})"
    return (
        f"  {step.step_index + 1}/{total} {step.step_key:<15} {step.model_identifier:<28} "
        f"{_bar(fraction)} {percent}  {state}"
    )


def run_header(run: Run) -> str:
    return f"run {run.id}  {run.chain_slug}  {run.status}  (mode {run.mode}, step {run.current_step_key})"


def outcome_lines(run: Run) -> list[str]:
    """What a finished run came to: how long it took and its files, or why it did not succeed."""
    lines = [f"run {run.status} in {_seconds(run.created_at, run.completed_at) or '?'}"]
    if run.error:
        lines.append(f"error: {run.error.code}: {run.error.message or ''}")
    outputs = [(step.step_key, url) for step in run.steps for url in step.generation_output_file]
    if outputs:
        lines.append("outputs:")
        final = set(run.output_files)
        lines += [f"  {key:<15} {url}{'  (final)' if url in final else ''}" for key, url in outputs]
    return lines


class ProgressView:
    """Live per-step progress bars. On a terminal the block is redrawn in place; otherwise (a pipe, a log) each line
    is printed again only when it changed."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._shown: list[str] = []

    def update(self, run: Run) -> None:
        lines = [run_header(run)] + [step_line(step, len(run.steps)) for step in run.steps]
        if self.live:
            if self._shown:
                self.stream.write(f"\x1b[{len(self._shown)}F")
            self.stream.write("".join(f"\x1b[2K{line}\n" for line in lines))
        else:
            for index, line in enumerate(lines):
                if index >= len(self._shown) or self._shown[index] != line:
                    self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = lines


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def runs_table(runs: list[Run]) -> list[str]:
    rows = [["RUN ID", "CHAIN", "STATUS", "CURRENT STEP", "STEPS DONE", "CREATED (UTC)"]]
    for run in runs:
        done = sum(step.status == "succeeded" for step in run.steps)
        created = run.created_at.strftime("%Y-%m-%d %H:%M:%S")
        rows.append([run.id, run.chain_slug, run.status, run.current_step_key, f"{done}/{len(run.steps)}", created])
    return _table(rows)


# --- commands ------------------------------------------------------------------------------------------------------


def _watch(client: BabyChain, run_id: str, args: argparse.Namespace) -> int:
    if args.json:
        run = client.wait(run_id, timeout=args.timeout, interval=args.interval, on_progress=lambda r: _ndjson(r.raw))
    else:
        view = ProgressView(sys.stdout, live=sys.stdout.isatty())
        run = client.wait(run_id, timeout=args.timeout, interval=args.interval, on_progress=view.update)
        _out()
        for line in outcome_lines(run):
            _out(line)
    return 0 if run.status == "succeeded" else 1


def _ndjson(data: Any) -> None:
    _out(json.dumps(data, separators=(",", ":")))


def runs_create(args: argparse.Namespace) -> int:
    body = _read_json(args.body, "request body")
    if not isinstance(body, dict):
        raise UsageError(f"request body {args.body} must be a JSON object")
    if args.webhook_url:
        body["webhook_url"] = args.webhook_url
    with _client(args) as client:
        run = client.create(args.chain, body, idempotency_key=args.idempotency_key)
        if args.json and not args.watch:
            _print_json(run.raw)
        elif not args.json:
            _out(
                f"created {run.id}  {run.chain_slug}  {run.status}  steps {' -> '.join(s.step_key for s in run.steps)}"
            )
        return _watch(client, run.id, args) if args.watch else 0


def runs_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.list(status=args.status, chain_slug=args.chain, page_size=min(args.limit or 100, 100))
        runs = list(found if args.limit == 0 else itertools.islice(found, args.limit))
    if args.json:
        _print_json([run.raw for run in runs])
    elif not runs:
        _out("no runs")
    else:
        for line in runs_table(runs):
            _out(line)
    return 0


def runs_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.get(args.run_id)
    if args.json:
        _print_json(run.raw)
        return 0
    _out(run_header(run))
    for step in run.steps:
        _out(step_line(step, len(run.steps)))
    if run.is_terminal:
        _out()
        for line in outcome_lines(run):
            _out(line)
    return 0


def runs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.cancel(args.run_id)
    if args.json:
        _print_json(run.raw)
    elif run.status == "canceled":
        _out(f"canceled {run.id}")
    else:
        _out(f"{run.id} had already {run.status}; nothing to cancel")
    return 0


def runs_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _watch(client, args.run_id, args)


def read_headers(path: str) -> dict[str, str]:
    """A saved delivery's headers: a JSON object, or `Name: value` lines as an HTTP dump shows them (a request line
    such as `POST /hook HTTP/1.1` is skipped)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read headers {path}: {exc.strerror}") from exc
    if text.lstrip().startswith("{"):
        data = _read_json(path, "headers")
        if not isinstance(data, Mapping):
            raise UsageError(f"headers {path} must be a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    headers: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() and " " not in name.strip():
            headers[name.strip().lower()] = value.strip()
    return headers


def webhook_verify(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get(SECRET_VARIABLE, "")
    if not secret:
        raise MissingSettingError(
            SECRET_VARIABLE, f"pass --secret or export {SECRET_VARIABLE}=whsec_... (the deployment's callback secret)"
        )
    headers = read_headers(args.headers)
    try:
        body = Path(args.body).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read body {args.body}: {exc.strerror}") from exc
    try:
        event = verify_webhook(headers, body, secret, check_timestamp=not args.ignore_timestamp)
    except ValueError as exc:  # a secret that is not one
        raise UsageError(str(exc)) from exc
    if args.json:
        _print_json({"verified": True, "webhook_id": event.id, "type": event.type, "data": event.run.raw})
    else:
        when = f", sent {event.timestamp.isoformat()}" if event.timestamp else ""
        _out(f"verified {event.id}: {event.type}, run {event.run.id} {event.run.status}{when}")
        for url in event.run.output_files:
            _out(f"  output {url}")
    return 0


# --- argument parsing ----------------------------------------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="the deployment's base URL (default: $BABYCHAIN_URL); the key is $BABYCHAIN_API_KEY"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    common.add_argument("--http-timeout", type=_positive, default=30.0, help="seconds for each HTTP request")
    return common


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_positive, default=None, help="give up after this many seconds")
    parser.add_argument("--interval", type=_positive, default=1.0, help="seconds between looks while the run changes")


def register(sub: Any) -> None:
    """Adds `runs` and `webhook` to the `babychain` command's subparsers."""
    common = _common()
    runs = sub.add_parser("runs", help="create, list, inspect, cancel and watch runs on any deployment")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)

    p = runs_sub.add_parser("create", parents=[common], help="start a run from a JSON request body")
    p.add_argument("chain", help="chain1, chain2, chain3 (or an alias)")
    p.add_argument("--body", required=True, help='file with the request body ({"input": ...}); - reads stdin')
    p.add_argument("--idempotency-key", help="replays the same run when repeated (default: a fresh key)")
    p.add_argument("--webhook-url", help="sets the body's webhook_url")
    p.add_argument("--watch", action="store_true", help="then watch it until it ends")
    _watch_options(p)
    p.set_defaults(func=_guarded("runs create", runs_create))

    p = runs_sub.add_parser("list", parents=[common], help="your runs, newest first, as a table")
    p.add_argument("--status", choices=RUN_STATUSES)
    p.add_argument("--chain", help="only runs of this chain")
    p.add_argument("--limit", type=_count, default=20, help="show at most this many (0: all, page after page)")
    p.set_defaults(func=_guarded("runs list", runs_list))

    for name, action, text in (
        ("get", runs_get, "one run with its steps"),
        ("cancel", runs_cancel, "cancel a queued or running run"),
        ("watch", runs_watch, "live per-step progress until the run ends, then its output URLs"),
    ):
        p = runs_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("run_id")
        if name == "watch":
            _watch_options(p)
        p.set_defaults(func=_guarded(f"runs {name}", action))

    webhook = sub.add_parser("webhook", help="check callbacks")
    webhook_sub = webhook.add_subparsers(dest="webhook_command", required=True)
    p = webhook_sub.add_parser("verify", help="verify a saved callback delivery (Standard Webhooks)")
    p.add_argument("--headers", required=True, help="file with the headers: a JSON object or `Name: value` lines")
    p.add_argument("--body", required=True, help="file with the raw body, byte for byte")
    p.add_argument("--secret", help=f"the callback secret (default: ${SECRET_VARIABLE})")
    p.add_argument(
        "--ignore-timestamp",
        action="store_true",
        help="check the signature only, not that it was sent in the last 5 minutes (for old saved deliveries)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded("webhook verify", webhook_verify))
