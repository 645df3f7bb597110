"""One Logger, Metrics and Tracer for every handler (Powertools), and Sentry when SENTRY_DSN is set.

Secrets never leave the process: the logger only gets ids, and Sentry events are scrubbed of every configured secret
value before they are sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "babychain")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "BabyChain")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

SECRET_VARIABLES = (
    "BABYCHAIN_API_KEY",
    "BABYCHAIN_CALLBACK_SECRET",
    "DATABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "BFL_API_KEY",
    "BFL_WEBHOOK_SECRET",
    "ARK_API_KEY",
    "BABYSEA_API_KEY",
    "BABYSEA_WEBHOOK_SECRET",
    "UPSTASH_REDIS_REST_TOKEN",
)
REDACTED = "[redacted]"


def _metrics_on() -> bool:
    # single_metric flushes at once and ignores POWERTOOLS_METRICS_DISABLED, so honour it here.
    return os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() not in ("1", "true", "yes")


def count(name: str, value: float = 1, **dimensions: str) -> None:
    """Adds one metric. Dimensions (e.g. model, code) go on a single-metric record so they stay low-cardinality."""
    if not _metrics_on():
        return
    if dimensions:
        with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace=NAMESPACE) as metric:
            for key, dim in dimensions.items():
                metric.add_dimension(name=key, value=dim)
    else:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def duration(name: str, seconds: float, **dimensions: str) -> None:
    if not _metrics_on():
        return
    with single_metric(name=name, unit=MetricUnit.Seconds, value=seconds, namespace=NAMESPACE) as metric:
        for key, dim in dimensions.items():
            metric.add_dimension(name=key, value=dim)


def secret_values(names: Iterable[str] = SECRET_VARIABLES) -> list[str]:
    values = []
    for name in names:
        for part in os.environ.get(name, "").replace("\n", ",").split(","):
            if len(part.strip()) >= 8:  # short strings would scrub innocent text
                values.append(part.strip())
    return values


def scrub(event: Any, secrets: list[str]) -> Any:
    """Replaces every secret value anywhere in a JSON-able structure."""
    text = json.dumps(event, default=str)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(json.dumps(secret)[1:-1], REDACTED)
    return json.loads(text)


_sentry_started = False


def init_sentry() -> bool:
    """Starts Sentry once per process when SENTRY_DSN is set; returns whether it is on."""
    global _sentry_started
    dsn = os.environ.get("SENTRY_DSN")
    if not dsn or _sentry_started:
        return _sentry_started
    import sentry_sdk

    def before_send(event: Any, hint: Any) -> Any:
        return scrub(event, secret_values())

    sentry_sdk.init(
        dsn=dsn,
        before_send=before_send,
        traces_sample_rate=0.0,
        environment=os.environ.get("BABYCHAIN_ENVIRONMENT", "production"),
    )
    _sentry_started = True
    return True
