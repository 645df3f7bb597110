"""The engine's dependencies in one place: settings, store, queues, providers, artifact store, DNS resolver and the
rate limiter (None when rate limiting is off).

Lambda handlers call `services()`, which builds them once per container from the environment. The local runner
and the tests build their own and install them with `install()`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from babychain.artifacts import ArtifactStore
from babychain.config import Settings, load_settings
from babychain.errors import ConfigurationError
from babychain.providers.registry import ProviderRegistry, registry_from_settings
from babychain.queues import Queue, SqsQueue
from babychain.ratelimit import RateLimiter, rate_limiter_from_settings
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
    rate_limiter: RateLimiter | None = None


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
    # Before the settings are checked, so that an invalid one reaches Sentry too.
    init_sentry()
    settings = load_settings()
    if not settings.step_queue_url or not settings.callback_queue_url:
        raise ConfigurationError("BABYCHAIN_STEP_QUEUE_URL and BABYCHAIN_CALLBACK_QUEUE_URL must be set.")
    return Services(
        settings=settings,
        store=store_from_environment(settings),
        step_queue=SqsQueue(settings.step_queue_url),
        callback_queue=SqsQueue(settings.callback_queue_url),
        artifacts=artifacts_from_environment(settings),
        providers=registry_from_settings(settings),
        rate_limiter=rate_limiter_from_settings(settings),
    )


def store_from_environment(settings: Settings) -> Store:
    if settings.store_kind == "supabase":
        from babychain.store.supabase import SupabaseStore

        if not settings.supabase_url or not settings.supabase_service_role_key:
            raise ConfigurationError("BABYCHAIN_STORE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY.")
        return SupabaseStore(settings.supabase_url, settings.supabase_service_role_key)
    # load_settings() accepts only postgres or supabase.
    if not settings.database_url:
        raise ConfigurationError("DATABASE_URL is not set.")
    from babychain.store.postgres import PostgresStore

    # A Lambda container handles one event at a time: two connections cover the handler and a pool refresh.
    return PostgresStore(settings.database_url, max_size=2)


def artifacts_from_environment(settings: Settings) -> ArtifactStore:
    if settings.artifact_bucket:
        from babychain.aws.artifacts import S3ArtifactStore

        return S3ArtifactStore(settings.artifact_bucket, url_ttl_seconds=settings.artifact_url_ttl_seconds)
    from babychain.artifacts import LocalArtifactStore

    if not settings.artifact_base_url:
        raise ConfigurationError("Set BABYCHAIN_ARTIFACT_BUCKET (S3), or BABYCHAIN_ARTIFACT_DIR with its base URL.")
    return LocalArtifactStore(settings.artifact_dir, settings.artifact_base_url)
