"""Settings, read once from the environment.

Every knob the engine has is here with its default, so operators have one place to look. The local runner sets
development defaults (see `babychain.local.runner`) before anything reads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from babychain.errors import ConfigurationError

PROVIDER_MODES = ("local", "byok", "babysea")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}.") from exc


def _int(name: str, default: int) -> int:
    return int(_float(name, default))


def _bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.replace("\n", ",").split(",") if k.strip())


@dataclass(frozen=True)
class Settings:
    provider_mode: str = "local"
    api_keys: tuple[str, ...] = ()
    callback_secret: str = ""
    database_url: str = ""
    # Development only: lets input URLs and webhook_url use plain HTTP on loopback. Only the local runner sets it.
    allow_loopback_http: bool = False

    # Queues and polling.
    poll_interval_seconds: float = 5.0
    max_poll_interval_seconds: float = 30.0
    submit_timeout_seconds: float = 60.0
    sweeper_grace_seconds: float = 30.0

    # Deadlines.
    image_step_timeout_seconds: float = 600.0
    video_step_timeout_seconds: float = 1800.0
    run_timeout_seconds: float = 7200.0

    # Retries of transient provider errors, per step.
    max_submit_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 120.0

    # Callbacks: Standard Webhooks' example schedule (about three days) and a per-request timeout.
    callback_schedule_seconds: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    callback_timeout_seconds: float = 15.0
    callback_stale_seconds: float = 120.0

    # Size caps for what the engine downloads.
    max_output_bytes: int = 200 * 1024 * 1024

    # Where durable copies of outputs live and how callers reach them.
    artifact_dir: str = ".babychain/artifacts"
    artifact_base_url: str = ""

    # The built-in local provider.
    local_provider_url: str = ""
    local_provider_dir: str = ".babychain/local-provider"
    local_provider_delay_seconds: float = 1.0
    local_provider_fail: tuple[str, ...] = field(default_factory=tuple)

    # Real providers. Base URLs are configuration so tests can point them at local stand-ins.
    bfl_api_key: str = ""
    bfl_api_base_url: str = "https://api.bfl.ai/v1"
    bfl_webhook_secret: str = ""
    ark_api_key: str = ""
    ark_api_base_url: str = "https://ark.ap-southeast.bytepluses.com/api/v3"
    babysea_api_key: str = ""
    babysea_api_base_url: str = "https://api.us.babysea.ai"
    babysea_webhook_secret: str = ""
    # Where providers can reach this deployment's webhook routes; empty means poll only.
    public_base_url: str = ""
    # Optional failover routes per model, e.g. {"bytedance/seedream-4.5": ["byteplus", "babysea"]}.
    model_routes: dict[str, list[str]] = field(default_factory=dict)

    def require_callback_secret(self) -> str:
        if not self.callback_secret:
            raise ConfigurationError("BABYCHAIN_CALLBACK_SECRET is not set; callbacks cannot be signed.")
        return self.callback_secret


def load_settings() -> Settings:
    mode = os.environ.get("BABYCHAIN_PROVIDER_MODE", "local").strip().lower() or "local"
    if mode not in PROVIDER_MODES:
        raise ConfigurationError(f"BABYCHAIN_PROVIDER_MODE must be one of {', '.join(PROVIDER_MODES)}; got {mode!r}.")
    schedule = os.environ.get("BABYCHAIN_CALLBACK_SCHEDULE_SECONDS")
    defaults = Settings()
    return Settings(
        provider_mode=mode,
        api_keys=_keys(os.environ.get("BABYCHAIN_API_KEY", "")),
        callback_secret=os.environ.get("BABYCHAIN_CALLBACK_SECRET", ""),
        database_url=os.environ.get("DATABASE_URL", ""),
        allow_loopback_http=_bool("BABYCHAIN_DEV_ALLOW_LOOPBACK_HTTP"),
        poll_interval_seconds=_float("BABYCHAIN_POLL_INTERVAL_SECONDS", defaults.poll_interval_seconds),
        max_poll_interval_seconds=_float("BABYCHAIN_MAX_POLL_INTERVAL_SECONDS", defaults.max_poll_interval_seconds),
        submit_timeout_seconds=_float("BABYCHAIN_SUBMIT_TIMEOUT_SECONDS", defaults.submit_timeout_seconds),
        sweeper_grace_seconds=_float("BABYCHAIN_SWEEPER_GRACE_SECONDS", defaults.sweeper_grace_seconds),
        image_step_timeout_seconds=_float("BABYCHAIN_IMAGE_STEP_TIMEOUT_SECONDS", defaults.image_step_timeout_seconds),
        video_step_timeout_seconds=_float("BABYCHAIN_VIDEO_STEP_TIMEOUT_SECONDS", defaults.video_step_timeout_seconds),
        run_timeout_seconds=_float("BABYCHAIN_RUN_TIMEOUT_SECONDS", defaults.run_timeout_seconds),
        max_submit_attempts=_int("BABYCHAIN_MAX_SUBMIT_ATTEMPTS", defaults.max_submit_attempts),
        retry_base_seconds=_float("BABYCHAIN_RETRY_BASE_SECONDS", defaults.retry_base_seconds),
        retry_max_seconds=_float("BABYCHAIN_RETRY_MAX_SECONDS", defaults.retry_max_seconds),
        callback_schedule_seconds=(
            tuple(float(x) for x in _keys(schedule)) if schedule else defaults.callback_schedule_seconds
        ),
        callback_timeout_seconds=_float("BABYCHAIN_CALLBACK_TIMEOUT_SECONDS", defaults.callback_timeout_seconds),
        callback_stale_seconds=_float("BABYCHAIN_CALLBACK_STALE_SECONDS", defaults.callback_stale_seconds),
        max_output_bytes=_int("BABYCHAIN_MAX_OUTPUT_BYTES", defaults.max_output_bytes),
        artifact_dir=os.environ.get("BABYCHAIN_ARTIFACT_DIR", defaults.artifact_dir),
        artifact_base_url=os.environ.get("BABYCHAIN_ARTIFACT_BASE_URL", ""),
        local_provider_url=os.environ.get("BABYCHAIN_LOCAL_PROVIDER_URL", ""),
        local_provider_dir=os.environ.get("BABYCHAIN_LOCAL_PROVIDER_DIR", defaults.local_provider_dir),
        local_provider_delay_seconds=_float(
            "BABYCHAIN_LOCAL_PROVIDER_DELAY_SECONDS", defaults.local_provider_delay_seconds
        ),
        local_provider_fail=_keys(os.environ.get("BABYCHAIN_LOCAL_PROVIDER_FAIL", "")),
        bfl_api_key=os.environ.get("BFL_API_KEY", ""),
        bfl_api_base_url=os.environ.get("BFL_API_BASE_URL", "") or _bfl_base(os.environ.get("BFL_REGION", "")),
        bfl_webhook_secret=os.environ.get("BFL_WEBHOOK_SECRET", ""),
        ark_api_key=os.environ.get("ARK_API_KEY", ""),
        ark_api_base_url=os.environ.get("ARK_API_BASE_URL", defaults.ark_api_base_url),
        babysea_api_key=os.environ.get("BABYSEA_API_KEY", ""),
        babysea_api_base_url=os.environ.get("BABYSEA_API_BASE_URL", "")
        or f"https://api.{os.environ.get('BABYSEA_REGION', 'us') or 'us'}.babysea.ai",
        babysea_webhook_secret=os.environ.get("BABYSEA_WEBHOOK_SECRET", ""),
        public_base_url=os.environ.get("BABYCHAIN_PUBLIC_URL", "").rstrip("/"),
        model_routes=_routes(os.environ.get("BABYCHAIN_MODEL_ROUTES", "")),
    )


def _bfl_base(region: str) -> str:
    host = {"": "api.bfl.ai", "global": "api.bfl.ai", "eu": "api.eu.bfl.ai", "us": "api.us.bfl.ai"}.get(region.lower())
    if host is None:
        raise ConfigurationError(f"BFL_REGION must be global, eu or us; got {region!r}.")
    return f"https://{host}/v1"


def _routes(raw: str) -> dict[str, list[str]]:
    if not raw.strip():
        return {}
    try:
        routes = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"BABYCHAIN_MODEL_ROUTES is not JSON: {exc}") from exc
    if not isinstance(routes, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in routes.values()
    ):
        raise ConfigurationError('BABYCHAIN_MODEL_ROUTES must look like {"model id": ["provider", ...]}.')
    return routes
