"""`BabyChain`: the synchronous client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from babychain.client import _core
from babychain.client.errors import BabyChainError, WaitTimeoutError, error_from_response
from babychain.client.models import Run, RunPage, RunStatus


class BabyChain:
    """A client for one BabyChain deployment.

    `base_url` defaults to `BABYCHAIN_URL` and `api_key` to `BABYCHAIN_API_KEY`. Failed calls are repeated up to
    `max_retries` times when repeating is safe and may help (connection errors, 429 after its `Retry-After`, 502-504);
    then the error is raised (`APIError` subclasses, `APIConnectionError`). Pass `http_client` to bring your own
    `httpx.Client` (proxies, transports); it is then yours to close.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = _core.resolve_url(base_url)
        self.max_retries = max_retries
        self._headers = _core.headers_for(_core.resolve_key(api_key))
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)

    def __enter__(self) -> BabyChain:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One API call (`path` from the deployment's root, e.g. `/api/v1/models`), with the retry policy; returns the
        2xx answer or raises."""
        url = self.base_url + path
        attempt = 0
        while True:
            error: BabyChainError
            try:
                response = self._http.request(
                    method, url, json=json, params=params, headers={**self._headers, **(headers or {})}
                )
            except httpx.TransportError as exc:
                error = _core.transport_error(exc, url)
            else:
                if response.is_success:
                    return response
                error = error_from_response(response)
            delay = _core.retry_delay(error, attempt, self.max_retries)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1

    def create(self, chain: str, body: Mapping[str, Any], idempotency_key: str | None = None) -> Run:
        """Starts a run of `chain` (`chain1`, `chain2`, `chain3` or an alias). `body` is the request body:
        `{"input": {...}, "webhook_url": ..., "metadata": ...}`. Without `idempotency_key` a fresh one is made, so
        the client's own retries never start a second run."""
        response = self.request(
            "POST", _core.create_path(chain), json=dict(body), headers=_core.idempotency_headers(idempotency_key)
        )
        return _core.parse_run(response)

    def get(self, run_id: str | Run) -> Run:
        return _core.parse_run(self.request("GET", _core.run_path("get", run_id)))

    def cancel(self, run_id: str | Run) -> Run:
        """Cancels a queued or running run; a run that already ended comes back unchanged."""
        return _core.parse_run(self.request("POST", _core.run_path("cancel", run_id)))

    def list_page(
        self,
        *,
        status: RunStatus | None = None,
        chain_slug: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> RunPage:
        """One page of your runs, newest first (`limit` 1-100; `cursor` is a page's `next_cursor`)."""
        params = _core.list_params(status, chain_slug, limit, cursor)
        return _core.parse_page(self.request("GET", f"{_core.API_PREFIX}/chains/runs", params=params))

    def list(
        self, *, status: RunStatus | None = None, chain_slug: str | None = None, page_size: int = 50
    ) -> Iterator[Run]:
        """Every run of yours, newest first, fetching page after page (signed cursors) as you iterate."""
        cursor: str | None = None
        while True:
            page = self.list_page(status=status, chain_slug=chain_slug, limit=page_size, cursor=cursor)
            yield from page.data
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    def wait(
        self,
        run_id: str | Run,
        *,
        timeout: float | None = 600.0,
        on_progress: Callable[[Run], object] | None = None,
        interval: float = 1.0,
        max_interval: float = 5.0,
    ) -> Run:
        """Polls until the run ends and returns it. `on_progress(run)` is called with the first look and then each
        time the run changed (a step started, progressed or ended...). Raises `WaitTimeoutError` (carrying the run as
        last seen) after `timeout` seconds; None waits for as long as it takes."""
        schedule = _core.PollSchedule(timeout, interval, max_interval)
        last: dict[str, Any] | None = None
        while True:
            run = self.get(run_id)
            changed = run.raw != last
            if changed and on_progress is not None:
                on_progress(run)
            if run.is_terminal:
                return run
            last = run.raw
            delay = schedule.next_delay(changed)
            if delay is None:
                raise WaitTimeoutError(run, float(timeout or 0))
            time.sleep(delay)
