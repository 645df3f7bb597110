"""Settings, declared once and read once from the environment.

Every field of `Settings` is declared with `setting(...)`: its environment variable, meaning, section and (when it
matters) whether it is a secret, its allowed values and bounds. The field's annotation is its type and the field's
default is its default. From that one declaration come `load_settings()`, the secret list Sentry events are scrubbed
with, and `docs/configuration.md` (`python -m babychain.config --markdown > docs/configuration.md`; a test fails when
the file drifts). An invalid value raises `ConfigurationError` naming the variable; an empty value counts as unset.

`Settings` stays a plain frozen dataclass: the local runner overrides fields with `dataclasses.replace` (its
development defaults, see `babychain.local.runner`) and pickles it to its worker processes, and tests pass overrides
by field name.

Powertools reads its own variables (`POWERTOOLS_*`); they are listed in `POWERTOOLS_VARIABLES` with the defaults this
package gives them, and documented beside ours, but never parsed here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from babychain.errors import ConfigurationError

PROVIDER_MODES = ("local", "byok", "babysea")
STORE_KINDS = ("postgres", "supabase")
BFL_BASE_URLS = {"global": "https://api.bfl.ai/v1", "eu": "https://api.eu.bfl.ai/v1", "us": "https://api.us.bfl.ai/v1"}
BABYSEA_BASE_URLS = {region: f"https://api.{region}.babysea.ai" for region in ("us", "eu", "jp")}
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
# S3 refuses presigned URLs that live longer than seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

# Sections of docs/configuration.md, in order.
ENGINE = "Engine"
RATE_LIMITS = "Rate limiting"
PROVIDERS = "Providers"
TIMING = "Polling, deadlines and retries"
ARTIFACTS = "Artifacts"
AWS = "AWS shape"
OBSERVABILITY = "Observability"
LOCAL = "Local provider and development"
SECTIONS = (ENGINE, RATE_LIMITS, PROVIDERS, TIMING, ARTIFACTS, AWS, OBSERVABILITY, LOCAL)


@dataclass(frozen=True)
class Variable:
    """One environment variable and the `Settings` field it fills."""

    env: str
    meaning: str
    section: str
    secret: bool = False
    choices: tuple[str, ...] = ()  # matched case-insensitively
    minimum: float | None = None
    maximum: float | None = None
    # When unset: the value of `follows[1]` for the field named `follows[0]` (a region picks its base URL).
    follows: tuple[str, Mapping[str, str]] | None = None
    parse: Callable[[str], Any] | None = None  # for values the type alone does not describe (JSON)
    expected: str = ""  # how the docs and errors describe a custom `parse`'s format
    serve: str = ""  # what `babychain serve` uses instead (see `LocalEngine._settings`)
    # From the Settings field, filled in below the class.
    field: str = ""
    type: Any = None
    default: Any = None


def setting(
    env: str,
    default: Any,
    meaning: str,
    *,
    section: str,
    default_factory: Callable[[], Any] | None = None,
    **options: Any,
) -> Any:
    """A Settings field that an environment variable fills (typed `Any` so each annotation stays the field's type)."""
    variable = Variable(env=env, meaning=meaning, section=section, **options)
    # Secrets stay out of repr(settings), and so out of tracebacks' locals and anything that prints the settings.
    metadata, shown = {"variable": variable}, not variable.secret
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata, repr=shown)
    return dataclasses.field(default=default, metadata=metadata, repr=shown)


def _public_url(raw: str) -> str:
    return raw.rstrip("/")


def _upstash_url(raw: str) -> str:
    # The token travels in every request: HTTPS, or plain HTTP to this machine only (a local gateway or stand-in).
    url = raw.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if (
        not parts.hostname
        or parts.username
        or parts.scheme not in ("https", "http")
        or (parts.scheme == "http" and not loopback)
    ):
        raise ConfigurationError(
            "UPSTASH_REDIS_REST_URL must be an https:// URL without credentials (plain http only on loopback)."
        )
    return url


def _routes(raw: str) -> dict[str, list[str]]:
    try:
        routes = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"BABYCHAIN_MODEL_ROUTES is not JSON: {exc}") from exc
    if not isinstance(routes, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in routes.values()
    ):
        raise ConfigurationError('BABYCHAIN_MODEL_ROUTES must look like {"model id": ["provider", ...]}.')
    return routes


