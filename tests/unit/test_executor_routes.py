"""The submit budget arithmetic: which route an attempt goes to, and whether a transient failure is retried."""

from __future__ import annotations

import pytest

from babychain.engine.executor import retry_number, route_for_attempt


@pytest.mark.parametrize(
    ("attempts_made", "route"),
    [(0, 0), (1, 0), (4, 0), (5, 1), (9, 1), (10, 1), (50, 1)],
)
def test_each_route_gets_the_whole_budget_and_the_last_keeps_the_overflow(attempts_made: int, route: int) -> None:
    assert route_for_attempt(attempts_made, budget=5, route_count=2) == route


def test_a_single_route_takes_every_attempt() -> None:
    assert {route_for_attempt(n, budget=3, route_count=1) for n in range(10)} == {0}


@pytest.mark.parametrize(
    ("attempt", "number"),
    [(1, 1), (2, 2), (5, 5), (6, 1), (9, 4), (10, None), (11, None)],
)
def test_transient_failures_are_retried_until_every_route_is_spent(attempt: int, number: int | None) -> None:
    # With two routes of five attempts, the backoff restarts on the second route and nothing follows attempt 10.
    assert retry_number(attempt, budget=5, route_count=2) == number


def test_one_route_stops_retrying_at_its_budget() -> None:
    assert [retry_number(a, budget=3, route_count=1) for a in (1, 2, 3, 4)] == [1, 2, None, None]
