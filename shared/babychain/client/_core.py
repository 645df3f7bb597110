"""Everything the sync and async clients do but the I/O.

Each call is a *plan*: a generator that yields the I/O it needs (`Send` an HTTP request, `Sleep`, `Report` a run to
`wait`'s progress callback) and gets the outcome back, and that returns the call's result or raises its error. The
plans hold the settings, request building, answer and error decoding, the retry policy, pagination and `wait`'s
polling; `BabyChain` (sync.py) and `AsyncBabyChain` (aio.py) only perform the actions, blocking or awaited."""

from __future__ import annotations

import inspect
import os
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from babychain.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BabyChainError,
    MissingSettingError,
    WaitTimeoutError,
    error_from_response,
)
from babychain.client.models import Run, RunPage, RunStatus

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", httpx.Client, httpx.AsyncClient)
# The caller's side of the environment (not engine settings: `babychain.config` declares those). The key's variable
# has the same name as the engine's bootstrap keys, so that one shell can run `serve` and the client.
URL_VARIABLE = "BABYCHAIN_URL"
KEY_VARIABLE = "BABYCHAIN_API_KEY"
CLIENT_VARIABLES = (URL_VARIABLE, KEY_VARIABLE)
API_PREFIX = "/api/v1"
USER_AGENT = "babychain-python-client"
# Answers worth another try: rate limited, and the gateway or service briefly unavailable. Every call is safe to repeat:
# reads and cancel are idempotent, and create carries an Idempotency-Key, so a repeat replays the first run.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_WAIT_SECONDS = 60.0


def resolve_url(base_url: str | None) -> str:
    url = (base_url or os.environ.get(URL_VARIABLE, "")).strip().rstrip("/")
    if not url:
        raise MissingSettingError(
            URL_VARIABLE,
            f"pass base_url= (--url on the command line) or export {URL_VARIABLE}=<the deployment's base URL, e.g. "
            "http://127.0.0.1:8080>",
        )
    if not url.startswith(("http://", "https://")):
        raise BabyChainError(f"the deployment URL must start with http:// or https://, got {url!r}")
    return url.removesuffix(API_PREFIX)


def resolve_key(api_key: str | None) -> str:
    key = (api_key or os.environ.get(KEY_VARIABLE, "")).strip()
    if not key:
        raise MissingSettingError(
            KEY_VARIABLE,
            f"export {KEY_VARIABLE}=<your API key> (`babychain keys create` makes one; `babychain serve` prints the "
            "local development key)",
        )
    return key


def headers_for(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT, "Accept": "application/json"}


def run_path(action: str, run: str | Run) -> str:
    run_id = run.id if isinstance(run, Run) else run
    return f"{API_PREFIX}/chains/{action}/{urllib.parse.quote(str(run_id), safe='')}"


def create_path(chain: str) -> str:
    return f"{API_PREFIX}/chains/{urllib.parse.quote(chain, safe='')}/runs"


def idempotency_headers(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key or f"bc-client-{uuid.uuid4().hex}"}


def list_params(status: str | None, chain_slug: str | None, limit: int, cursor: str | None) -> dict[str, str]:
    params = {"limit": str(limit)}
    for name, value in (("status", status), ("chain_slug", chain_slug), ("cursor", cursor)):
        if value is not None:
            params[name] = value
    return params


def transport_error(exc: httpx.TransportError, url: str) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        error: APIConnectionError = APITimeoutError(f"timed out talking to {url}: {exc}", url)
    else:
        error = APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}", url)
    error.__cause__ = exc
    return error


def retry_delay(error: BabyChainError, attempt: int, max_retries: int) -> float | None:
    """Seconds to wait before repeating a failed call, or None to raise `error`: connection failures and
    `RETRY_STATUSES`, honouring `Retry-After` (up to a minute), else exponential backoff with jitter."""
    if attempt >= max_retries:
        return None
    if isinstance(error, APIError):
        if error.status not in RETRY_STATUSES:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= MAX_RETRY_WAIT_SECONDS else None
    elif not isinstance(error, APIConnectionError):
        return None
    return min(MAX_RETRY_WAIT_SECONDS, 0.5 * 2**attempt) * random.uniform(0.75, 1.25)


def json_object(response: httpx.Response) -> Mapping[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        message = f"The answer from {response.request.url} is not JSON."
        raise APIError(response.status_code, "invalid_response", message) from exc
    if not isinstance(data, dict):
        message = f"The answer from {response.request.url} is not a JSON object."
        raise APIError(response.status_code, "invalid_response", message)
    return data


def parse_run(response: httpx.Response) -> Run:
    return _parsed(response, Run.from_dict, "a chain_run resource")


def parse_page(response: httpx.Response) -> RunPage:
    return _parsed(response, RunPage.from_dict, "a list of runs")


def _parsed(response: httpx.Response, parse: Callable[[Mapping[str, Any]], T], what: str) -> T:
    """A 2xx answer that is not what this API sends (the URL names something else?) is an `invalid_response`."""
    data = json_object(response)
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError) as exc:
        message = f"The answer from {response.request.url} is not {what} ({type(exc).__name__}: {exc})."
        raise APIError(response.status_code, "invalid_response", message) from exc


@dataclass
class PollSchedule:
    """`wait`'s polling: every `interval` seconds while the run keeps changing, backing off by half again per
    unchanged look up to `max_interval` (the default 1 s to 5 s stays within the default 60 requests a minute), and
    never past the deadline. `next_delay` is None once the deadline has passed."""

    timeout: float | None
    interval: float
    max_interval: float

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.max_interval < self.interval:
            raise ValueError("need 0 < interval <= max_interval")
        self._deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self._current = self.interval

    def next_delay(self, changed: bool) -> float | None:
        self._current = self.interval if changed else min(self._current * 1.5, self.max_interval)
        if self._deadline is None:
            return self._current
        left = self._deadline - time.monotonic()
        return None if left <= 0 else min(self._current, left)


# ------------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Send:
    """Send one HTTP request. The driver answers with the `httpx.Response`, or with the `httpx.TransportError` that
    sending raised (the plan decides whether to try again)."""

    method: str
    url: str
    json: Any = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Report:
    """Call `wait`'s `on_progress(run)` (the async driver awaits what it returns, if awaitable)."""

    callback: Callable[[Run], object]
    run: Run


Action = Send | Sleep | Report
# A call: yields actions, is sent each action's outcome (None for Sleep and Report), returns the result.
Plan = Generator[Action, Any, T]


def next_cursor(page: RunPage) -> str | None:
    """The cursor of the page after `page`, or None when it was the last."""
    return page.next_cursor if page.has_more and page.next_cursor else None


def as_method(call: F, plan: Callable[..., Any]) -> F:
    """`call`, which runs `plan`, dressed as the public method: the plan's name without `_` and `_plan`, its
    docstring, and its signature (what `help()` and editors show) but for the return annotation."""
    name = plan.__name__.removeprefix("_").removesuffix("_plan")
    call.__name__, call.__doc__ = name, plan.__doc__
    call.__qualname__ = name  # ClientCore.__init_subclass__ puts the class in front
    call.__signature__ = inspect.signature(plan).replace(return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]
    return call


class ClientCore(Generic[H]):
    """The state and the calls both clients share. Each call is a `_<name>_plan` method; the sync and async clients
    turn each into their public `<name>` method (`as_method`), which runs the plan with their own I/O on their own
    kind of httpx client (`H`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if inspect.isfunction(value) and value.__qualname__ == name:
                value.__qualname__ = f"{cls.__qualname__}.{name}"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        http_client: H | None = None,
    ) -> None:
        self.base_url = resolve_url(base_url)
        self.max_retries = max_retries
        self._headers = headers_for(resolve_key(api_key))
        self._owns_http = http_client is None
        self._http: H = self._new_http(timeout) if http_client is None else http_client

    @staticmethod
    def _new_http(timeout: float) -> H:
        raise NotImplementedError

    def _request_plan(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Plan[httpx.Response]:
        """One API call (`path` from the deployment's root, e.g. `/api/v1/models`), with the retry policy; returns the
        2xx answer or raises."""
        url = self.base_url + path
        send = Send(method, url, json, params, {**self._headers, **(headers or {})})
        attempt = 0
        while True:
            outcome = yield send
            error: BabyChainError
            if isinstance(outcome, httpx.Response):
                if outcome.is_success:
                    return outcome
                error = error_from_response(outcome)
            else:
                error = transport_error(outcome, url)
            delay = retry_delay(error, attempt, self.max_retries)
            if delay is None:
                raise error
            yield Sleep(delay)
            attempt += 1

    def _create_plan(self, chain: str, body: Mapping[str, Any], idempotency_key: str | None = None) -> Plan[Run]:
        """Starts a run of `chain` (`chain1`, `chain2`, `chain3` or an alias). `body` is the request body:
        `{"input": {...}, "webhook_url": ..., "metadata": ...}`. Without `idempotency_key` a fresh one is made, so
        the client's own retries never start a second run."""
        response = yield from self._request_plan(
            "POST", create_path(chain), json=dict(body), headers=idempotency_headers(idempotency_key)
        )
        return parse_run(response)

    def _get_plan(self, run_id: str | Run) -> Plan[Run]:
        """The run as it is now, with its steps (`progress` while a step runs)."""
        return parse_run((yield from self._request_plan("GET", run_path("get", run_id))))

    def _cancel_plan(self, run_id: str | Run) -> Plan[Run]:
        """Cancels a queued or running run; a run that already ended comes back unchanged."""
        return parse_run((yield from self._request_plan("POST", run_path("cancel", run_id))))

    def _list_page_plan(
        self,
        *,
        status: RunStatus | None = None,
        chain_slug: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Plan[RunPage]:
        """One page of your runs, newest first (`limit` 1-100; `cursor` is a page's `next_cursor`)."""
        params = list_params(status, chain_slug, limit, cursor)
        return parse_page((yield from self._request_plan("GET", f"{API_PREFIX}/chains/runs", params=params)))

    def _wait_plan(
        self,
        run_id: str | Run,
        *,
        timeout: float | None = 600.0,
        on_progress: Callable[[Run], object] | None = None,
        interval: float = 1.0,
        max_interval: float = 5.0,
    ) -> Plan[Run]:
        """Polls until the run ends and returns it. `on_progress(run)` is called with the first look and then each
        time the run changed (a step started, progressed or ended...); the async client awaits it if it returns an
        awaitable. Raises `WaitTimeoutError` (carrying the run as last seen) after `timeout` seconds; None waits for
        as long as it takes."""
        schedule = PollSchedule(timeout, interval, max_interval)
        last: dict[str, Any] | None = None
        while True:
            run = yield from self._get_plan(run_id)
            changed = run.raw != last
            if changed and on_progress is not None:
                yield Report(on_progress, run)
            if run.is_terminal:
                return run
            last = run.raw
            delay = schedule.next_delay(changed)
            if delay is None:
                raise WaitTimeoutError(run, float(timeout or 0))
            yield Sleep(delay)