@dataclass(frozen=True)
class Settings:
    # ------------------------------------------------------------------------------------------------------ engine
    provider_mode: str = setting(
        "BABYCHAIN_PROVIDER_MODE",
        "local",
        "Where steps run: `local` (the built-in offline provider), `byok` (your Black Forest Labs and BytePlus keys) "
        "or `babysea` (hosted, with provider failover).",
        section=ENGINE,
        choices=PROVIDER_MODES,
    )
    api_keys: tuple[str, ...] = setting(
        "BABYCHAIN_API_KEY",
        (),
        "Bootstrap API keys, comma-separated; each has every scope. Per-caller keys live in the database.",
        section=ENGINE,
        secret=True,
        serve="`bc_local_dev_key_0001`",
    )
    callback_secret: str = setting(
        "BABYCHAIN_CALLBACK_SECRET",
        "",
        "Signs the run callbacks (Standard Webhooks; a `whsec_…` secret) and derives the per-step webhook tokens.",
        section=ENGINE,
        secret=True,
        serve="a generated `whsec_…` kept in the home folder",
    )
    database_url: str = setting(
        "DATABASE_URL",
        "",
        "Postgres connection string (with `BABYCHAIN_STORE=postgres`). `serve` applies the migrations at start.",
        section=ENGINE,
        secret=True,
        serve="an embedded Postgres in `<home>/pg`",
    )
    retention_days: int = setting(
        "BABYCHAIN_RETENTION_DAYS",
        30,
        "Days a finished run is kept after it ends; then the sweeper deletes it with its steps, callback attempts "
        "and local artifact files (a run that still owes its callback stays until the callback settles). `0` keeps "
        "every run. On AWS the bucket's lifecycle rule expires artifacts after as many days (`template.yaml` "
        "parameter `RetentionDays` sets both). Provider webhook receipts, which only deduplicate retried deliveries, "
        "go after 7 days (or this window if shorter), also with `0`.",
        section=ENGINE,
        minimum=0,
        maximum=36500,
    )

    # ----------------------------------------------------------------------------------------------- rate limiting
    upstash_redis_rest_url: str = setting(
        "UPSTASH_REDIS_REST_URL",
        "",
        "Upstash Redis REST URL (`https://…`; plain `http` only on loopback). With the token it turns on per-key rate "
        "limiting (a one-minute sliding window per API key; requests pass when Upstash cannot answer); unset, there is "
        "no rate limiting.",
        section=RATE_LIMITS,
        parse=_upstash_url,
        expected="an https URL",
    )
    upstash_redis_rest_token: str = setting(
        "UPSTASH_REDIS_REST_TOKEN",
        "",
        "Upstash Redis REST token (set it together with `UPSTASH_REDIS_REST_URL`).",
        section=RATE_LIMITS,
        secret=True,
    )
    rate_limit_per_minute: int = setting(
        "BABYCHAIN_RATE_LIMIT_PER_MINUTE",
        60,
        "Requests per minute per API key (sliding window), for bootstrap keys and for database keys without a limit of "
        "their own (`babychain keys create --rate-limit N`).",
        section=RATE_LIMITS,
        minimum=1,
        maximum=1_000_000,
    )

    # --------------------------------------------------------------------------------------------------- providers
    bfl_api_key: str = setting(
        "BFL_API_KEY", "", "Black Forest Labs key (FLUX models, `byok` mode).", section=PROVIDERS, secret=True
    )
    bfl_region: str = setting(
        "BFL_REGION",
        "global",
        "Black Forest Labs endpoint; picks `BFL_API_BASE_URL` when that is unset.",
        section=PROVIDERS,
        choices=tuple(BFL_BASE_URLS),
    )
    # Real providers' base URLs are configuration so tests can point them at local stand-ins.
    bfl_api_base_url: str = setting(
        "BFL_API_BASE_URL",
        BFL_BASE_URLS["global"],
        "Black Forest Labs API base URL.",
        section=PROVIDERS,
        follows=("bfl_region", BFL_BASE_URLS),
    )
    bfl_webhook_secret: str = setting(
        "BFL_WEBHOOK_SECRET", "", "Verifies Black Forest Labs webhooks.", section=PROVIDERS, secret=True
    )
    ark_api_key: str = setting(
        "ARK_API_KEY", "", "BytePlus ModelArk key (Seedream, Seedance; `byok` mode).", section=PROVIDERS, secret=True
    )
    ark_api_base_url: str = setting(
        "ARK_API_BASE_URL",
        "https://ark.ap-southeast.bytepluses.com/api/v3",
        "BytePlus ModelArk API base URL.",
        section=PROVIDERS,
    )
    babysea_api_key: str = setting(
        "BABYSEA_API_KEY", "", "BabySea key (`babysea` mode, and `babysea` routes).", section=PROVIDERS, secret=True
    )
    babysea_region: str = setting(
        "BABYSEA_REGION",
        "us",
        "BabySea region; picks `BABYSEA_API_BASE_URL` when that is unset.",
        section=PROVIDERS,
        choices=tuple(BABYSEA_BASE_URLS),
    )
    babysea_api_base_url: str = setting(
        "BABYSEA_API_BASE_URL",
        BABYSEA_BASE_URLS["us"],
        "BabySea API base URL.",
        section=PROVIDERS,
        follows=("babysea_region", BABYSEA_BASE_URLS),
    )
    babysea_webhook_secret: str = setting(
        "BABYSEA_WEBHOOK_SECRET",
        "",
        "Verifies BabySea webhooks; point BabySea's dashboard webhook at `<public url>/api/v1/webhooks/babysea`.",
        section=PROVIDERS,
        secret=True,
    )
    public_base_url: str = setting(
        "BABYCHAIN_PUBLIC_URL",
        "",
        "Where providers reach this deployment's webhook routes (a trailing `/` is dropped); empty means poll only.",
        section=PROVIDERS,
        parse=_public_url,
        expected="a URL",
        serve="its own URL",
    )
    # setting() returns a dataclasses.field with a default_factory here, so no dict is shared between instances.
    model_routes: dict[str, list[str]] = setting(  # noqa: RUF009
        "BABYCHAIN_MODEL_ROUTES",
        None,
        'Failover routes per model, e.g. `{"bytedance/seedream-4.5": ["byteplus", "babysea"]}`.',
        section=PROVIDERS,
        default_factory=dict,
        parse=_routes,
        expected="JSON",
    )

    # ---------------------------------------------------------------------------------- polling, deadlines, retries
    poll_interval_seconds: float = setting(
        "BABYCHAIN_POLL_INTERVAL_SECONDS",
        5.0,
        "Delay between polls of a running provider job.",
        section=TIMING,
        serve="at most `0.5`",
    )
    max_poll_interval_seconds: float = setting(
        "BABYCHAIN_MAX_POLL_INTERVAL_SECONDS",
        30.0,
        "Not read at present: polls wait `BABYCHAIN_POLL_INTERVAL_SECONDS` every time.",
        section=TIMING,
    )
    submit_timeout_seconds: float = setting(
        "BABYCHAIN_SUBMIT_TIMEOUT_SECONDS",
        150.0,
        "Deadline of one provider submit, however slowly the provider answers (Seedream answers only when its image "
        "exists: 60-180 s). A claimed step that has no job id this long after its claim (plus "
        "`BABYCHAIN_SWEEPER_GRACE_SECONDS`) is given back and submitted again. Keep it below the step executor "
        "function's timeout (180 s).",
        section=TIMING,
    )
    next_step_in_invocation: bool = setting(
        "BABYCHAIN_NEXT_STEP_IN_INVOCATION",
        True,
        "Whether the step executor that completes a step claims and submits the next one in the same invocation (while "
        "a whole submit still fits in it). Off: every next step goes by its queue message, as when an invocation is "
        "short of time; one queue hop more per step. For measuring that hop (`bench/engine_bench.py`); leave it on.",
        section=TIMING,
    )
    sweeper_grace_seconds: float = setting(
        "BABYCHAIN_SWEEPER_GRACE_SECONDS",
        30.0,
        "How far past due a step must be before the sweeper re-drives it (its queue message was lost).",
        section=TIMING,
        serve="at most `5`",
    )
    image_step_timeout_seconds: float = setting(
        "BABYCHAIN_IMAGE_STEP_TIMEOUT_SECONDS", 600.0, "Deadline of an image step.", section=TIMING
    )
    video_step_timeout_seconds: float = setting(
        "BABYCHAIN_VIDEO_STEP_TIMEOUT_SECONDS", 1800.0, "Deadline of a video step.", section=TIMING
    )
    run_timeout_seconds: float = setting(
        "BABYCHAIN_RUN_TIMEOUT_SECONDS", 7200.0, "Deadline of a whole run.", section=TIMING
    )
    max_submit_attempts: int = setting(
        "BABYCHAIN_MAX_SUBMIT_ATTEMPTS",
        5,
        "Submit attempts per step for transient provider errors (429, 5xx, timeouts).",
        section=TIMING,
        minimum=1,
    )
    retry_base_seconds: float = setting(
        "BABYCHAIN_RETRY_BASE_SECONDS", 2.0, "First retry delay; it doubles per attempt, with jitter.", section=TIMING
    )
    retry_max_seconds: float = setting("BABYCHAIN_RETRY_MAX_SECONDS", 120.0, "Longest retry delay.", section=TIMING)
    # Standard Webhooks' example schedule: about three days.
    callback_schedule_seconds: tuple[float, ...] = setting(
        "BABYCHAIN_CALLBACK_SCHEDULE_SECONDS",
        (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400),
        "Waits between callback attempts; `410 Gone` stops them.",
        section=TIMING,
    )
    callback_timeout_seconds: float = setting(
        "BABYCHAIN_CALLBACK_TIMEOUT_SECONDS",
        15.0,
        "Deadline of one callback attempt: connecting, sending and reading the answer, however slowly it comes.",
        section=TIMING,
        minimum=1,
    )
    callback_stale_seconds: float = setting(
        "BABYCHAIN_CALLBACK_STALE_SECONDS",
        30.0,
        "Lease of a callback attempt: until it ends, nobody else may send that callback; after it, the attempt "
        "counts as abandoned (its sender died), is recorded, and the callback is sent again. Must exceed "
        "`BABYCHAIN_CALLBACK_TIMEOUT_SECONDS` by 5 s or more (on AWS: the callback function's timeout).",
        section=TIMING,
    )
    callback_receiver_concurrency: int = setting(
        "BABYCHAIN_CALLBACK_RECEIVER_CONCURRENCY",
        4,
        "Most callback attempts in flight at once to one receiver (scheme, host and port); the rest wait their "
        "turn, so a slow receiver cannot occupy every sender.",
        section=TIMING,
        minimum=1,
    )
    download_timeout_seconds: float = setting(
        "BABYCHAIN_DOWNLOAD_TIMEOUT_SECONDS",
        100.0,
        "Deadline of one output download, however slowly the bytes come.",
        section=TIMING,
        minimum=1,
    )

    # --------------------------------------------------------------------------------------------------- artifacts
    max_output_bytes: int = setting(
        "BABYCHAIN_MAX_OUTPUT_BYTES",
        200 * 1024 * 1024,
        "Largest provider output the engine copies (bytes).",
        section=ARTIFACTS,
        minimum=1,
    )
    artifact_dir: str = setting(
        "BABYCHAIN_ARTIFACT_DIR",
        ".babychain/artifacts",
        "Folder of the artifact copies when there is no bucket.",
        section=ARTIFACTS,
        serve="`<home>/artifacts`",
    )
    artifact_base_url: str = setting(
        "BABYCHAIN_ARTIFACT_BASE_URL",
        "",
        "Base of the artifact URLs that callers and providers get, for `BABYCHAIN_ARTIFACT_DIR`.",
        section=ARTIFACTS,
        serve="`<public url or its own URL>/files`",
    )
    artifact_bucket: str = setting(
        "BABYCHAIN_ARTIFACT_BUCKET",
        "",
        "S3 bucket of the artifact copies (`template.yaml` sets it); outputs are handed on as presigned URLs.",
        section=ARTIFACTS,
    )
    artifact_url_ttl_seconds: int = setting(
        "BABYCHAIN_ARTIFACT_URL_TTL_SECONDS",
        3600,
        "Lifetime of the presigned artifact URLs.",
        section=ARTIFACTS,
        minimum=1,
        maximum=MAX_PRESIGN_SECONDS,
    )

    # ------------------------------------------------------------------------------------------------------- AWS
    secrets_id: str = setting(
        "BABYCHAIN_SECRETS_ID",
        "",
        "Name or ARN of the Secrets Manager secret: a JSON object of these variables (those marked secret), loaded "
        "into the environment at cold start; a variable already set wins.",
        section=AWS,
    )
    step_queue_url: str = setting(
        "BABYCHAIN_STEP_QUEUE_URL", "", "SQS step queue (`template.yaml` sets it; required on AWS).", section=AWS
    )
    callback_queue_url: str = setting(
        "BABYCHAIN_CALLBACK_QUEUE_URL",
        "",
        "SQS callback queue (`template.yaml` sets it; required on AWS).",
        section=AWS,
    )
    store_kind: str = setting(
        "BABYCHAIN_STORE",
        "postgres",
        "How the Lambda functions reach the database: `postgres` (`DATABASE_URL`) or `supabase` (REST API).",
        section=AWS,
        choices=STORE_KINDS,
    )
    supabase_url: str = setting(
        "SUPABASE_URL", "", "Supabase project URL (with `BABYCHAIN_STORE=supabase`).", section=AWS
    )
    supabase_service_role_key: str = setting(
        "SUPABASE_SERVICE_ROLE_KEY",
        "",
        "Supabase service role key (with `BABYCHAIN_STORE=supabase`).",
        section=AWS,
        secret=True,
    )

    # ----------------------------------------------------------------------------------------------- observability
    sentry_dsn: str = setting(
        "SENTRY_DSN",
        "",
        "Sentry project DSN; empty turns Sentry off. Events are scrubbed of every secret's value before they leave.",
        section=OBSERVABILITY,
        secret=True,
    )
    environment: str = setting(
        "BABYCHAIN_ENVIRONMENT",
        "production",
        "Environment name on Sentry events (`template.yaml` sets the stack name).",
        section=OBSERVABILITY,
    )

    # ------------------------------------------------------------------------------- local provider and development
    local_provider_url: str = setting(
        "BABYCHAIN_LOCAL_PROVIDER_URL",
        "",
        "URL of a running local provider server (`local` mode).",
        section=LOCAL,
        serve="a local provider it starts",
    )
    local_provider_dir: str = setting(
        "BABYCHAIN_LOCAL_PROVIDER_DIR",
        ".babychain/local-provider",
        "Not read at present: the local provider that `serve` starts keeps its jobs in `<home>/local-provider`.",
        section=LOCAL,
        serve="`<home>/local-provider`",
    )
    local_provider_delay_seconds: float = setting(
        "BABYCHAIN_LOCAL_PROVIDER_DELAY_SECONDS", 1.0, "How long a local provider job takes.", section=LOCAL
    )
    local_provider_fail: tuple[str, ...] = setting(
        "BABYCHAIN_LOCAL_PROVIDER_FAIL",
        (),
        "Injected local provider failures, e.g. `image_to_video`, `text_to_image:moderated`, "
        "`image_to_video:submit_503x2`.",
        section=LOCAL,
    )
    allow_loopback_http: bool = setting(
        "BABYCHAIN_DEV_ALLOW_LOOPBACK_HTTP",
        False,
        "Development only: accept plain HTTP on loopback for input URLs and `webhook_url`.",
        section=LOCAL,
        serve="on, and off with `--allow-remote` (serve says so at start)",
    )

    def require_callback_secret(self) -> str:
        if not self.callback_secret:
            raise ConfigurationError("BABYCHAIN_CALLBACK_SECRET is not set; callbacks cannot be signed.")
        return self.callback_secret


