"""Lambda SnapStart (template.yaml turns it on for create_run and the step executor): the state an initialised
environment holds that must not be shared by every environment restored from one snapshot.

What init leaves in the snapshot: imported modules, the resolver, the logger, the tracer, and the `random` module's
generator, seeded from the OS once at interpreter start. Restored from one snapshot, every environment would draw the
same retry jitter (`engine.executor`, `engine.callbacks`), which exists to spread retries apart: each environment
reseeds it from the OS after restore. Nothing else unique is made at init: ids and secrets come from `uuid.uuid4` and
`secrets` (the OS generator on every call, which Lambda reseeds on restore), and the services (database connections,
the secret, Sentry) are built on the first invocation, after restore.

What a handler loads on first use rather than at import (create_run's request validation: pydantic and the model
schemas) is loaded before the snapshot is taken (`warm_before_snapshot`), so restored environments have it at once
while a plain cold start imports only what the handler needs to start.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_registered = False
_warmers: list[Callable[[], object]] = []


def reseed() -> None:
    random.seed()  # from os.urandom


def register_restore_hooks() -> bool:
    """Registers `reseed` with the runtime's SnapStart hooks (the `snapshot_restore_py` library the Python managed
    runtimes include); False where there is no such runtime (locally, in tests). Once per process."""
    global _registered
    if _registered:
        return True
    try:
        from snapshot_restore_py import register_after_restore
    except ImportError:
        return False
    register_after_restore(reseed)
    _registered = True
    return True


def warm_before_snapshot(load: Callable[[], object]) -> bool:
    """Registers `load` (it imports what a handler uses on first use) with the runtime's before-snapshot hooks; False
    where there is no such runtime. `warm()` runs every registered `load` too: the one-machine shape's fork server
    does, before it forks containers."""
    _warmers.append(load)
    try:
        from snapshot_restore_py import register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(load)
    return True


def warm() -> None:
    for load in _warmers:
        load()
