"""`AsyncBabyChain`: the asyncio client, the same calls as `BabyChain` awaited (`list` is an async iterator). The
calls are planned in `_core.ClientCore`; this file performs the plans' I/O with an `httpx.AsyncClient` and
`asyncio.sleep`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from babychain.client import _core
from babychain.client.models import Run, RunStatus

T = TypeVar("T")
P = ParamSpec("P")


def _awaited(
    plan: Callable[Concatenate[_core.ClientCore[Any], P], _core.Plan[T]],
) -> Callable[Concatenate[AsyncBabyChain, P], Coroutine[Any, Any, T]]:
    async def call(self: AsyncBabyChain, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._do(plan(self, *args, **kwargs))

    return _core.as_method(call, plan)


class AsyncBabyChain(_core.ClientCore[httpx.AsyncClient]):
    """The asyncio twin of `BabyChain` (same settings, retries and errors). `on_progress` may be a plain function or
    a coroutine function."""

    @staticmethod
    def _new_http(timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout)

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

    request = _awaited(_core.ClientCore._request_plan)
    create = _awaited(_core.ClientCore._create_plan)
    get = _awaited(_core.ClientCore._get_plan)
    cancel = _awaited(_core.ClientCore._cancel_plan)
    list_page = _awaited(_core.ClientCore._list_page_plan)
    wait = _awaited(_core.ClientCore._wait_plan)

    async def list(
        self, *, status: RunStatus | None = None, chain_slug: str | None = None, page_size: int = 50
    ) -> AsyncIterator[Run]:
        """`async for run in client.list(): ...`: every run of yours, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_page(status=status, chain_slug=chain_slug, limit=page_size, cursor=cursor)
            for run in page.data:
                yield run
            if (cursor := _core.next_cursor(page)) is None:
                return