def _declare() -> tuple[Variable, ...]:
    hints = typing.get_type_hints(Settings)
    defaults = Settings()
    return tuple(
        dataclasses.replace(f.metadata["variable"], field=f.name, type=hints[f.name], default=getattr(defaults, f.name))
        for f in dataclasses.fields(Settings)
    )


VARIABLES = _declare()
BY_ENV = {v.env: v for v in VARIABLES}
BY_FIELD = {v.field: v for v in VARIABLES}
SECRET_VARIABLES = tuple(v.env for v in VARIABLES if v.secret)
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


@dataclass(frozen=True)
class PowertoolsVariable:
    env: str
    meaning: str
    default: str = ""  # what babychain.observability gives Powertools when the variable is unset
    local: str = ""  # what the one-machine shape gives it (babychain.local)
    aws: str = ""  # what template.yaml sets


POWERTOOLS_VARIABLES = (
    PowertoolsVariable(
        "POWERTOOLS_SERVICE_NAME",
        "Service name on logs, metrics and traces; the package's loggers (`babychain.*`) sit under it.",
        default="babychain",
        aws="`babychain`",
    ),
    PowertoolsVariable(
        "POWERTOOLS_METRICS_NAMESPACE",
        "CloudWatch namespace of the metrics.",
        default="BabyChain",
        aws="`BabyChain/<stack name>`",
    ),
    PowertoolsVariable("POWERTOOLS_LOG_LEVEL", "Level of the JSON logs.", local="WARNING", aws="`INFO`"),
    PowertoolsVariable("POWERTOOLS_METRICS_DISABLED", "No EMF metrics on stdout.", local="true"),
    PowertoolsVariable("POWERTOOLS_TRACE_DISABLED", "No X-Ray tracing.", local="true"),
    PowertoolsVariable(
        "POWERTOOLS_LOGGER_LOG_EVENT",
        "Not honoured: the handlers never log their event (an API event carries the caller's key).",
    ),
)


def is_set(env: str) -> bool:
    """Whether a declared variable has a value in the environment (empty counts as unset)."""
    return bool(raw(env).strip())


def raw(env: str) -> str:
    """A declared variable's text as the environment holds it ("" when unset); for the scrubber and for messages."""
    if env not in BY_ENV:
        raise KeyError(f"{env} is not declared in babychain.config")
    return os.environ.get(env, "")


def read(field: str) -> Any:
    """One setting, parsed and checked like `load_settings()` does, without reading the others (unless it follows one:
    a base URL reads its region). For what runs before the settings: the secrets loader and Sentry."""
    return _value(BY_FIELD[field], {})


def load_settings() -> Settings:
    values: dict[str, Any] = {}
    for variable in VARIABLES:
        values[variable.field] = _value(variable, values)
    settings = Settings(**values)
    check_settings(settings)
    return settings


def check_settings(settings: Settings) -> None:
    """Rules that tie settings together."""
    if settings.callback_stale_seconds < settings.callback_timeout_seconds + 5:
        raise ConfigurationError(
            "BABYCHAIN_CALLBACK_STALE_SECONDS must exceed BABYCHAIN_CALLBACK_TIMEOUT_SECONDS by 5 s or more "
            f"(got {settings.callback_stale_seconds:g} and {settings.callback_timeout_seconds:g}): an attempt still "
            "in flight would be claimed again."
        )


