"""`BabyChain`: the synchronous client. What each call does is planned in `_core.ClientCore`; this file performs the
plans' I/O with a blocking `httpx.Client` and `time.sleep`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from babychain.client import _core
from babychain.client.models import Run, RunPage, RunStatus

T = TypeVar("T")


class BabyChain(_core.ClientCore):
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
        super().__init__(base_url, api_key, max_retries)
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

    def _perform(self, action: _core.Action) -> object:
        if isinstance(action, _core.Send):
            try:
                return self._http.request(
                    action.method, action.url, json=action.json, params=action.params, headers=action.headers
                )
            except httpx.TransportError as exc:
                return exc
        if isinstance(action, _core.Sleep):
            time.sleep(action.seconds)
        else:
            action.callback(action.run)
        return None

    def _do(self, plan: _core.Plan[T]) -> T:
        outcome: object = None
        while True:
            try:
                action = plan.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            outcome = self._perform(action)

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
        return self._do(self._request_plan(method, path, json=json, params=params, headers=headers))

    def create(self, chain: str, body: Mapping[str, Any], idempotency_key: str | None = None) -> Run:
        """Starts a run of `chain` (`chain1`, `chain2`, `chain3` or an alias). `body` is the request body:
        `{"input": {...}, "webhook_url": ..., "metadata": ...}`. Without `idempotency_key` a fresh one is made, so
        the client's own retries never start a second run."""
        return self._do(self._create_plan(chain, body, idempotency_key))

    def get(self, run_id: str | Run) -> Run:
        return self._do(self._run_plan("get", run_id))

    def cancel(self, run_id: str | Run) -> Run:
        """Cancels a queued or running run; a run that already ended comes back unchanged."""
        return self._do(self._run_plan("cancel", run_id))

    def list_page(
        self,
        *,
        status: RunStatus | None = None,
        chain_slug: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> RunPage:
        """One page of your runs, newest first (`limit` 1-100; `cursor` is a page's `next_cursor`)."""
        return self._do(self._page_plan(status, chain_slug, limit, cursor))

    def list(
        self, *, status: RunStatus | None = None, chain_slug: str | None = None, page_size: int = 50
    ) -> Iterator[Run]:
        """Every run of yours, newest first, fetching page after page (signed cursors) as you iterate."""
        cursor: str | None = None
        while True:
            page = self._do(self._page_plan(status, chain_slug, page_size, cursor))
            yield from page.data
            if (cursor := _core.next_cursor(page)) is None:
                return

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
        return self._do(self._wait_plan(run_id, timeout, on_progress, interval, max_interval))
