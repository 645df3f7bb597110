"""The one-machine shape: the same Lambda handlers behind a loopback HTTP API, in-process queues and sweeper,
an embedded Postgres, the artifact server and the local provider."""

from __future__ import annotations

import base64
import dataclasses
import logging
import mimetypes
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from babychain.artifacts import LocalArtifactStore
from babychain.config import Settings, load_settings
from babychain.errors import ApiError
from babychain.local.lambda_shim import LambdaContext, http_event, load_handler, match_route, scheduled_event
from babychain.local.queue import LocalQueue
from babychain.providers.local import LocalProvider
from babychain.providers.local_server import LocalProviderServer
from babychain.providers.registry import registry_from_settings
from babychain.security.urls import Resolver, system_resolver
from babychain.services import Services, install
from babychain.store.embedded import start_embedded_postgres
from babychain.store.migrations import apply_migrations
from babychain.store.postgres import PostgresStore

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "bc_local_dev_key_0001"
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's own payload limit; the handlers enforce the API's smaller one


def dev_callback_secret(home: Path) -> str:
    """A Standard Webhooks secret kept in the project folder, so receivers can be configured once."""
    path = home / "dev-callback-secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    return path.read_text().strip()


class LocalEngine:
    def __init__(
        self,
        home: str | Path = ".babychain",
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        overrides: dict[str, Any] | None = None,
        resolver: Resolver = system_resolver,
        sweep_interval_seconds: float = 2.0,
        workers: bool = True,
    ) -> None:
        # workers=False leaves the queues and the sweeper idle, so tests can deliver each message by hand.
        self.workers = workers
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.resolver = resolver
        self.sweep_interval_seconds = sweep_interval_seconds
        self._stop = threading.Event()
        self._pg: Any = None
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self.settings = self._settings(overrides or {})
        self.provider_server = LocalProviderServer(
            self.home / "local-provider",
            delay_seconds=self.settings.local_provider_delay_seconds,
            fail_rules=self.settings.local_provider_fail,
            resolver=resolver,
        )
        self.artifacts = LocalArtifactStore(self.home / "artifacts", self.base_url + "/files")
        self.step_queue = LocalQueue("step-queue", load_handler("step_executor"), workers=4)
        self.callback_queue = LocalQueue("callback-queue", load_handler("callback_sender"), workers=2)
        self.store: PostgresStore | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def _settings(self, overrides: dict[str, Any]) -> Settings:
        env = load_settings()
        values: dict[str, Any] = {
            "provider_mode": env.provider_mode,
            "api_keys": env.api_keys or (DEFAULT_API_KEY,),
            "callback_secret": env.callback_secret or dev_callback_secret(self.home),
            "allow_loopback_http": True,
            "poll_interval_seconds": min(env.poll_interval_seconds, 0.5),
            "sweeper_grace_seconds": min(env.sweeper_grace_seconds, 5.0),
            "artifact_dir": str(self.home / "artifacts"),
            "local_provider_dir": str(self.home / "local-provider"),
            # Providers on this machine (stand-ins) reach the webhook routes here.
            "public_base_url": env.public_base_url or self.base_url,
        }
        values.update(overrides)
        return dataclasses.replace(env, **values)

    def start(self) -> LocalEngine:
        dsn = self.settings.database_url
        if not dsn:
            dsn, self._pg = start_embedded_postgres(self.home / "pg")
        apply_migrations(dsn)
        self.store = PostgresStore(dsn)
        provider_url = self.provider_server.start()
        self.settings = dataclasses.replace(
            self.settings, database_url=dsn, local_provider_url=provider_url, artifact_base_url=self.base_url + "/files"
        )
        providers = registry_from_settings(self.settings, {"local": LocalProvider(provider_url)})
        install(
            Services(
                settings=self.settings,
                store=self.store,
                step_queue=self.step_queue,
                callback_queue=self.callback_queue,
                artifacts=self.artifacts,
                providers=providers,
                resolver=self.resolver,
            )
        )
        threading.Thread(target=self._serve, name="api", daemon=True).start()
        if self.workers:
            self.step_queue.start()
            self.callback_queue.start()
            threading.Thread(target=self._sweep_forever, name="sweeper", daemon=True).start()
        return self

    def _serve(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self.step_queue.stop()
        self.callback_queue.stop()
        self.provider_server.stop()
        install(None)
        if self.store is not None:
            self.store.close()

    def sweep_once(self) -> Any:
        return load_handler("sweeper")(scheduled_event(), LambdaContext(function_name="sweeper"))

    def _sweep_forever(self) -> None:
        while not self._stop.wait(self.sweep_interval_seconds):
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweeper failed")

    def describe(self) -> list[str]:
        s = self.settings
        # Values that came from the environment are named, not printed; generated development defaults are shown.
        api_key = "from BABYCHAIN_API_KEY" if os.environ.get("BABYCHAIN_API_KEY") else s.api_keys[0]
        secret = "from BABYCHAIN_CALLBACK_SECRET" if os.environ.get("BABYCHAIN_CALLBACK_SECRET") else s.callback_secret
        return [
            f"BabyChain is serving on {self.base_url}",
            f"  provider mode     {s.provider_mode} (local provider at {s.local_provider_url})",
            f"  database          {'embedded Postgres in ' + str(self.home / 'pg') if self._pg else 'DATABASE_URL'}",
            f"  artifacts         {self.home / 'artifacts'} served at {self.base_url}/files/",
            f"  API key           {api_key}",
            f"  callback secret   {secret}",
            "  DEVELOPMENT SETTING ON: plain HTTP on loopback is accepted for input URLs and webhook_url.",
        ]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, error: ApiError) -> None:
                import json

                self._send(error.status, {"Content-Type": "application/json"}, json.dumps(error.body()).encode())

            def _files(self, path: str) -> None:
                try:
                    file = engine.artifacts.path_for(unquote(path.removeprefix("/files/")))
                except ValueError:
                    file = None
                if file is None or not file.is_file():
                    return self._error(ApiError(404, "file_not_found", "No such file."))
                content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                return self._send(200, {"Content-Type": content_type}, file.read_bytes())

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_REQUEST_BYTES:
                    self.close_connection = True
                    return self._error(ApiError(413, "payload_too_large", "Request body is too large."))
                body = self.rfile.read(length) if length else b""
                if method == "GET" and parts.path.startswith("/files/"):
                    return self._files(parts.path)
                route = match_route(method, parts.path)
                if route is None:
                    return self._error(ApiError(404, "route_not_found", "No such route."))
                function, route_key, params = route
                event = http_event(method, parts.path, parts.query, dict(self.headers.items()), body, route_key, params)
                response = load_handler(function)(event, LambdaContext(function_name=function))
                payload = response.get("body") or ""
                data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
                return self._send(response["statusCode"], response.get("headers") or {}, data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler
