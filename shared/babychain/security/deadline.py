"""A total deadline for outbound HTTP: connect, TLS, headers and body, even when the peer trickles bytes.

Per-operation timeouts bound each socket operation, so a peer that sends one byte every few seconds never trips them
and an answer can take minutes. `lean_http` cuts every socket operation to what is left of the deadline set by
`total_deadline()` in the running thread (a context variable), and fails the operation once it has passed, so the
request ends at its deadline whatever the peer does.

    with total_deadline(15.0):
        response = lean_http.fetch("POST", url, body=body, timeout=15.0)
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_deadline: ContextVar[float | None] = ContextVar("babychain_http_deadline", default=None)


class total_deadline:  # lower case: a context manager used as the function it was
    """Every request made in this block ends within `seconds` of entering it (None: no deadline); nested blocks
    narrow it. A class rather than a generator context manager: two to three requests per step each enter one."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._token: Token[float | None] | None = None

    def __enter__(self) -> None:
        if self._seconds is not None:
            deadline = time.monotonic() + self._seconds
            outer = _deadline.get()
            self._token = _deadline.set(deadline if outer is None else min(outer, deadline))

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _deadline.reset(self._token)
            self._token = None


def time_left(timeout: float, expired: type[Exception]) -> float:
    """The socket timeout for one operation: `timeout`, cut to what is left of the deadline; past it, `expired`."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("The request passed its total deadline.")
    return min(timeout, left)
