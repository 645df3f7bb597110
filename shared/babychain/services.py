"""The engine's dependencies in one place: settings, store, queues, providers, artifact store, DNS resolver.

Lambda handlers call `services()`, which builds them once per container from the environment. The local runner
and the tests build their own and install them with `install()`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from babychain.artifacts import ArtifactStore
from babychain.config import Settings, load_settings
from babychain.errors import ConfigurationError
from babychain.providers.registry import ProviderRegistry, registry_from_settings
from babychain.queues import Queue, SqsQueue
from babychain.security.urls import Resolver, system_resolver
from babychain.store.base import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    step_queue: Queue
    callback_queue: Queue
    artifacts: ArtifactStore
    providers: ProviderRegistry
    resolver: Resolver = system_resolver


_installed: Services | None = None
_lock = threading.Lock()


def install(services: Services | None) -> None:
    global _installed
    _installed = services


def services() -> Services:
    global _installed
    if _installed is None:
        with _lock:
            if _installed is None:
                _installed = from_environment()
    return _installed


def from_environment() -> Services:
    """The AWS shape: Postgres from DATABASE_URL, SQS queues from their URLs."""
    from babychain.store.postgres import PostgresStore

    settings = load_settings()
    if not settings.database_url:
        raise ConfigurationError("DATABASE_URL is not set.")
    step_url = os.environ.get("BABYCHAIN_STEP_QUEUE_URL", "")
    callback_url = os.environ.get("BABYCHAIN_CALLBACK_QUEUE_URL", "")
    if not step_url or not callback_url:
        raise ConfigurationError("BABYCHAIN_STEP_QUEUE_URL and BABYCHAIN_CALLBACK_QUEUE_URL must be set.")
    from babychain.artifacts import LocalArtifactStore

    # S3 artifacts arrive with the AWS deployment issue; until then a folder (e.g. EFS) with its public base URL.
    artifacts = LocalArtifactStore(settings.artifact_dir, settings.artifact_base_url)
    return Services(
        settings=settings,
        store=PostgresStore(settings.database_url, max_size=2),
        step_queue=SqsQueue(step_url),
        callback_queue=SqsQueue(callback_url),
        artifacts=artifacts,
        providers=registry_from_settings(settings),
    )
