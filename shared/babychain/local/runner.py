"""The one-machine shape: the same Lambda handlers in worker processes, durable queues and the embedded Postgres.

`LocalEngine` is the supervisor. It starts Postgres (embedded, unless `DATABASE_URL` names one) and the local
provider, binds the API socket, and runs the containers (`babychain.local.containers`): API workers behind uvicorn,
step executors and callback senders on the Postgres queues, and the scheduled sweeper. It replaces a container that
dies, releases the messages a dead container held, and on SIGTERM stops taking work, lets in-flight invocations
finish and exits. It also installs the same services in its own process, so tests and the CLI can call handlers and
queues directly.

Containers start like multiprocessing's spawn: a script that starts a `LocalEngine` needs the usual
`if __name__ == "__main__":` guard (the CLI, pytest and the benchmarks have it).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import secrets
import signal
import threading
import time
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx

from babychain import config
from babychain.artifacts import LocalArtifactStore
from babychain.config import Settings, check_settings, load_settings
from babychain.engine.callbacks import recover_dead_senders
from babychain.local.containers import ContainerSpec, run_container
from babychain.local.http_server import bind_socket
from babychain.local.lambda_shim import LambdaContext, load_handler, scheduled_event
from babychain.local.provider_server import LocalProviderServer
from babychain.local.queue import CALLBACK_QUEUE, STEP_QUEUE, PostgresQueue, release_orphans
from babychain.providers.local import LocalProvider
from babychain.providers.registry import registry_from_settings
from babychain.ratelimit import rate_limiter_from_settings
from babychain.security.urls import Resolver, system_resolver
from babychain.services import Services, install
from babychain.store.embedded import start_embedded_postgres
from babychain.store.migrations import apply_migrations
from babychain.store.postgres import PostgresStore

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "bc_local_dev_key_0001"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SUPERVISE_INTERVAL_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 15.0
EXTRA = "-extra-"  # in the name of a consumer started for a burst of work: `<role>-extra-<n>`
EXTRA_IDLE_SECONDS = 10.0


def _role_of(container_name: str) -> str:
    return container_name.split(EXTRA)[0] if EXTRA in container_name else container_name.rsplit("-", 1)[0]


def dev_callback_secret(home: Path) -> str:
    """A Standard Webhooks secret kept in the project folder, so receivers can be configured once."""
    path = home / "dev-callback-secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    return path.read_text().strip()


def local_services(settings: Settings, resolver: Resolver = system_resolver) -> Services:
    """The services of one process of the one-machine shape (a container, or the supervisor itself)."""
    store = PostgresStore(settings.database_url, max_size=2)
    # A step invocation may submit (submit timeout) and copy an output; a callback attempt is one POST. A consumer
    # that dies gives its message back at once (orphan release), so these only bound a stuck, living consumer.
    step_queue = PostgresQueue(store, STEP_QUEUE, visibility_timeout_seconds=settings.submit_timeout_seconds + 120)
    callback_queue = PostgresQueue(
        store, CALLBACK_QUEUE, visibility_timeout_seconds=settings.callback_timeout_seconds * 2 + 30
    )
    return Services(
        settings=settings,
        store=store,
        step_queue=step_queue,
        callback_queue=callback_queue,
        artifacts=LocalArtifactStore(settings.artifact_dir, settings.artifact_base_url),
        providers=registry_from_settings(settings, {"local": LocalProvider(settings.local_provider_url)}),
        resolver=resolver,
        rate_limiter=rate_limiter_from_settings(settings),
    )


_context: ForkServerContext | None = None


def _container_context() -> ForkServerContext:
    """One fork server per process, which has imported every handler before it forks a container."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["babychain.local.warm"])
        _context = ctx
    return _context


