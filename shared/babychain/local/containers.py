"""Worker processes that play Lambda containers on one machine.

Lambda's contract: a container runs one invocation at a time, and concurrency comes from more containers. Powertools
relies on it (the resolver's current event is class-level state), so the one-machine shape keeps it: each container
is a process that imports the handlers and takes one event at a time.

  api              uvicorn on the shared listening socket; each request becomes an API Gateway event (http_server)
  step_executor    receives from the durable `steps` queue in Postgres and invokes the executor with an SQS event
  callback_sender  the same on the `callbacks` queue
  sweeper          invokes the sweeper on a schedule, as EventBridge does

Processes are forked from a server that has already imported the handlers (multiprocessing's forkserver with
preloading), so a container starts in milliseconds and nothing is inherited from the parent's threads. A container
dies with the supervisor (it watches its pidfd), so kill -9 of `babychain serve` leaves no worker behind. With
`SENTRY_DSN` set, each container reports to Sentry like a Lambda container (`babychain.observability`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from babychain.config import Settings
from babychain.security.urls import Resolver, system_resolver

log = logging.getLogger(__name__)

QUEUE_ROLES = {"step_executor": "steps", "callback_sender": "callbacks"}
ROLES = ("api", "step_executor", "callback_sender", "sweeper")


@dataclass(frozen=True)
class ContainerSpec:
    role: str
    name: str
    settings: Settings
    environ: dict[str, str] = field(default_factory=dict)
    resolver: Resolver = system_resolver
    sweep_interval_seconds: float = 2.0
    log_level: int = logging.WARNING
    access_log: bool = False
    supervisor_pid: int = 0
    # A consumer started for a burst of work (see LocalEngine's scaling) ends after this long without a message.
    idle_exit_seconds: float | None = None


class _Shutdown(BaseException):
    """Raised from the SIGTERM handler while a container is idle, so it stops at once instead of after its wait."""


def run_container(spec: ContainerSpec, sock: socket.socket | None = None) -> None:
    """The container's main function (the multiprocessing target)."""
    _die_with_supervisor(spec.supervisor_pid)
    os.setpgrp()  # Ctrl-C in a terminal reaches the supervisor, which stops the containers in order
    os.environ.clear()
    os.environ.update(spec.environ)
    _configure_logging(spec)
    from babychain.local.runner import local_services
    from babychain.observability import init_sentry
    from babychain.services import install

    # As a Lambda container does when its services are built: SENTRY_DSN (from the environment) turns Sentry on.
    init_sentry()

    svc = local_services(spec.settings, spec.resolver)
    install(svc)
    try:
        if spec.role == "api":
            assert sock is not None
            from babychain.local.http_server import ApiGatewayApp, serve

            serve(sock, ApiGatewayApp(spec.settings.artifact_dir))
        elif spec.role in QUEUE_ROLES:
            _consume(spec, svc)
        elif spec.role == "sweeper":
            _sweep(spec)
        else:
            raise ValueError(f"unknown container role {spec.role!r}")
    except _Shutdown:
        pass
    finally:
        svc.store.close()


def _configure_logging(spec: ContainerSpec) -> None:
    logging.basicConfig(
        level=spec.log_level, format=f"%(levelname)s [{spec.name}] %(name)s: %(message)s", stream=sys.stderr
    )
    # The Powertools logger ("babychain") writes its own JSON lines; through the root handler they would print twice.
    logging.getLogger("babychain").propagate = False
    for chatty in ("httpx", "httpcore", "uvicorn", "uvicorn.error"):
        logging.getLogger(chatty).setLevel(max(spec.log_level, logging.WARNING))
    # The access log is plain lines of its own, not records of the Powertools logger ("babychain") it sits under.
    access = logging.getLogger("babychain.access")
    access.propagate = False
    access.setLevel(logging.INFO if spec.access_log else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(levelname)s [{spec.name}] %(name)s: %(message)s"))
    access.addHandler(handler)
    # Powertools warns on every invocation that published no metric; locally no metrics are shipped anywhere.
    warnings.filterwarnings("ignore", message="No application metrics to publish")


class _Lifecycle:
    """Stop on SIGTERM: at once when idle, after the current invocation when busy."""

    def __init__(self) -> None:
        self.stopping = False
        self.busy = False
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if not self.busy:
            raise _Shutdown


def _consume(spec: ContainerSpec, svc: Any) -> None:
    from babychain.local.lambda_shim import LambdaContext, load_handler, sqs_event
    from babychain.local.queue import ConsumerLease, PostgresQueue, ReceivedMessage, consume

    queue: PostgresQueue = svc.step_queue if spec.role == "step_executor" else svc.callback_queue
    handler = load_handler(spec.role)
    lifecycle = _Lifecycle()
    lease = ConsumerLease(spec.settings.database_url, random.randint(1, 2**31 - 1), queue)
    source = f"local-{queue.name}"

    def handle(message: ReceivedMessage) -> bool:
        event = sqs_event(source, [(str(message.id), message.body, message.receive_count)])
        try:
            response = handler(event, LambdaContext(function_name=spec.role))
        except Exception:
            log.exception("%s: handler crashed on message %s", spec.name, message.id)
            return False
        return not (response or {}).get("batchItemFailures")

    try:
        consume(queue, lease, handle, lifecycle, idle_exit_seconds=spec.idle_exit_seconds)
    finally:
        lifecycle.busy = True  # a SIGTERM now must not interrupt the unregistering
        with contextlib.suppress(Exception):
            lease.close()


def _sweep(spec: ContainerSpec) -> None:
    from babychain.local.lambda_shim import LambdaContext, load_handler, scheduled_event

    handler = load_handler("sweeper")
    lifecycle = _Lifecycle()
    while not lifecycle.stopping:
        time.sleep(spec.sweep_interval_seconds)
        lifecycle.busy = True
        try:
            handler(scheduled_event(), LambdaContext(function_name="sweeper"))
        except Exception:
            log.exception("sweeper failed")
        lifecycle.busy = False


def _die_with_supervisor(pid: int) -> None:
    """Ends this container the moment the supervisor process is gone (kill -9 included).

    The container's parent is the fork server, not the supervisor, and the fork server outlives the supervisor
    while containers hold its pipe, so PR_SET_PDEATHSIG cannot do this: a thread waits on the supervisor's pidfd.
    """

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd (not Linux, or an old kernel): poll instead
            while True:
                time.sleep(0.5)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
        else:
            select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    if not _alive(pid):
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def preload() -> None:
    """Imports every handler and their dependencies (run in the fork server, so containers start already warm)."""
    from babychain.local.lambda_shim import API_FUNCTIONS, load_handler

    for function in (*API_FUNCTIONS, "step_executor", "callback_sender", "sweeper"):
        load_handler(function)
    from babychain.aws.snapstart import warm

    warm()  # what handlers load on first use (as a SnapStart snapshot carries it): every container starts with it
    import babychain.local.http_server
    import babychain.local.runner  # noqa: F401
