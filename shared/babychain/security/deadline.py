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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("babychain_http_deadline", default=None)


@contextmanager
def total_deadline(seconds: float | None) -> Iterator[None]:
    """Every request made in this block ends within `seconds` of now (None: no deadline); nested blocks narrow it."""
    if seconds is None:
        yield
        return
    deadline = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left(timeout: float, expired: type[Exception]) -> float:
    """The socket timeout for one operation: `timeout`, cut to what is left of the deadline; past it, `expired`."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("The request passed its total deadline.")
    return min(timeout, left)
