"""The one-machine server as a real server: concurrent callers never mix, SIGTERM is graceful, a dead worker is
replaced, and serving beyond loopback is explicit. (Duplicate messages racing across processes and kill -9 of the
whole engine are scenarios of the fault suite, test_fault_suite.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from babychain.auth import create_key
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.local.runner import LocalEngine
from babychain.security.webhooks import verify
from babychain.services import services
from tests.conftest import CALLBACK_SECRET, KEY_A, KEY_B, client_for, free_port, wait_for_run, wait_until
from tests.integration.requests import chain_request
from tests.integration.serve import Serve


def _distinct_request(i: int, tag: str) -> dict[str, Any]:
    body = chain_request("chain1", None)
    body["input"]["text_to_image_params"]["prompt"] = f"request {i} of {tag}: a kite over hills"
    body["input"]["text_to_image_params"]["seed"] = i
    body["metadata"] = {"request": i, "tag": tag}
    return body


def test_concurrent_callers_never_see_or_store_each_others_requests(
    make_engine: Callable[..., LocalEngine],
) -> None:
    # Slow provider jobs keep runs active, so cancels race real work.
    engine = make_engine(api_workers=2, local_provider_delay_seconds=30)
    database_keys = [create_key(services().store, f"caller-{n}") for n in range(2)]
    keys = [KEY_A, KEY_B, *database_keys]  # half bootstrap keys, half database keys
    tag = uuid.uuid4().hex[:8]
    total = 240
    created: dict[int, tuple[str, str]] = {}  # request number -> (key, run id)
    errors: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def client(key: str) -> httpx.Client:
        clients = local.__dict__.setdefault("clients", {})
        if key not in clients:
            clients[key] = client_for(engine, key)
        return clients[key]

    def create(i: int) -> None:
        key = keys[i % len(keys)]
        response = client(key).post(
            "/api/v1/chains/chain1/runs", json=_distinct_request(i, tag), headers={"Idempotency-Key": f"{tag}-{i}"}
        )
        if response.status_code != 202:
            errors.append(f"create {i}: {response.status_code} {response.text[:200]}")
            return
        with lock:
            created[i] = (key, response.json()["id"])

    def read_side(n: int) -> None:
        # Gets, lists and cancels of runs created so far, interleaved with the creates.
        with lock:
            known = list(created.items())
        if not known:
            return
        i, (key, run_id) = random.choice(known)
        if n % 5 == 0:
            response = client(key).post(f"/api/v1/chains/cancel/{run_id}")
        elif n % 5 == 1:
            response = client(key).get("/api/v1/chains/runs", params={"limit": 5})
        else:
            response = client(key).get(f"/api/v1/chains/get/{run_id}")
            if response.status_code == 200 and response.json()["metadata"] != {"request": i, "tag": tag}:
                errors.append(f"get {run_id} answered with another run's metadata: {response.json()['metadata']}")
        if response.status_code != 200:
            errors.append(f"read {n}: {response.status_code} {response.text[:200]}")

    jobs: list[Callable[[], None]] = []
    for i in range(total):
        jobs.append(lambda i=i: create(i))
        jobs.append(lambda n=i: read_side(n))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda job: job(), jobs))

    assert not errors, errors[:5]
    assert len(created) == total
    # Every stored run holds its own request and belongs to the caller that sent it.
    for i, (key, run_id) in created.items():
        run = client(key).get(f"/api/v1/chains/get/{run_id}").json()
        assert run["input"]["text_to_image_params"]["prompt"] == f"request {i} of {tag}: a kite over hills"
        assert run["input"]["text_to_image_params"]["seed"] == i
        assert run["metadata"] == {"request": i, "tag": tag}
        other = keys[(keys.index(key) + 1) % len(keys)]
        assert client(other).get(f"/api/v1/chains/get/{run_id}").status_code == 404
    for key in keys:
        listed: set[str] = set()
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = client(key).get("/api/v1/chains/runs", params=params).json()
            listed |= {run["id"] for run in page["data"]}
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        assert listed == {run_id for k, run_id in created.values() if k == key}


def test_a_dead_worker_process_is_replaced_and_work_goes_on(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(local_provider_delay_seconds=0.1)
    before = engine.container_pids()
    os.kill(before["step_executor-1"], signal.SIGKILL)
    os.kill(before["api-1"], signal.SIGKILL)
    after = wait_until(
        lambda: (
            pids
            if (pids := engine.container_pids())["step_executor-1"] != before["step_executor-1"]
            and pids["api-1"] != before["api-1"]
            else None
        ),
        timeout=10,
    )
    assert after and engine.restarts >= 2
    with client_for(engine) as client:
        run = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()
        assert wait_for_run(client, run["id"])["status"] == "succeeded"


def test_more_step_executors_start_while_every_one_is_busy_and_end_when_idle(
    make_engine: Callable[..., LocalEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("babychain.local.runner.EXTRA_IDLE_SECONDS", 1.0)
    engine = make_engine(step_workers=1, max_step_workers=3)
    only = engine.container_pids()["step_executor-1"]
    os.kill(only, signal.SIGSTOP)  # busy for as long as this test wants (alive: its messages are not orphans)
    try:
        engine.step_queue.send({"held": "by the busy executor"})
        assert engine.step_queue.receive(4242)[0]  # in flight, as the executor's message would be
        with client_for(engine) as client:
            run = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()
            assert wait_for_run(client, run["id"])["status"] == "succeeded"  # done by an extra executor
            extras = [name for name in engine.container_pids() if name.startswith("step_executor-extra-")]
            assert 1 <= len(extras) <= 2  # up to max_step_workers in all
        # Idle, the extras end by themselves (not counted as crashes), and the regular executor stays.
        assert wait_until(lambda: not any("extra" in name for name in engine.container_pids()), timeout=15)
        assert engine.restarts == 0 and engine.container_pids()["step_executor-1"] == only
    finally:
        os.kill(only, signal.SIGCONT)


def test_serving_beyond_loopback_is_explicit_and_turns_the_development_setting_off(
    database_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        LocalEngine(tmp_path / "refused", host="0.0.0.0")
    engine = LocalEngine(
        tmp_path / "remote",
        host="0.0.0.0",
        allow_remote=True,
        overrides={"database_url": database_url, "api_keys": (KEY_A,), "local_provider_delay_seconds": 0.1},
        api_workers=1,
        step_workers=1,
        callback_workers=1,
    ).start()
    try:
        assert engine.settings.allow_loopback_http is False
        assert any("refused" in line for line in engine.describe())
        with client_for(engine) as client:
            body = {**chain_request("chain1", None), "webhook_url": "http://127.0.0.1:9/hook"}
            refused = client.post("/api/v1/chains/chain1/runs", json=body)
            assert refused.status_code == 400
            assert refused.json()["error"]["field"] == "webhook_url"
            # The built-in provider still works: its outputs are on loopback by design.
            run = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()
            assert wait_for_run(client, run["id"])["status"] == "succeeded"
    finally:
        engine.stop()
    result = subprocess.run(
        [sys.executable, "-m", "babychain.local.cli", "--home", str(tmp_path / "cli"), "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "--allow-remote" in result.stdout


# `babychain serve` as a process: SIGTERM (kill -9 is in the fault suite) ------------------------------------------


class _SlowReceiver(LoopbackServer):
    """A webhook receiver that holds each request for `hold` seconds before answering 200."""

    def __init__(self, hold: float) -> None:
        self.arrived = threading.Event()
        self.verified = False
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.read_body()
                receiver.verified = verify(CALLBACK_SECRET, {k.lower(): v for k, v in self.headers.items()}, body)
                receiver.arrived.set()
                time.sleep(hold)
                self.send_bytes(200)

        super().__init__(Handler, name="slow-receiver")

    @property
    def url(self) -> str:
        return self.base_url + "/hook"


def test_sigterm_lets_the_invocation_in_flight_finish_then_exits(
    tmp_path: Path, serve_env: dict[str, str], servers: list[Serve], database_url: str
) -> None:
    slow = _SlowReceiver(hold=3.0).start()
    server = Serve(tmp_path / "home", free_port(), {**serve_env, "BABYCHAIN_LOCAL_PROVIDER_DELAY_SECONDS": "0.1"})
    servers.append(server.start())
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=10) as client:
            body = {**chain_request("chain1", None), "webhook_url": slow.url}
            run_id = client.post("/api/v1/chains/chain1/runs", json=body).json()["id"]
        # The callback sender is now inside its POST to the slow receiver: stop the server.
        assert slow.arrived.wait(60)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        out = server.output()
        assert "Stopped." in out and "Traceback" not in out
        # The key came from the environment: serve names the inspector's address without printing the key.
        inspector = next(line for line in out.splitlines() if "run inspector" in line)
        assert f"{server.url}/runs (open it in a browser and type an API key" in inspector
        assert KEY_A not in inspector
        assert not server.healthy()
    finally:
        slow.stop()
    # The attempt in flight was finished and recorded, not cut off.
    with psycopg.connect(database_url) as conn:
        status, attempts = conn.execute(
            "select callback_status, callback_attempts from chain_runs where id = %s", (run_id,)
        ).fetchone() or (None, None)
        outcomes = conn.execute(
            "select outcome, status_code from callback_deliveries where run_id = %s", (run_id,)
        ).fetchall()
    assert slow.verified
    assert (status, attempts) == ("delivered", 1)
    assert outcomes == [("delivered", 200)]
