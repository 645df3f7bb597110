"""One Logger, Metrics and Tracer for every handler (Powertools), and Sentry when SENTRY_DSN is set.

Secrets never leave the process: the logger only gets ids, and Sentry events are scrubbed of every declared secret
value (`babychain.config.SECRET_VARIABLES`) before they are sent.

Every handler is wrapped in `sentry_flush`, so what Sentry holds is sent before the handler returns (Lambda may freeze
the container as soon as it has the response).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from babychain import config
from babychain.aws.snapstart import register_restore_hooks
from babychain.config import SECRET_VARIABLES

# Powertools reads its own variables; unset, they get this package's defaults (the loggers of `babychain.*` sit
# under the service's logger, so the service name must stay "babychain").
for _variable in config.POWERTOOLS_VARIABLES:
    if _variable.default:
        os.environ.setdefault(_variable.env, _variable.default)

logger = Logger()
metrics = Metrics()

# X-Ray patches the two clients whose calls it can trace here: botocore (SQS, S3, Secrets Manager) and httpx
# (Supabase, Upstash); the engine's own requests (providers, callbacks, downloads) go through `lean_http`, which gets
# a subsegment per request from `_xray_request` below. Powertools' default, every library the X-Ray SDK supports
# that can be imported, also imported sqlite3 (unused) and psycopg at cold start, and put a proxy around every pooled
# connection that traced nothing: the X-Ray patch traces cursors opened on its proxy, and psycopg 3's
# `Connection.execute`, the store's one call, opens its cursor on the connection itself.
TRACED_MODULES = ("botocore", "httpx")

tracer = Tracer(patch_modules=TRACED_MODULES)


@contextmanager
def _xray_request(method: str, url: str) -> Iterator[Callable[[int], None]]:
    """A `remote` subsegment per outbound request, as the X-Ray SDK's own HTTP patches record one."""
    from aws_xray_sdk.core import xray_recorder

    with xray_recorder.in_subsegment(urlsplit(url).hostname or "request", namespace="remote") as subsegment:
        if subsegment is None:  # no segment to hang it on (outside an invocation), or not sampled
            yield lambda status: None
            return
        subsegment.put_http_meta("method", method)
        subsegment.put_http_meta("url", url)
        yield lambda status: subsegment.put_http_meta("status", status)


if not tracer.disabled:
    from babychain.security import lean_http  # here only: API handlers that trace nothing need not load the client

    lean_http.trace_requests(_xray_request)

REDACTED = "[redacted]"
SENTRY_FLUSH_SECONDS = 2.0


def _metrics_on() -> bool:
    # single_metric prints at once and does not ask whether metrics are disabled, so ask Powertools here.
    return not is_metrics_disabled()


# Within an invocation: Powertools' answer when it began (two environment reads and two parses, asked once per
# invocation rather than once per metric); outside one, None, and each metric asks.
_metrics_in_invocation: ContextVar[bool | None] = ContextVar("babychain_metrics_on", default=None)


def metrics_on() -> bool:
    """Whether metrics are written now (callers skip the work of a metric that would be dropped)."""
    on = _metrics_in_invocation.get()
    return _metrics_on() if on is None else on


def count(name: str, value: float = 1, **dimensions: str) -> None:
    """Adds one metric. Dimensions (e.g. model, code) go on a single-metric record so they stay low-cardinality."""
    if not metrics_on():
        return
    if dimensions:
        with single_metric(name=name, unit=MetricUnit.Count, value=value) as metric:
            for key, dim in dimensions.items():
                metric.add_dimension(name=key, value=dim)
    else:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def duration(name: str, seconds: float, **dimensions: str) -> None:
    if not metrics_on():
        return
    with single_metric(name=name, unit=MetricUnit.Seconds, value=seconds) as metric:
        for key, dim in dimensions.items():
            metric.add_dimension(name=key, value=dim)


