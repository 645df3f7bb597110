"""The client's retry policy, through both drivers (`BabyChain` and `AsyncBabyChain` run the same plans): a loopback
server answers each request from a script (503, 429 with Retry-After, a dropped connection, then the run), so the
repeats, their waits and the Idempotency-Key they carry are seen on the wire."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from babychain.client import AsyncBabyChain, BabyChain, BadRequestError, Run, ServerError
from babychain.engine.presenter import present_run
from babychain.local.loopback import LoopbackServer, QuietHandler
from tests.unit.test_client_models import everything_run

RUN = present_run(everything_run())  # type: ignore[arg-type]
ERROR = {"error": {"type": "api_error", "code": "unavailable", "message": "try again"}}


class Scripted(LoopbackServer):
    """Answers the n-th request with `script[n]`: a status (with a JSON body), `(status, headers)`, or "drop" to
    close the connection without an answer; the run once the script is used up."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.seen: list[tuple[float, str, str, str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def answer(self) -> None:
                self.read_body()
                with server.lock:
                    step = server.script.pop(0) if server.script else 200
                    server.seen.append((time.monotonic(), self.command, self.path, self.headers["Idempotency-Key"]))
                if step == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                status, headers = step if isinstance(step, tuple) else (step, {})
                body = RUN if status == 200 else ERROR if status >= 500 or status == 429 else _bad_request()
                self.send_bytes(status, json.dumps(body).encode(), "application/json", headers)

            do_GET = do_POST = answer

        super().__init__(Handler, name="scripted-api")


def _bad_request() -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "code": "invalid_chain_input", "message": "no", "field": "x"}}


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Any]], Scripted]]:
    started: list[Scripted] = []

    def make(script: list[Any]) -> Scripted:
        server = Scripted(script).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


MakeServer = Callable[[list[Any]], Scripted]
SCRIPT = [503, (429, {"Retry-After": "1"}), "drop"]


def _check_repeats(server: Scripted, run: Run) -> None:
    assert run.id == RUN["id"]
    assert len(server.seen) == 4
    assert {(method, path) for _, method, path, _ in server.seen} == {("POST", "/api/v1/chains/chain3/runs")}
    keys = {key for *_, key in server.seen}
    # One key on every repeat: the server replays the first run, never starts a second.
    assert len(keys) == 1 and str(next(iter(keys))).startswith("bc-client-")
    after_429 = server.seen[2][0] - server.seen[1][0]
    assert 1.0 <= after_429 < 3, after_429  # Retry-After honoured


def test_the_sync_client_repeats_what_may_succeed_with_one_idempotency_key(scripted: MakeServer) -> None:
    server = scripted(list(SCRIPT))
    with BabyChain(server.base_url, "k", max_retries=3) as client:
        _check_repeats(server, client.create("chain3", {"input": {}}))


def test_the_async_client_repeats_the_same_way(scripted: MakeServer) -> None:
    server = scripted(list(SCRIPT))

    async def scenario() -> Run:
        async with AsyncBabyChain(server.base_url, "k", max_retries=3) as client:
            return await client.create("chain3", {"input": {}})

    _check_repeats(server, asyncio.run(scenario()))


def test_retries_run_out_and_a_4xx_is_never_repeated(scripted: MakeServer) -> None:
    server = scripted([503, 502, 504, 503])
    with BabyChain(server.base_url, "k", max_retries=2) as client, pytest.raises(ServerError) as failed:
        client.get("r1")
    assert failed.value.status == 504 and len(server.seen) == 3
    server = scripted([400, 400])

    async def scenario() -> None:
        async with AsyncBabyChain(server.base_url, "k", max_retries=2) as client:
            await client.cancel("r1")

    with pytest.raises(BadRequestError) as bad:
        asyncio.run(scenario())
    assert bad.value.field == "x" and [(m, p) for _, m, p, _ in server.seen] == [("POST", "/api/v1/chains/cancel/r1")]
