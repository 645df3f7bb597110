"""`AsyncBabyChain`: the asyncio client, the same calls as `BabyChain` awaited (`list` is an async iterator). The
calls are planned in `_core.ClientCore`; this file performs the plans' I/O with an `httpx.AsyncClient` and
`asyncio.sleep`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from babychain.client import _core
from babychain.client.models import Run, RunPage, RunStatus

T = TypeVar("T")


class AsyncBabyChain(_core.ClientCore):
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
        super().__init__(base_url, api_key, max_retries)
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

    async def _perform(self, action: _core.Action) -> object:
        if isinstance(action, _core.Send):
            try:
                return await self._http.request(
                    action.method, action.url, json=action.json, params=action.params, headers=action.headers
                )
            except httpx.TransportError as exc:
                return exc
        if isinstance(action, _core.Sleep):
            await asyncio.sleep(action.seconds)
        elif inspect.isawaitable(result := action.callback(action.run)):
            await result
        return None

    async def _do(self, plan: _core.Plan[T]) -> T:
        outcome: object = None
        while True:
            try:
                action = plan.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            outcome = await self._perform(action)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        return await self._do(self._request_plan(method, path, json=json, params=params, headers=headers))

    async def create(self, chain: str, body: Mapping[str, Any], idempotency_key: str | None = None) -> Run:
        return await self._do(self._create_plan(chain, body, idempotency_key))

    async def get(self, run_id: str | Run) -> Run:
        return await self._do(self._run_plan("get", run_id))

    async def cancel(self, run_id: str | Run) -> Run:
        return await self._do(self._run_plan("cancel", run_id))

    async def list_page(
        self,
        *,
        status: RunStatus | None = None,
        chain_slug: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> RunPage:
        return await self._do(self._page_plan(status, chain_slug, limit, cursor))

    async def list(
        self, *, status: RunStatus | None = None, chain_slug: str | None = None, page_size: int = 50
    ) -> AsyncIterator[Run]:
        """`async for run in client.list(): ...`: every run of yours, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self._do(self._page_plan(status, chain_slug, page_size, cursor))
            for run in page.data:
                yield run
            if (cursor := _core.next_cursor(page)) is None:
                return

    async def wait(
        self,
        run_id: str | Run,
        *,
        timeout: float | None = 600.0,
        on_progress: Callable[[Run], object] | None = None,
        interval: float = 1.0,
        max_interval: float = 5.0,
    ) -> Run:
        return await self._do(self._wait_plan(run_id, timeout, on_progress, interval, max_interval))
