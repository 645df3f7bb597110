"""SnapStart: environments restored from one snapshot must not share the `random` generator's state (the retry
jitter), so every handler registers a reseed with the runtime's after-restore hooks at init."""

from __future__ import annotations

import random
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from babychain.aws import snapstart
from babychain.observability import instrumented


@pytest.fixture
def runtime_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Callable[[], Any]]]:
    """The managed runtime's `snapshot_restore_py`, recording what is registered."""
    hooks: list[Callable[[], Any]] = []
    module = types.ModuleType("snapshot_restore_py")
    module.register_after_restore = hooks.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    monkeypatch.setattr(snapstart, "_registered", False)
    yield hooks


def test_a_handler_registers_the_reseed_at_init(runtime_hooks: list[Callable[[], Any]]) -> None:
    instrumented()(lambda event, context: None)
    instrumented()(lambda event, context: None)  # once per process
    assert runtime_hooks == [snapstart.reseed]


def test_environments_restored_from_one_snapshot_draw_different_jitter(runtime_hooks: list[Callable[[], Any]]) -> None:
    snapstart.register_restore_hooks()
    snapshot = random.getstate()
    draws = []
    for _environment in range(3):
        random.setstate(snapshot)  # restored: the generator as init left it
        for hook in runtime_hooks:
            hook()
        draws.append(random.uniform(2.5, 5.0))
    assert len(set(draws)) == 3, draws
    random.setstate(snapshot)
    without_hook = random.uniform(2.5, 5.0)
    random.setstate(snapshot)
    assert random.uniform(2.5, 5.0) == without_hook  # what the hook prevents: the same draw in every environment


def test_without_the_runtime_nothing_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails, as off Lambda
    monkeypatch.setattr(snapstart, "_registered", False)
    assert snapstart.register_restore_hooks() is False


def test_what_a_handler_loads_on_first_use_is_loaded_before_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    before_snapshot: list[Callable[[], Any]] = []
    module = types.ModuleType("snapshot_restore_py")
    module.register_before_snapshot = before_snapshot.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    monkeypatch.setattr(snapstart, "_warmers", [])
    loaded: list[str] = []
    assert snapstart.warm_before_snapshot(lambda: loaded.append("validation")) is True
    assert len(before_snapshot) == 1
    before_snapshot[0]()  # the runtime, before it takes the snapshot
    assert loaded == ["validation"]
    snapstart.warm()  # the one-machine fork server, before it forks containers
    assert loaded == ["validation", "validation"]


def test_create_run_registers_its_validation_to_load_before_the_snapshot() -> None:
    from babychain.engine import create

    assert create.load_validation in snapstart._warmers