class LocalEngine:
    def __init__(
        self,
        home: str | Path = ".babychain",
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        allow_remote: bool = False,
        overrides: dict[str, Any] | None = None,
        resolver: Resolver = system_resolver,
        sweep_interval_seconds: float = 2.0,
        workers: bool = True,
        api_workers: int | None = None,
        step_workers: int = 4,
        max_step_workers: int = 0,
        callback_workers: int = 2,
        max_callback_workers: int = 16,
        access_log: bool = False,
        log_level: int = logging.WARNING,
    ) -> None:
        # workers=False runs no queue consumers and no sweeper, so tests can deliver each message by hand; the API
        # workers always run.
        if host not in LOOPBACK_HOSTS and not allow_remote:
            raise ValueError(
                f"Serving on {host} needs allow_remote (--allow-remote): it exposes the API beyond this machine."
            )
        self.workers = workers
        self.remote = host not in LOOPBACK_HOSTS
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.resolver = resolver
        self.sweep_interval_seconds = sweep_interval_seconds
        self.counts = {
            "api": api_workers if api_workers is not None else (os.cpu_count() or 2),
            "step_executor": step_workers if workers else 0,
            "callback_sender": callback_workers if workers else 0,
            "sweeper": 1 if workers else 0,
        }
        # While every consumer of a queue is busy and messages wait, more consumers start (as Lambda runs more
        # instances), up to these many; they end when idle. Callback attempts wait on receivers, not on this
        # machine: on by default. Step executors: off by default (max_step_workers 0: the fixed count). With a
        # provider that answers at once, steps are this machine's CPU, and more executors on 2 cores lowered the
        # hop at 16 concurrent runs but cost more CPU per run and fewer runs/s (bench/RESULTS.md, "Wake one
        # consumer"); with providers slow to accept a job they would help.
        self.max_workers = {
            "step_executor": max(max_step_workers, self.counts["step_executor"]) if workers else 0,
            "callback_sender": max(max_callback_workers, self.counts["callback_sender"]) if workers else 0,
        }
        self._extras = 0
        self.access_log = access_log
        self.log_level = log_level
        self._sock = bind_socket(host, port)
        self._pg: Any = None
        self._containers: dict[str, BaseProcess] = {}
        self._stopping = threading.Event()
        self._containers_lock = threading.Lock()  # the supervisor thread replaces containers while stop() may run
        self._supervisor: threading.Thread | None = None
        self.restarts = 0
        self.settings = self._settings(overrides or {})
        self.provider_server: LocalProviderServer | None = None
        if not self.settings.local_provider_url:
            self.provider_server = LocalProviderServer(
                self.home / "local-provider",
                delay_seconds=self.settings.local_provider_delay_seconds,
                fail_rules=self.settings.local_provider_fail,
                resolver=resolver,
            )
        self.artifacts = LocalArtifactStore(self.settings.artifact_dir, self.settings.artifact_base_url)
        self.store: PostgresStore | None = None
        self.services: Services | None = None

    @property
    def base_url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _settings(self, overrides: dict[str, Any]) -> Settings:
        env = load_settings()
        values: dict[str, Any] = {
            "provider_mode": env.provider_mode,
            "api_keys": env.api_keys or (DEFAULT_API_KEY,),
            "callback_secret": env.callback_secret or dev_callback_secret(self.home),
            # Plain HTTP on loopback is a development convenience; never when the API is reachable from elsewhere.
            "allow_loopback_http": not self.remote,
            "poll_interval_seconds": min(env.poll_interval_seconds, 0.5),
            "sweeper_grace_seconds": min(env.sweeper_grace_seconds, 5.0),
            "artifact_dir": str(self.home / "artifacts"),
            # Artifact URLs go to callers and providers: through the public URL when there is one.
            "artifact_base_url": env.artifact_base_url or (env.public_base_url or self.base_url) + "/files",
            "local_provider_dir": str(self.home / "local-provider"),
            # Providers on this machine (stand-ins) reach the webhook routes here.
            "public_base_url": env.public_base_url or self.base_url,
        }
        values.update(overrides)
        settings = dataclasses.replace(env, **values)
        check_settings(settings)
        return settings

    @property
    def step_queue(self) -> PostgresQueue:
        return self._services().step_queue  # type: ignore[return-value]

    @property
    def callback_queue(self) -> PostgresQueue:
        return self._services().callback_queue  # type: ignore[return-value]

    def _services(self) -> Services:
        if self.services is None:
            raise RuntimeError("the engine is not started")
        return self.services

    def start(self) -> LocalEngine:
        dsn = self.settings.database_url
        if not dsn:
            dsn, self._pg = start_embedded_postgres(self.home / "pg")
        apply_migrations(dsn)
        updates: dict[str, Any] = {"database_url": dsn}
        if self.provider_server is not None:
            updates["local_provider_url"] = self.provider_server.start().base_url
        self.settings = dataclasses.replace(self.settings, **updates)
        self.services = local_services(self.settings, self.resolver)
        self.store = self.services.store  # type: ignore[assignment]
        install(self.services)
        # Messages held by consumers of an earlier run that died (kill -9) are delivered again now, not after their
        # visibility timeout.
        release_orphans(self.services.store)
        recover_dead_senders(self.services)  # callback attempts those consumers held: recorded and sent again now
        for role, count in self.counts.items():
            for index in range(count):
                self._spawn(f"{role}-{index + 1}", role)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _spec(self, name: str, role: str) -> ContainerSpec:
        return ContainerSpec(
            idle_exit_seconds=EXTRA_IDLE_SECONDS if EXTRA in name else None,
            role=role,
            name=name,
            settings=self.settings,
            environ=dict(os.environ),
            resolver=self.resolver,
            sweep_interval_seconds=self.sweep_interval_seconds,
            log_level=self.log_level,
            access_log=self.access_log,
            supervisor_pid=os.getpid(),
        )

    def _spawn(self, name: str, role: str) -> None:
        ctx = _container_context()
        args = (self._spec(name, role), self._sock if role == "api" else None)
        process = ctx.Process(target=run_container, args=args, name=f"babychain-{name}", daemon=False)
        process.start()
        self._containers[name] = process

    def _supervise(self) -> None:
        """Replaces containers that died and gives their messages back; the sweeper stays the safety net."""
        while not self._stopping.wait(SUPERVISE_INTERVAL_SECONDS):
            with self._containers_lock:
                if self._stopping.is_set():
                    return
                ended = [name for name, process in self._containers.items() if not process.is_alive()]
                # An extra consumer that stopped on its own (idle) is done; any other container that ended died.
                for name in ended:
                    if EXTRA in name and self._containers[name].exitcode == 0:
                        del self._containers[name]
                died = [name for name in ended if name in self._containers]
                try:
                    if died:
                        release_orphans(self._services().store)
                        recover_dead_senders(self._services())
                    self._scale("step_executor", self.step_queue)
                    self._scale("callback_sender", self.callback_queue)
                    for name in died:
                        code = self._containers[name].exitcode
                        log.warning("container %s exited (code %s); starting a new one", name, code)
                        self.restarts += 1
                        self._spawn(name, _role_of(name))
                except Exception:
                    log.exception("supervisor check failed")

    def _scale(self, role: str, queue: PostgresQueue) -> None:
        running = sum(1 for name in self._containers if _role_of(name) == role)
        if running >= self.max_workers[role]:
            return
        stats = queue.stats()
        if stats["visible"] and stats["in_flight"] >= running:
            for _ in range(min(stats["visible"], self.max_workers[role] - running)):
                self._extras += 1
                self._spawn(f"{role}{EXTRA}{self._extras}", role)

    def container_pids(self) -> dict[str, int | None]:
        with self._containers_lock:
            return {name: process.pid for name, process in self._containers.items()}

    def stop(self) -> None:
        """Stops taking work, lets every container finish its invocation, then stops the rest."""
        with self._containers_lock:
            self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for process in self._containers.values():
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for name, process in self._containers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("container %s did not stop in time; killing it", name)
                process.kill()
                process.join(2)
        self._containers.clear()
        self._sock.close()
        if self.provider_server is not None:
            self.provider_server.stop()
        install(None)
        if self.services is not None:
            self.services.store.close()
            if self.services.rate_limiter is not None:
                self.services.rate_limiter.close()

    def sweep_once(self) -> Any:
        return load_handler("sweeper")(scheduled_event(), LambdaContext(function_name="sweeper"))

    def _describe_rate_limits(self) -> str:
        limiter = self.services.rate_limiter if self.services is not None else None
        if limiter is None:
            return "  rate limiting     off (set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN to turn it on)"
        host = httpx.URL(limiter.url).host
        return (
            f"  rate limiting     {limiter.default_limit} requests per minute per key (unless the key has its own "
            f"limit), on Upstash at {host}; fails open"
        )

    def describe(self) -> list[str]:
        s = self.settings
        # Values that came from the environment are named, not printed; generated development defaults are shown.
        api_key = "from BABYCHAIN_API_KEY" if config.is_set("BABYCHAIN_API_KEY") else s.api_keys[0]
        secret = "from BABYCHAIN_CALLBACK_SECRET" if config.is_set("BABYCHAIN_CALLBACK_SECRET") else s.callback_secret
        provider = f" (local provider at {s.local_provider_url})" if s.provider_mode == "local" else ""
        lines = [
            f"BabyChain is serving on {self.base_url}"
            + (f" (listening on {self._sock.getsockname()[0]})" if self.remote else ""),
            f"  provider mode     {s.provider_mode}{provider}",
            f"  database          {'embedded Postgres in ' + str(self.home / 'pg') if self._pg else 'DATABASE_URL'}",
            f"  artifacts         {s.artifact_dir} served at {self.base_url}/files/ as {s.artifact_base_url}/",
            f"  workers           {self.counts['api']} API, {self.counts['step_executor']} step executor"
            + (
                f" (up to {self.max_workers['step_executor']} while steps wait)"
                if self.max_workers["step_executor"] > self.counts["step_executor"]
                else ""
            )
            + f", {self.counts['callback_sender']} callback sender (up to {self.max_workers['callback_sender']} "
            f"while receivers are slow), {self.counts['sweeper']} sweeper (one process each)",
            f"  API key           {api_key}",
            f"  callback secret   {secret}",
            "  retention         "
            + (
                f"finished runs and their artifacts are deleted {s.retention_days} days after they end"
                if s.retention_days > 0
                else "off: every run is kept (BABYCHAIN_RETENTION_DAYS=0)"
            ),
            self._describe_rate_limits(),
        ]
        if s.allow_loopback_http:
            lines.append("  DEVELOPMENT SETTING ON: plain HTTP on loopback is accepted for input URLs and webhook_url.")
        else:
            lines.append(
                "  Plain HTTP on loopback is refused for input URLs and webhook_url (the API is reachable remotely)."
            )
        return lines
