"""`babychain runs ...` and `babychain webhook verify` as a user runs them: subprocesses of the real CLI against the
real local stack, including one where the engine's dependencies cannot be imported (a client-only install)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from babychain.local.receiver import Delivery, WebhookReceiver
from babychain.local.runner import LocalEngine
from tests.conftest import CALLBACK_SECRET, KEY_A
from tests.integration.requests import SEED_CHAIN1, chain_request
from tests.integration.test_client import SERVER_ONLY

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Runs the CLI with the engine's dependencies made unimportable, as in an install without them.
CLIENT_ONLY = """
import runpy, sys
BLOCKED = set(sys.argv[1].split(","))

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
sys.argv = ["babychain", *sys.argv[2:]]
runpy.run_module("babychain.local.cli", run_name="__main__", alter_sys=True)
"""


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BABYCHAIN_", "DATABASE_URL"))}
    return {**env, **settings}


def cli(*args: str, env: dict[str, str], client_only: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "babychain.local.cli", *args]
    if client_only:
        command = [sys.executable, "-c", CLIENT_ONLY, ",".join(SERVER_ONLY), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, check=False)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *expected: str) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line, result.stderr
    for text in expected:
        assert text in line, line
    return line


def save(delivery: Delivery, folder: Path, raw_headers: bool = False) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    headers, body = folder / "headers", folder / "body"
    if raw_headers:  # as an HTTP dump shows them
        lines = ["POST /hooks/babychain HTTP/1.1", *(f"{k.title()}: {v}" for k, v in delivery.headers.items())]
        headers.write_text("\n".join(lines) + "\n")
    else:
        headers.write_text(json.dumps(delivery.headers))
    body.write_bytes(delivery.body)
    return headers, body


@pytest.fixture
def running_engine(make_engine: Callable[..., LocalEngine]) -> LocalEngine:
    # Local provider jobs of 2 s: `watch` sees each step running with its progress.
    return make_engine(local_provider_delay_seconds=2.0)


def test_runs_create_watch_get_list_cancel(
    running_engine: LocalEngine, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    env = clean_env(BABYCHAIN_URL=running_engine.base_url, BABYCHAIN_API_KEY=KEY_A)
    body = tmp_path / "chain3.json"
    body.write_text(json.dumps(chain_request("chain3", receiver.url)))

    created = cli("runs", "create", "chain3", "--body", str(body), env=env)
    assert created.returncode == 0, created.stderr
    match = re.fullmatch(
        rf"created ({UUID})  chain3  queued  steps text_to_image -> image_to_image -> image_to_video\n", created.stdout
    )
    assert match, created.stdout
    run_id = match[1]

    watched = cli("runs", "watch", run_id, "--interval", "0.1", env=env)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    out = watched.stdout
    # Per-step progress bars while the steps run (the first may be done before `watch` starts), with the provider's
    # progress filling them, each step done in turn, then the outputs.
    for step in ("text_to_image", "image_to_image", "image_to_video"):
        if step != "text_to_image":
            assert re.search(rf"/3 {step} +\S+ +\[[#-]{{24}}\] +\d+%  running$", out, re.MULTILINE), (step, out)
        assert re.search(rf"/3 {step} +\S+ +\[#{{24}}\] 100%  succeeded \d+\.\ds$", out, re.MULTILINE), out
    assert re.search(r"/3 \w+ +\S+ +\[#+-+\] +[1-9]\d%  running$", out, re.MULTILINE), out
    assert f"run {run_id}  chain3  succeeded  (mode local, step completed)" in out
    assert re.search(r"^run succeeded in \d+\.\ds$", out, re.MULTILINE)
    outputs = re.findall(rf"^  (\w+) +(http://\S+/files/runs/{run_id}/\S+)(  \(final\))?$", out, re.MULTILINE)
    assert [(key, url.rsplit(".", 1)[1], final) for key, url, final in outputs] == [
        ("text_to_image", "jpg", ""),
        ("image_to_image", "png", ""),
        ("image_to_video", "mp4", "  (final)"),
    ]

    got = cli("runs", "get", run_id, env=env)
    assert got.returncode == 0 and f"run {run_id}  chain3  succeeded" in got.stdout and "outputs:" in got.stdout
    as_json = json.loads(cli("runs", "get", run_id, "--json", env=env).stdout)
    assert as_json["id"] == run_id and as_json["status"] == "succeeded" and as_json["object"] == "chain_run"

    again = cli("runs", "cancel", run_id, env=env)
    assert again.returncode == 0 and again.stdout == f"{run_id} had already succeeded; nothing to cancel\n"

    table = cli("runs", "list", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RUN", "ID", "CHAIN", "STATUS", "CURRENT", "STEP", "STEPS", "DONE", "CREATED", "(UTC)"]
    assert [line.split()[:5] for line in lines[1:]] == [[run_id, "chain3", "succeeded", "completed", "3/3"]]
    filtered = json.loads(cli("runs", "list", "--json", "--status", "succeeded", env=env).stdout)
    assert [r["id"] for r in filtered] == [run_id]

    # The run's callback, saved and checked with the CLI (headers as JSON or as an HTTP dump).
    delivery = receiver.wait_for(1, timeout=60)[0]
    for raw in (False, True):
        headers, saved_body = save(delivery, tmp_path / f"delivery-{raw}", raw_headers=raw)
        verified = cli(
            "webhook",
            "verify",
            "--headers",
            str(headers),
            "--body",
            str(saved_body),
            env=clean_env(BABYCHAIN_CALLBACK_SECRET=CALLBACK_SECRET),
        )
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith(f"verified evt_{run_id}: chain_run.succeeded, run {run_id} succeeded, sent ")
        assert "output http://" in verified.stdout


def body_of(tmp_path: Path) -> Path:
    path = tmp_path / "chain1.json"
    path.write_text(json.dumps(SEED_CHAIN1))
    return path


def test_cancel_list_and_a_watch_that_times_out(make_engine: Callable[..., LocalEngine], tmp_path: Path) -> None:
    engine = make_engine(workers=False)  # nothing runs the runs: they wait in the queue
    env = clean_env(BABYCHAIN_URL=engine.base_url, BABYCHAIN_API_KEY=KEY_A)
    first, second = (
        json.loads(cli("runs", "create", "chain1", "--body", str(body_of(tmp_path)), "--json", env=env).stdout)["id"]
        for _ in range(2)
    )
    timed_out = cli("runs", "watch", first, "--timeout", "0.5", "--interval", "0.1", env=env)
    assert timed_out.returncode == 1 and f"{first}  chain1  queued" in timed_out.stdout  # the bars, then:
    assert timed_out.stderr == f"babychain runs watch: run {first} is still queued after 0.5 s\n"

    canceled = cli("runs", "cancel", first, env=env)
    assert canceled.returncode == 0 and canceled.stdout == f"canceled {first}\n", canceled.stdout
    assert json.loads(cli("runs", "cancel", first, "--json", env=env).stdout)["status"] == "canceled"
    # `watch --json` prints the run each time it changes: one line here, the run already over; a canceled run is not
    # a success, so the exit code is 1.
    watched = cli("runs", "watch", first, "--json", env=env)
    assert watched.returncode == 1
    changes = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(changes) == 1 and changes[0]["id"] == first and changes[0]["status"] == "canceled"

    table = cli("runs", "list", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.split()[:5] for line in lines[1:]] == [
        [second, "chain1", "queued", "processing", "0/2"],
        [first, "chain1", "canceled", "canceled", "0/2"],
    ]
    # Columns line up: every row's cells start where the header's do.
    starts = [m.start() for m in re.finditer(r"(?<=  )\S", lines[0])]
    assert all(row[start - 2 : start] == "  " and row[start] != " " for row in lines[1:] for start in starts)
    assert [r["id"] for r in json.loads(cli("runs", "list", "--json", "--limit", "1", env=env).stdout)] == [second]
    everything = json.loads(cli("runs", "list", "--json", "--limit", "0", env=env).stdout)
    assert [r["id"] for r in everything] == [second, first]
    only_canceled = json.loads(cli("runs", "list", "--json", "--status", "canceled", env=env).stdout)
    assert [r["id"] for r in only_canceled] == [first]
    assert cli("runs", "list", "--chain", "chain3", env=env).stdout == "no runs\n"


def test_missing_settings_and_api_errors_are_one_line(make_engine: Callable[..., LocalEngine], tmp_path: Path) -> None:
    engine = make_engine(workers=False)
    one_line_error(cli("runs", "list", env=clean_env()), 2, "BABYCHAIN_URL is not set", "--url")
    one_line_error(
        cli("runs", "get", "x", env=clean_env(BABYCHAIN_URL=engine.base_url)), 2, "BABYCHAIN_API_KEY is not set"
    )
    one_line_error(
        cli("runs", "list", "--url", engine.base_url, env=clean_env()), 2, "babychain runs list: BABYCHAIN_API_KEY"
    )
    env = clean_env(BABYCHAIN_URL=engine.base_url, BABYCHAIN_API_KEY=KEY_A)
    missing = "00000000-0000-4000-8000-000000000000"
    one_line_error(cli("runs", "get", missing, env=env), 1, "babychain runs get: 404 run_not_found: No run")
    one_line_error(cli("runs", "cancel", "nope", env=env), 1, "400 invalid_run_id", "(field run_id)")
    wrong_key = {**env, "BABYCHAIN_API_KEY": "bc_not_a_real_key_0000"}
    one_line_error(cli("runs", "list", env=wrong_key), 1, "401 ")
    bad_body = tmp_path / "bad.json"
    bad_body.write_text(json.dumps({"input": {"chain_models": {}}}))
    one_line_error(cli("runs", "create", "chain1", "--body", str(bad_body), env=env), 1, "400 ", "(field input.")
    one_line_error(cli("runs", "create", "chain1", "--body", str(tmp_path / "nowhere.json"), env=env), 2, "cannot read")
    (tmp_path / "not.json").write_text("{nope")
    one_line_error(cli("runs", "create", "chain1", "--body", str(tmp_path / "not.json"), env=env), 2, "is not JSON")
    one_line_error(cli("runs", "list", "--url", "ftp://example", env=env), 2, "must start with http")
    unreachable = {**env, "BABYCHAIN_URL": "http://127.0.0.1:9"}
    one_line_error(cli("runs", "list", env=unreachable), 1, "cannot reach http://127.0.0.1:9/api/v1/chains/runs")

    one_line_error(
        cli("webhook", "verify", "--headers", "h", "--body", "b", env=clean_env()),
        2,
        "BABYCHAIN_CALLBACK_SECRET is not set",
        "--secret",
    )


def test_webhook_verify_refuses_a_tampered_or_foreign_delivery(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    engine = make_engine()
    env = clean_env(BABYCHAIN_URL=engine.base_url, BABYCHAIN_API_KEY=KEY_A)
    body = tmp_path / "chain1.json"
    body.write_text(json.dumps(chain_request("chain1", receiver.url)))
    created = cli("runs", "create", "chain1", "--body", str(body), "--watch", "--json", "--interval", "0.2", env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout.splitlines()[-1])["status"] == "succeeded"
    headers, saved = save(receiver.wait_for(1, timeout=60)[0], tmp_path / "delivery")
    secret_env = clean_env(BABYCHAIN_CALLBACK_SECRET=CALLBACK_SECRET)

    as_json = cli("webhook", "verify", "--headers", str(headers), "--body", str(saved), "--json", env=secret_env)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["type"] == "chain_run.succeeded"
    ignoring_age = cli(
        "webhook", "verify", "--headers", str(headers), "--body", str(saved), "--ignore-timestamp", env=secret_env
    )
    assert ignoring_age.returncode == 0 and ignoring_age.stdout.startswith("verified evt_")

    saved.write_bytes(saved.read_bytes().replace(b"succeeded", b"failed", 1))
    one_line_error(
        cli("webhook", "verify", "--headers", str(headers), "--body", str(saved), env=secret_env),
        1,
        "babychain webhook verify: No matching signature found",
    )
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM="
    one_line_error(
        cli("webhook", "verify", "--headers", str(headers), "--body", str(saved), "--secret", other, env=clean_env()),
        1,
        "No matching signature found",
    )
    one_line_error(
        cli("webhook", "verify", "--headers", str(tmp_path / "none"), "--body", str(saved), env=secret_env),
        2,
        "cannot read headers",
    )


def test_a_client_only_install_runs_the_client_commands(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """With psycopg, boto3, Powertools, pydantic, Pillow, PyAV, Upstash... unimportable, `runs` and `webhook` work and
    the engine's commands say in one line what is missing."""
    engine = make_engine(local_provider_delay_seconds=0.5)
    env = clean_env(BABYCHAIN_URL=engine.base_url, BABYCHAIN_API_KEY=KEY_A)
    body = tmp_path / "chain1.json"
    body.write_text(json.dumps(chain_request("chain1", receiver.url)))
    created = cli(
        "runs", "create", "chain1", "--body", str(body), "--watch", "--interval", "0.2", env=env, client_only=True
    )
    assert created.returncode == 0, created.stdout + created.stderr
    assert "run succeeded in" in created.stdout and "(final)" in created.stdout
    listed = cli("runs", "list", env=env, client_only=True)
    assert listed.returncode == 0 and listed.stdout.startswith("RUN ID"), listed.stderr
    headers, saved = save(receiver.wait_for(1, timeout=60)[0], tmp_path / "delivery")
    verified = cli(
        "webhook",
        "verify",
        "--headers",
        str(headers),
        "--body",
        str(saved),
        "--secret",
        CALLBACK_SECRET,
        env=clean_env(),
        client_only=True,
    )
    assert verified.returncode == 0 and verified.stdout.startswith("verified evt_"), verified.stderr
    for command in (["keys", "list"], ["demo"]):
        one_line_error(
            cli("--home", str(tmp_path / "home"), *command, env=clean_env(), client_only=True),
            2,
            f"babychain {command[0]}: the engine's dependencies are not installed",
            "pip install 'babychain[local]'",
        )


def test_cli_module_imports_no_server_dependency() -> None:
    code = "import json, sys, babychain.local.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded: set[Any] = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & set(SERVER_ONLY), sorted(loaded & set(SERVER_ONLY))
