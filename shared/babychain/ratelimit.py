"""Per-key rate limiting: a one-minute sliding window per API key on Upstash Redis.

The window is upstash-ratelimit's `SlidingWindow` over the upstash-redis REST client (sync): one EVAL per check, of
the library's own script, which counts the current minute and a weighted share of the previous one. Each key has its
own window, named by the caller's `owner_id` (`key:<api key id>` or `env:<fingerprint of a bootstrap key>`), never
by the key itself: Redis holds `babychain:ratelimit:<owner id>:<minute number>`.

Off when `UPSTASH_REDIS_REST_URL` and `UPSTASH_REDIS_REST_TOKEN` are unset (`rate_limiter_from_settings` gives
None). When Upstash cannot answer (unreachable, timed out, an error answer) the request is let through: the limiter
fails open, logs a warning and counts `RateLimitFailOpen`, and skips Upstash for `cooldown_seconds` so that an
outage costs at most one bounded call per process per cooldown. Each call is bounded: no retry, a short connect
timeout and a short read timeout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from babychain.config import Settings
from babychain.errors import ConfigurationError
from babychain.observability import count

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
KEY_PREFIX = "babychain:ratelimit"
CONNECT_TIMEOUT_SECONDS = 0.5
READ_TIMEOUT_SECONDS = 1.0
COOLDOWN_SECONDS = 10.0


@dataclass(frozen=True)
class RateLimitDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # whole seconds until the window resets, at least 1

    def headers(self) -> dict[str, str]:
        """The budget, on every response to an authenticated request."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


class RateLimiter:
    """One sliding window per identifier on Upstash; `check` answers None when Upstash could not (fail open)."""

    def __init__(
        self,
        url: str,
        token: str,
        default_limit: int,
        *,
        window_seconds: int = WINDOW_SECONDS,
        cooldown_seconds: float = COOLDOWN_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self._token = token
        self.default_limit = default_limit
        self.window_seconds = window_seconds
        self.cooldown_seconds = cooldown_seconds
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
        self._redis: Any = None
        self._limits: dict[int, Any] = {}  # one Ratelimit per limit value, like the original
        self._skip_until = 0.0
        self._lock = threading.Lock()

    def check(self, identifier: str, limit: int | None = None) -> RateLimitDecision | None:
        """Counts one request of `identifier` against `limit` (default: the configured one)."""
        if time.monotonic() < self._skip_until:
            count("RateLimitFailOpen", reason="cooldown")
            return None
        try:
            answer = self._ratelimit(limit or self.default_limit).limit(identifier)
        except Exception as exc:
            self._fail_open(exc)
            return None
        reset = max(1, math.ceil(answer.reset - time.time()))
        return RateLimitDecision(bool(answer.allowed), int(answer.limit), int(answer.remaining), reset)

    def _fail_open(self, exc: Exception) -> None:
        from upstash_redis.errors import UpstashError

        self._skip_until = time.monotonic() + self.cooldown_seconds
        reason = "error" if isinstance(exc, UpstashError) else "unreachable"
        # The exception's text may hold Upstash's answer, never the token (it is sent only as a header).
        log.warning(
            "rate limiter failed open (%s: %s); requests pass unchecked for %g s",
            reason,
            type(exc).__name__,
            self.cooldown_seconds,
        )
        count("RateLimitFailOpen", reason=reason)

    def _ratelimit(self, limit: int) -> Any:
        with self._lock:
            ratelimit = self._limits.get(limit)
            if ratelimit is None:
                from upstash_ratelimit import Ratelimit, SlidingWindow

                limiter = SlidingWindow(max_requests=limit, window=self.window_seconds, unit="s")
                ratelimit = self._limits[limit] = Ratelimit(redis=self._client(), limiter=limiter, prefix=KEY_PREFIX)
            return ratelimit

    def _client(self) -> Any:
        if self._redis is None:
            from upstash_redis import Redis

            # No retry (the library waits 3 s between tries by default) and no telemetry headers.
            redis = Redis(self.url, self._token, rest_retries=0, allow_telemetry=False)
            http = getattr(redis, "_http", None)
            if not isinstance(getattr(http, "_client", None), httpx.Client):
                raise RuntimeError("upstash-redis no longer keeps an httpx client in _http._client; bound it anew")
            # The library's own client has no timeout at all; an outage must not hold every request.
            http._client.close()  # type: ignore[union-attr]
            http._client = httpx.Client(timeout=self._timeout)  # type: ignore[union-attr]
            self._redis = redis
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


def rate_limiter_from_settings(settings: Settings) -> RateLimiter | None:
    """The configured limiter, or None when rate limiting is off (neither Upstash setting is set)."""
    url, token = settings.upstash_redis_rest_url, settings.upstash_redis_rest_token
    if not url and not token:
        return None
    if not url or not token:
        raise ConfigurationError("Set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN together (or neither).")
    return RateLimiter(url, token, settings.rate_limit_per_minute)
