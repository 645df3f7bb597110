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
    """The AWS shape: secrets from Secrets Manager, Postgres or Supabase, SQS queues and S3 artifacts."""
    from babychain.aws.secrets import load_secrets_into_environment
    from babychain.observability import init_sentry

    load_secrets_into_environment()
    init_sentry()
    settings = load_settings()
    step_url = os.environ.get("BABYCHAIN_STEP_QUEUE_URL", "")
    callback_url = os.environ.get("BABYCHAIN_CALLBACK_QUEUE_URL", "")
    if not step_url or not callback_url:
        raise ConfigurationError("BABYCHAIN_STEP_QUEUE_URL and BABYCHAIN_CALLBACK_QUEUE_URL must be set.")
    return Services(
        settings=settings,
        store=store_from_environment(settings),
        step_queue=SqsQueue(step_url),
        callback_queue=SqsQueue(callback_url),
        artifacts=artifacts_from_environment(settings),
        providers=registry_from_settings(settings),
    )


def store_from_environment(settings: Settings) -> Store:
    kind = os.environ.get("BABYCHAIN_STORE", "postgres").strip().lower()
    if kind == "supabase":
        from babychain.store.supabase import SupabaseStore

        url, key = os.environ.get("SUPABASE_URL", ""), os.environ.get("SUPABASE_SERVICE_ROLE_KEY", "")
        if not url or not key:
            raise ConfigurationError("BABYCHAIN_STORE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY.")
        return SupabaseStore(url, key)
    if kind != "postgres":
        raise ConfigurationError(f"BABYCHAIN_STORE must be postgres or supabase; got {kind!r}.")
    if not settings.database_url:
        raise ConfigurationError("DATABASE_URL is not set.")
    from babychain.store.postgres import PostgresStore

    # A Lambda container handles one event at a time: two connections cover the handler and a pool refresh.
    return PostgresStore(settings.database_url, max_size=2)


def artifacts_from_environment(settings: Settings) -> ArtifactStore:
    bucket = os.environ.get("BABYCHAIN_ARTIFACT_BUCKET", "")
    if bucket:
        from babychain.aws.artifacts import S3ArtifactStore

        ttl = int(os.environ.get("BABYCHAIN_ARTIFACT_URL_TTL_SECONDS", "3600"))
        return S3ArtifactStore(bucket, url_ttl_seconds=ttl)
    from babychain.artifacts import LocalArtifactStore

    if not settings.artifact_base_url:
        raise ConfigurationError("Set BABYCHAIN_ARTIFACT_BUCKET (S3), or BABYCHAIN_ARTIFACT_DIR with its base URL.")
    return LocalArtifactStore(settings.artifact_dir, settings.artifact_base_url)