def _value(variable: Variable, known: dict[str, Any]) -> Any:
    text = os.environ.get(variable.env, "")
    if text.strip():
        return _parse(variable, text)
    if variable.follows is not None:
        source, mapping = variable.follows
        return mapping[known[source] if source in known else read(source)]
    field = _FIELDS[variable.field]
    # A fresh value from a factory: the mutable default (model routes) is never shared between Settings.
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _parse(variable: Variable, text: str) -> Any:
    try:
        value = _convert(variable, text)
    except ValueError:
        shown = "a value that is not shown (secret)" if variable.secret else repr(text)
        raise ConfigurationError(f"{variable.env} must be {describe_type(variable)}; got {shown}.") from None
    if variable.minimum is not None and value < variable.minimum:
        raise ConfigurationError(f"{variable.env} must be at least {variable.minimum:g}; got {text!r}.")
    if variable.maximum is not None and value > variable.maximum:
        raise ConfigurationError(f"{variable.env} must be at most {variable.maximum:g}; got {text!r}.")
    return value


def _items(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.replace("\n", ",").split(",") if part.strip())


def _number(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def _integer(text: str) -> int:
    # "200000000" and "2e8" are whole numbers; "2.5" is not.
    try:
        return int(text)
    except ValueError:
        number = _number(text)
        if not number.is_integer():
            raise
        return int(number)


def _convert(variable: Variable, text: str) -> Any:
    if variable.parse is not None:
        return variable.parse(text)
    if variable.choices:
        choice = text.strip().lower()
        if choice not in variable.choices:
            raise ValueError(text)
        return choice
    kind = variable.type
    if kind is bool:
        word = text.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(text)
        return word in TRUE_WORDS
    if kind is int:
        return _integer(text.strip())
    if kind is float:
        return _number(text.strip())
    if kind == tuple[str, ...]:
        return _items(text)
    if kind == tuple[float, ...]:
        return tuple(_number(item) for item in _items(text))
    if kind is str:
        return text
    raise TypeError(f"{variable.field}: no parser for {kind}; give the setting a parse function")


# ------------------------------------------------------------------------------------------------------------ docs

NONE = "\u2013"  # an en dash: no value, as in the README's tables


# How a type reads in an error message and in the docs' type column.
_TYPE_WORDS: dict[Any, tuple[str, str]] = {
    bool: ("a boolean (1, true, yes, on / 0, false, no, off)", "boolean"),
    int: ("a whole number", "integer"),
    float: ("a number", "number"),
    str: ("text", "text"),
    tuple[str, ...]: ("a comma-separated list", "list"),
    tuple[float, ...]: ("comma-separated numbers", "list of numbers"),
}


def describe_type(variable: Variable) -> str:
    if variable.choices:
        return "one of " + ", ".join(variable.choices)
    return variable.expected or _TYPE_WORDS[variable.type][0]


def _type_cell(variable: Variable) -> str:
    if variable.choices:
        return " / ".join(f"`{c}`" for c in variable.choices)
    return variable.expected or _TYPE_WORDS[variable.type][1]


def _shown_default(variable: Variable) -> str:
    if variable.follows is not None:
        source, mapping = variable.follows
        return f"from `{BY_FIELD[source].env}`: " + ", ".join(f"`{k}` → `{v}`" for k, v in mapping.items())
    value = variable.default
    if value in ("", (), {}, None):
        return NONE
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "`" + ",".join(_plain(v) for v in value) + "`"
    return f"`{_plain(value)}`"


def _plain(value: Any) -> str:
    # 5.0 reads as 5 and 0.5 as 0.5; whole numbers never turn into exponents.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def markdown() -> str:
    """docs/configuration.md, from the declaration above."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from shared/babychain/config.py by `python -m babychain.config --markdown > "
        "docs/configuration.md`; edit the declaration there, not this file. -->",
        "",
        "BabyChain reads these environment variables once per process (`babychain.config.load_settings()`). An empty",
        "value counts as unset. An invalid value (not a number, not a boolean, not one of the allowed values, out of",
        "bounds) stops the process with a `ConfigurationError` that names the variable.",
        "",
        "- **secret**: on AWS it belongs in the Secrets Manager secret (`BABYCHAIN_SECRETS_ID`, see",
        "  [deploy.md](deploy.md)), never in the function environment; Sentry events are scrubbed of its value.",
        "- **serve**: what `babychain serve` (the one-machine shape) uses instead of the default.",
        "- Lists are comma-separated. Booleans are `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off`. Durations",
        "  are in seconds.",
    ]
    for section in SECTIONS:
        lines += ["", f"## {section}", "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        for v in VARIABLES:
            if v.section != section:
                continue
            name = f"`{v.env}`" + (" (secret)" if v.secret else "")
            default = _shown_default(v) + (f"; serve: {v.serve}" if v.serve else "")
            lines.append(f"| {name} | {_type_cell(v)} | {default} | {v.meaning} |")
    lines += [
        "",
        "## Read by Powertools",
        "",
        "Powertools for AWS Lambda reads its own variables; BabyChain only gives some of them a default when they are",
        "unset (every shape), and the one-machine shape quiets the Lambda-oriented telemetry.",
        "",
        "| variable | default | one machine | template.yaml | meaning |",
        "|---|---|---|---|---|",
    ]
    for p in POWERTOOLS_VARIABLES:
        cells = [f"`{p.default}`" if p.default else NONE, f"`{p.local}`" if p.local else NONE, p.aws or NONE]
        lines.append(f"| `{p.env}` | {' | '.join(cells)} | {p.meaning} |")
    lines += [
        "",
        "The AWS SDK (boto3) reads its own variables too (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`, ...); on",
        "Lambda the runtime sets the region and the credentials.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        print("usage: python -m babychain.config --markdown > docs/configuration.md", file=sys.stderr)
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
