"""`AsyncBabyChain`: the asyncio client, the same calls as `BabyChain` awaited (`list` is an async iterator)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any

import httpx

from babychain.client import _core
from babychain.client.errors import BabyChainError, WaitTimeoutError, error_from_response
from babychain.client.models import Run, RunPage, RunStatus


class AsyncBabyChain:
    """The asyncio twin of `BabyChain` (same settings, retries and errors). `on_progress` may be a plain function or
    a coroutine function."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = _core.resolve_url(base_url)
        self.max_retries = max_retries
        self._headers = _core.headers_for(_core.resolve_key(api_key))
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncBabyChain:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        url = self.base_url + path
        attempt = 0
        while True:
            error: BabyChainError
            try:
                response = await self._http.request(
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
            await asyncio.sleep(delay)
            attempt += 1

    async def create(self, chain: str, body: Mapping[str, Any], idempotency_key: str | None = None) -> Run:
        response = await self.request(
            "POST", _core.create_path(chain), json=dict(body), headers=_core.idempotency_headers(idempotency_key)
        )
        return _core.parse_run(response)

    async def get(self, run_id: str | Run) -> Run:
        return _core.parse_run(await self.request("GET", _core.run_path("get", run_id)))

    async def cancel(self, run_id: str | Run) -> Run:
        return _core.parse_run(await self.request("POST", _core.run_path("cancel", run_id)))

    async def list_page(
        self,
        *,
        status: RunStatus | None = None,
        chain_slug: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> RunPage:
        params = _core.list_params(status, chain_slug, limit, cursor)
        return _core.parse_page(await self.request("GET", f"{_core.API_PREFIX}/chains/runs", params=params))

    async def list(
        self, *, status: RunStatus | None = None, chain_slug: str | None = None, page_size: int = 50
    ) -> AsyncIterator[Run]:
        """`async for run in client.list(): ...`: every run of yours, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_page(status=status, chain_slug=chain_slug, limit=page_size, cursor=cursor)
            for run in page.data:
                yield run
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    async def wait(
        self,
        run_id: str | Run,
        *,
        timeout: float | None = 600.0,
        on_progress: Callable[[Run], object] | None = None,
        interval: float = 1.0,
        max_interval: float = 5.0,
    ) -> Run:
        schedule = _core.PollSchedule(timeout, interval, max_interval)
        last: dict[str, Any] | None = None
        while True:
            run = await self.get(run_id)
            changed = run.raw != last
            if changed and on_progress is not None:
                result = on_progress(run)
                if inspect.isawaitable(result):
                    await result
            if run.is_terminal:
                return run
            last = run.raw
            delay = schedule.next_delay(changed)
            if delay is None:
                raise WaitTimeoutError(run, float(timeout or 0))
            await asyncio.sleep(delay)