def secret_values(names: Iterable[str] = SECRET_VARIABLES) -> list[str]:
    values = []
    for name in names:
        for part in config.raw(name).replace("\n", ",").split(","):
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
    """Starts Sentry once per process when SENTRY_DSN is set; returns whether it is on.

    On AWS it runs when the services are built (the first invocation), after the secret that may hold the DSN is
    loaded; in the one-machine shape, when a container starts (`babychain.local.containers`).
    AwsLambdaIntegration then wraps every later invocation and flushes before Lambda gets the result; outside
    Lambda it stays idle, and `sentry_flush` covers both.
    """
    global _sentry_started
    dsn = config.read("sentry_dsn")
    if not dsn or _sentry_started:
        return _sentry_started
    import sentry_sdk
    from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration

    def before_send(event: Any, hint: Any) -> Any:
        return scrub(event, secret_values())

    sentry_sdk.init(
        dsn=dsn,
        integrations=[AwsLambdaIntegration()],
        before_send=before_send,
        traces_sample_rate=0.0,
        environment=config.read("environment"),
        # Frame locals hold media bytes and settings objects: megabytes per event, and values no scrub can vouch for.
        include_local_variables=False,
    )
    _sentry_started = True
    return True


Handler = TypeVar("Handler", bound=Callable[..., Any])


def sentry_flush(handler: Handler) -> Handler:
    """Reports what escapes the handler and sends what Sentry holds before the handler returns.

    The flush is explicit because the first invocation of a container starts Sentry itself (see `init_sentry`), and
    the one-machine shape has no Lambda runtime for the integration to hook. An exception the integration also
    reports is sent once (Sentry drops the same exception reported twice in a row).
    """

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> Any:
        try:
            return handler(event, context)
        except Exception as exc:
            if _sentry_started:
                import sentry_sdk

                sentry_sdk.capture_exception(exc)
            raise
        finally:
            if _sentry_started:
                import sentry_sdk

                sentry_sdk.flush(timeout=SENTRY_FLUSH_SECONDS)

    return wrapper  # type: ignore[return-value]


def _correlation_id_reader(path: str) -> Callable[[Any], Any]:
    """What `Logger.inject_lambda_context(correlation_id_path=path)` reads from the event, for a path of plain field
    names (`requestContext.requestId`) without a JMESPath search per invocation: the value, or None where a field is
    missing or a step is not an object. Any other expression goes to JMESPath as before."""
    fields = path.split(".")
    if not all(f.isidentifier() for f in fields):
        from aws_lambda_powertools.utilities import jmespath_utils

        return lambda event: jmespath_utils.query(envelope=path, data=event)

    def read(event: Any) -> Any:
        for name in fields:
            if not isinstance(event, dict):
                return None
            event = event.get(name)
        return event

    return read


def instrumented(correlation_id_path: str | None = None) -> Callable[[Handler], Handler]:
    """Every handler's wrapping, in one place: Sentry reporting and flush, the Powertools logger (with the
    invocation's context and, for API events, the request id as correlation id), metrics, the tracer, and the
    SnapStart restore hook (`babychain.aws.snapstart`).

    The event itself is never logged, whatever POWERTOOLS_LOGGER_LOG_EVENT says: an API event carries the caller's
    key in its `Authorization` header."""

    def wrap(handler: Handler) -> Handler:
        # At init, so that a SnapStart snapshot carries the hook that makes each restored environment unique.
        register_restore_hooks()
        # A disabled tracer (decided when it is created: off Lambda, or POWERTOOLS_TRACE_DISABLED) would open a dummy
        # subsegment per invocation that records nothing; disabled metrics (asked per invocation, as Powertools
        # does) have nothing to flush. Neither wrapper is worth its CPU then (the one-machine shape turns both off).
        traced = handler if tracer.disabled else tracer.capture_lambda_handler(handler)
        flushed = metrics.log_metrics(traced)

        correlation_id = _correlation_id_reader(correlation_id_path) if correlation_id_path else None

        @functools.wraps(handler)
        def measured(event: Any, context: Any) -> Any:
            # Where Powertools would set it: after the context's keys, before the handler runs.
            if correlation_id is not None:
                logger.set_correlation_id(correlation_id(event))
            on = _metrics_on()
            token = _metrics_in_invocation.set(on)
            try:
                return flushed(event, context) if on else traced(event, context)
            finally:
                _metrics_in_invocation.reset(token)

        logged = logger.inject_lambda_context(measured, log_event=False)
        return sentry_flush(cast(Handler, logged))

    return wrap
