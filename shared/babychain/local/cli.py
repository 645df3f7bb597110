"""`babychain serve` runs the whole engine on one machine; `babychain demo` runs a chain end to end and shows it;
`babychain keys` manages API keys; `babychain runs` and `babychain webhook` are the client's commands, for any
deployment.

The engine is imported only by the commands that run it, so `runs` and `webhook` work from a client-only install
(see `babychain.client.cli`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from babychain import config
from babychain.client import BabyChain, BabyChainError, Run, verify_webhook
from babychain.client.cli import register as register_client_commands

if TYPE_CHECKING:
    from babychain.local.receiver import Delivery, WebhookReceiver
    from babychain.local.runner import LocalEngine

# The commands that run the engine, its pages or its database; `runs` and `webhook` need only the client.
ENGINE_COMMANDS = ("serve", "inspect", "demo", "keys")

DEMO_PROMPTS = {
    "text_to_image": "a lighthouse on a cliff at dawn, soft pastel sky",
    "image_to_image": "the same scene as a vivid oil painting",
    "image_to_video": "slow push-in on the lighthouse as the light turns",
}


def demo_request(chain: str, receiver_url: str, source_image_url: str | None = None) -> dict[str, Any]:
    """A BYOK-shaped request (the seed's models and fields) that runs unchanged on the local provider."""
    inputs: dict[str, Any] = {"chain_models": {}}
    steps = {
        "chain1": ["text_to_image", "image_to_video"],
        "chain2": ["image_to_image", "image_to_video"],
        "chain3": ["text_to_image", "image_to_image", "image_to_video"],
    }[chain]
    for step in steps:
        if step == "text_to_image":
            inputs["chain_models"]["text_to_image_model"] = "bfl/flux-2-flex"
            inputs["text_to_image_params"] = {
                "prompt": DEMO_PROMPTS[step],
                "width": 1024,
                "height": 768,
                "prompt_upsampling": False,
                "seed": 593,
                "safety_tolerance": 5,
                "output_format": "jpeg",
            }
        elif step == "image_to_image":
            inputs["chain_models"]["image_to_image_model"] = "bfl/flux-kontext-pro"
            inputs["image_to_image_params"] = {"prompt": DEMO_PROMPTS[step], "seed": 7, "output_format": "png"}
        else:
            inputs["chain_models"]["image_to_video_model"] = "bytedance/seedance-1.5-pro"
            inputs["image_to_video_params"] = {
                "content": [{"type": "text", "text": DEMO_PROMPTS[step]}],
                "ratio": "16:9",
                "duration": 3,
                "watermark": False,
            }
    if source_image_url:
        inputs["source_image_url"] = source_image_url
    return {"input": inputs, "webhook_url": receiver_url}


def _print(line: str = "") -> None:
    print(line, flush=True)


def _announcer(folder: Path) -> Callable[[Delivery], None]:
    """Prints each delivery to `serve`'s receiver and saves it (headers as JSON, the body byte for byte) for
    `babychain webhook verify`."""

    def announce(delivery: Delivery) -> None:
        event_id = delivery.headers.get("webhook-id", "")
        name = re.sub(r"[^A-Za-z0-9_-]", "_", event_id)[:80] or "delivery"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.headers.json").write_text(json.dumps(delivery.headers, indent=2))
        (folder / f"{name}.body").write_bytes(delivery.body)
        try:
            kind = delivery.json().get("type")
        except ValueError:
            kind = "(not JSON)"
        _print(
            f"callback {event_id} {kind} signature {'verified' if delivery.verified else 'DID NOT VERIFY'}; "
            f"saved as {folder / name}.headers.json and .body"
        )

    return announce


def inspector_line(base_url: str, api_key: str, key_from_environment: bool) -> str:
    """Where the run inspector is. The development key rides in the URL's fragment, which the browser never sends:
    the page moves it into the tab's sessionStorage. A key from the environment is never printed."""
    url = f"{base_url}/runs"
    if key_from_environment:
        return f"  run inspector     {url} (open it in a browser and type an API key; it stays in that tab)"
    return f"  run inspector     {url}#key={api_key} (open it in a browser)"


def serve(args: argparse.Namespace) -> int:
    from babychain.local.receiver import WebhookReceiver
    from babychain.local.runner import LOOPBACK_HOSTS, LocalEngine

    if args.host not in LOOPBACK_HOSTS and not args.allow_remote:
        _print(f"Refusing to listen on {args.host}: add --allow-remote to serve the API beyond this machine.")
        return 2
    engine = LocalEngine(
        args.home,
        port=args.port,
        host=args.host,
        allow_remote=args.allow_remote,
        api_workers=args.workers,
        step_workers=args.step_workers,
        max_step_workers=args.max_step_workers,
        callback_workers=args.callback_workers,
        max_callback_workers=args.max_callback_workers,
        access_log=args.access_log,
    ).start()
    receiver = (
        None
        if engine.remote
        else WebhookReceiver(
            engine.settings.callback_secret, on_delivery=_announcer(Path(args.home) / "deliveries")
        ).start()
    )
    for line in engine.describe():
        _print(line)
    if receiver is not None:
        _print(f"  webhook receiver  {receiver.url} (use it as webhook_url: it verifies, prints, saves each callback)")
    _print(inspector_line(engine.base_url, engine.settings.api_keys[0], config.is_set("BABYCHAIN_API_KEY")))
    _print(f"Try:  curl -s {engine.base_url}/api/v1/chains -H 'Authorization: Bearer {engine.settings.api_keys[0]}'")
    _print("Press Ctrl-C to stop.")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        stopped.wait()
    _print("Stopping: finishing in-flight work...")
    if receiver is not None:
        receiver.stop()
    engine.stop()
    _print("Stopped.")
    return 0


def inspect(args: argparse.Namespace) -> int:
    """Serves only the run inspector's pages, for an API that runs elsewhere (an AWS deployment, another serve)."""
    from urllib.parse import quote, urlsplit

    from babychain.local.http_server import InspectorApp, bind_socket
    from babychain.local.http_server import serve as serve_http

    api = (args.api or "").strip().rstrip("/")
    if api and (urlsplit(api).scheme not in ("http", "https") or not urlsplit(api).netloc):
        _print(f"inspect: --api must be the API's base URL, http(s)://host[:port], not {api!r}.")
        return 2
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        _print(f"inspect: cannot listen on {args.host}:{args.port}: {exc.strerror}")
        return 2
    host, port = sock.getsockname()[:2]
    origin = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    _print(f"Run inspector on {origin}/runs" + (f"#api={quote(api, safe=':/')}" if api else ""))
    if api:
        _print(f"  It calls {api} from your browser with the API key you type on the page (kept in that tab only).")
        _print(f"  That API must allow the origin {origin} (CORS): see docs/inspector.md.")
    else:
        _print("  Set the API base URL and key on the page (the gear at the top right).")
    _print("Press Ctrl-C to stop.")
    serve_http(sock, InspectorApp())
    return 0


def demo(args: argparse.Namespace) -> int:
    from babychain.local.receiver import WebhookReceiver
    from babychain.local.runner import LocalEngine

    engine = LocalEngine(args.home, port=args.port).start()
    receiver = WebhookReceiver(engine.settings.callback_secret).start()
    try:
        for line in engine.describe():
            _print(line)
        return _run_demo(engine, receiver, args.chain, args.timeout)
    finally:
        receiver.stop()
        engine.stop()


def _run_demo(engine: LocalEngine, receiver: WebhookReceiver, chain: str, timeout: float) -> int:
    source = None
    if chain == "chain2":
        # chain2 starts from a caller image: make one with a chain1-style text_to_image call on the local media kit.
        from babychain.local.media import text_to_image

        source = engine.artifacts.put(
            "demo/source.png", text_to_image("a red kite over green hills", seed=1, width=768, height=512), "image/png"
        )
    body = demo_request(chain, receiver.url, source)
    _print(f"\nPOST /api/v1/chains/{chain}/runs")
    with BabyChain(engine.base_url, engine.settings.api_keys[0]) as client:
        try:
            run = client.create(chain, body)
        except BabyChainError as exc:
            _print(f"create failed: {exc}")
            return 1
        _print(
            f"  202 {run.id} status={run.status} mode={run.mode} steps=" + " -> ".join(s.step_key for s in run.steps)
        )
        seen: dict[str, str] = {}

        def show(run: Run) -> None:
            for step in run.steps:
                state = step.status + (f" {int(step.progress * 100)}%" if step.progress is not None else "")
                if seen.get(step.step_key) != state:
                    seen[step.step_key] = state
                    _print(f"  step {step.step_index + 1} {step.step_key:<15} {state}")

        try:
            run = client.wait(run.id, timeout=timeout, on_progress=show, interval=0.25, max_interval=0.25)
        except BabyChainError as exc:
            _print(f"\n{exc}")
            return 1
    _print(f"\nrun {run.status} (current_step_key={run.current_step_key})")
    if run.status != "succeeded":
        _print(json.dumps(run.raw.get("error"), indent=2))
        return 1
    deliveries = receiver.wait_for(1, timeout=30)
    files = _describe_outputs(engine, run)
    for line in files:
        _print(line)
    if not deliveries:
        _print("no callback arrived")
        return 1
    delivery = deliveries[0]
    verified, verifier = _verify_independently(engine, delivery)
    _print(
        f"\ncallback {delivery.headers.get('webhook-id')} type={delivery.json()['type']} "
        f"signature {'VERIFIED' if verified else 'DID NOT VERIFY'} with {verifier}"
    )
    return 0 if verified else 1


def _verify_independently(engine: LocalEngine, delivery: Delivery) -> tuple[bool, str]:
    """Checks the callback with the client's `verify_webhook`, which is the Standard Webhooks reference library."""
    try:
        verify_webhook(delivery.headers, delivery.body, engine.settings.callback_secret)
    except BabyChainError:
        return False, "the standardwebhooks reference library"
    return True, "the standardwebhooks reference library"


def _describe_outputs(engine: LocalEngine, run: Run) -> list[str]:
    lines = ["\noutputs:"]
    for step in run.steps:
        for url in step.generation_output_file:
            path = engine.artifacts.path_for(url.split("/files/", 1)[1])
            lines.append(f"  {step.step_key:<15} {path}  ({path.stat().st_size} bytes) {_media_facts(path)}")
    return lines


def _media_facts(path: Path) -> str:
    if path.suffix == ".mp4":
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            return f"[{stream.codec_context.name} {stream.width}x{stream.height}, {frames} frames decoded]"
    from PIL import Image

    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return f"[{image.format} {image.width}x{image.height}]"


@contextlib.contextmanager
def _key_store(home: str) -> Iterator[Any]:
    """The store the keys live in: DATABASE_URL (Supabase included) when set, else the embedded Postgres in `home`."""
    import os

    from babychain.store.migrations import apply_migrations
    from babychain.store.postgres import PostgresStore

    # A DATABASE_URL database is migrated by whoever owns it (`serve`, or `supabase db push`); only the embedded
    # one is migrated here.
    dsn = os.environ.get("DATABASE_URL", "")
    if not dsn:
        from babychain.store.embedded import start_embedded_postgres

        # The embedded server stops when this process exits, unless a running `serve` uses it too.
        dsn, _server = start_embedded_postgres(Path(home) / "pg")
        apply_migrations(dsn)
    store = PostgresStore(dsn, max_size=1)
    try:
        yield store
    finally:
        store.close()


def keys_create(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from babychain.auth import create_key

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()] if args.scopes else None
    expires = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days is not None else None
    with _key_store(args.home) as store:
        try:
            key = create_key(store, args.name, scopes=scopes, expires_at=expires, rate_limit_per_minute=args.rate_limit)
        except ValueError as exc:
            _print(f"keys create: {exc}")
            return 2
    _print(f"API key for {args.name!r} (shown once, stored only as a hash):\n{key}")
    return 0


def _rate_limit(row: Any) -> str:
    limit = row.get("rate_limit_per_minute")
    return "default" if limit is None else f"{limit}/min"


def keys_list(args: argparse.Namespace) -> int:
    with _key_store(args.home) as store:
        rows = store.list_api_keys()
    if args.json:
        _print(json.dumps(rows, indent=2))
        return 0
    _print(f"{'prefix':<13} {'state':<8} {'name':<20} {'scopes':<34} {'rate limit':<12} {'expires':<26} last used")
    for row in rows:
        state = "active" if row["is_active"] else "revoked"
        scopes = ",".join(row["scopes"])
        _print(
            f"{row['key_prefix']:<13} {state:<8} {row['name'][:20]:<20} {scopes:<34} {_rate_limit(row):<12} "
            f"{row['expires_at'] or 'never':<26} {row['last_used_at'] or 'never'}"
        )
    return 0


def keys_set_rate_limit(args: argparse.Namespace) -> int:
    from babychain.auth import MAX_RATE_LIMIT_PER_MINUTE, check_rate_limit

    try:
        limit = None if args.limit == "default" else int(args.limit)
        check_rate_limit(limit)
    except ValueError:
        _print(f"keys set-rate-limit: give requests per minute (1 to {MAX_RATE_LIMIT_PER_MINUTE}) or `default`")
        return 2
    with _key_store(args.home) as store:
        row = store.set_api_key_rate_limit(args.key, limit)
    if row is None:
        return _no_single_key("set-rate-limit", args.key)
    _print(f"{row['key_prefix']} ({row['name']}): rate limit {_rate_limit(row)}, from its next request")
    return 0


def _no_single_key(command: str, reference: str) -> int:
    _print(f"keys {command}: {reference!r} names no single active key (give its id or its prefix from `keys list`).")
    return 1


def keys_revoke(args: argparse.Namespace) -> int:
    with _key_store(args.home) as store:
        row = store.revoke_api_key(args.key)
    if row is None:
        return _no_single_key("revoke", args.key)
    _print(f"revoked {row['key_prefix']} ({row['name']}); requests with it now get 401")
    return 0


def keys_rotate(args: argparse.Namespace) -> int:
    from babychain.auth import rotate_key

    with _key_store(args.home) as store:
        key = rotate_key(store, args.key)
    if key is None:
        return _no_single_key("rotate", args.key)
    _print(f"The old key is revoked. New key (shown once, stored only as a hash):\n{key}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="babychain", description=__doc__)
    parser.add_argument("--home", default=".babychain", help="folder for the embedded database, files and jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the engine on this machine in the foreground")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (beyond loopback needs --allow-remote)"
    )
    p_serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host beyond loopback; turns off the development setting (plain HTTP on loopback)",
    )
    p_serve.add_argument("--workers", type=int, default=None, help="API worker processes (default: one per core)")
    p_serve.add_argument("--step-workers", type=int, default=4, help="step executor processes")
    p_serve.add_argument(
        "--max-step-workers",
        type=int,
        default=0,
        help="most step executors while every executor is busy and steps wait (default: no more than "
        "--step-workers; more help when providers are slow to accept jobs)",
    )
    p_serve.add_argument("--callback-workers", type=int, default=2, help="callback sender processes")
    p_serve.add_argument(
        "--max-callback-workers",
        type=int,
        default=16,
        help="most callback senders while every sender is busy and callbacks wait (slow receivers)",
    )
    p_serve.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="do not print one line per HTTP request"
    )
    p_serve.set_defaults(func=serve)
    p_inspect = sub.add_parser(
        "inspect", help="serve only the run inspector, for an API elsewhere (e.g. an AWS deployment)"
    )
    p_inspect.add_argument("--api", help="the API's base URL, e.g. the stack's ApiUrl output")
    p_inspect.add_argument("--port", type=int, default=8081)
    p_inspect.add_argument("--host", default="127.0.0.1")
    p_inspect.set_defaults(func=inspect)
    p_demo = sub.add_parser("demo", help="run one chain end to end on the local provider and show it")
    p_demo.add_argument("--chain", default="chain3", choices=["chain1", "chain2", "chain3"])
    p_demo.add_argument("--port", type=int, default=0)
    p_demo.add_argument("--timeout", type=float, default=120.0)
    p_demo.set_defaults(func=demo)
    p_keys = sub.add_parser("keys", help="manage API keys stored in the database")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = keys_sub.add_parser("create", help="create a key (printed once)")
    p_create.add_argument("--name", required=True)
    p_create.add_argument("--scopes", help="comma-separated: chains:run, chains:read, runs:cancel (default: all)")
    p_create.add_argument("--expires-in-days", type=float, default=None, help="the key stops working after this")
    p_create.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="N",
        help="requests per minute for this key (default: BABYCHAIN_RATE_LIMIT_PER_MINUTE; needs Upstash configured)",
    )
    p_create.set_defaults(func=keys_create)
    p_list = keys_sub.add_parser("list", help="list keys by prefix (never the keys themselves)")
    p_list.add_argument("--json", action="store_true")
    p_list.set_defaults(func=keys_list)
    p_revoke = keys_sub.add_parser("revoke", help="revoke a key at once (by id or prefix)")
    p_revoke.add_argument("key", help="the key's id or its prefix from `keys list`")
    p_revoke.set_defaults(func=keys_revoke)
    p_rotate = keys_sub.add_parser("rotate", help="replace a key: same name, scopes and expiry; the old one revoked")
    p_rotate.add_argument("key", help="the key's id or its prefix from `keys list`")
    p_rotate.set_defaults(func=keys_rotate)
    p_limit = keys_sub.add_parser("set-rate-limit", help="change a key's requests per minute (or back to the default)")
    p_limit.add_argument("key", help="the key's id or its prefix from `keys list`")
    p_limit.add_argument("limit", help="requests per minute, or `default` (BABYCHAIN_RATE_LIMIT_PER_MINUTE)")
    p_limit.set_defaults(func=keys_set_rate_limit)
    register_client_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        # A client-only install (README, "The Python client") has the package without the engine's dependencies.
        if args.command not in ENGINE_COMMANDS:
            raise
        print(
            f"babychain {args.command}: the engine's dependencies are not installed (no module {exc.name!r}); "
            "install them with pip install 'babychain[local]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
