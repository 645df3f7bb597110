"""`BabyChain`: the synchronous client. What each call does is planned in `_core.ClientCore`; this file performs the
plans' I/O with a blocking `httpx.Client` and `time.sleep`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from babychain.client import _core
from babychain.client.models import Run, RunStatus

T = TypeVar("T")
P = ParamSpec("P")


def _blocking(
    plan: Callable[Concatenate[_core.ClientCore[Any], P], _core.Plan[T]],
) -> Callable[Concatenate[BabyChain, P], T]:
    def call(self: BabyChain, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._do(plan(self, *args, **kwargs))

    return _core.as_method(call, plan)


class BabyChain(_core.ClientCore[httpx.Client]):
    """A client for one BabyChain deployment.

    `base_url` defaults to `BABYCHAIN_URL` and `api_key` to `BABYCHAIN_API_KEY`. Failed calls are repeated up to
    `max_retries` times when repeating is safe and may help (connection errors, 429 after its `Retry-After`, 502-504);
    then the error is raised (`APIError` subclasses, `APIConnectionError`). Pass `http_client` to bring your own
    `httpx.Client` (proxies, transports); it is then yours to close.
    """

    @staticmethod
    def _new_http(timeout: float) -> httpx.Client:
        return httpx.Client(timeout=timeout)

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

    request = _blocking(_core.ClientCore._request_plan)
    create = _blocking(_core.ClientCore._create_plan)
    get = _blocking(_core.ClientCore._get_plan)
    cancel = _blocking(_core.ClientCore._cancel_plan)
    list_page = _blocking(_core.ClientCore._list_page_plan)
    wait = _blocking(_core.ClientCore._wait_plan)

    def list(
        self, *, status: RunStatus | None = None, chain_slug: str | None = None, page_size: int = 50
    ) -> Iterator[Run]:
        """Every run of yours, newest first, fetching page after page (signed cursors) as you iterate."""
        cursor: str | None = None
        while True:
            page = self.list_page(status=status, chain_slug=chain_slug, limit=page_size, cursor=cursor)
            yield from page.data
            if (cursor := _core.next_cursor(page)) is None:
                return
